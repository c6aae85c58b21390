import json

import numpy as np
import pandas as pd
import pytest

from cifarkit import read, split
from cifarkit.errors import UserError

from conftest import run_cli


def test_counts_hidden_labels_and_files(cifar10_dir, tmp_path):
    data = read.load(cifar10_dir, "cifar10")
    m = split.build(data, tmp_path / "s", train_per_class=9, val_per_class=3, seed=0)
    s = split.load(tmp_path / "s")
    assert np.bincount(s["train_labels"]).tolist() == [9] * 10
    assert np.bincount(s["val_labels"]).tolist() == [3] * 10
    assert m["counts"]["train_per_class"] == [9] * 10
    assert s["train_images"].shape == (90, 32, 32, 3) and s["train_images"].dtype == np.uint8
    # test: official order, labels hidden; the answer key lives apart
    assert np.array_equal(s["test_images"], data.test_x)
    assert not s["test_labels"].any()
    solution = pd.read_csv(tmp_path / "s" / "solution.csv")
    assert solution["id"].tolist() == list(range(40)) and np.array_equal(solution["label"], data.test_y)
    sample = pd.read_csv(tmp_path / "s" / "sample_submission.csv")
    assert list(sample.columns) == ["id", "label"] and len(sample) == 40 and not sample["label"].any()
    assert m["classes"][0] == "airplane"


def test_train_and_val_are_disjoint_images_of_the_source(cifar10_dir, tmp_path):
    data = read.load(cifar10_dir, "cifar10")
    tr, va = split.choose(data.train_y, 10, 9, 3, seed=5, classes=data.classes)
    assert not set(tr) & set(va)
    assert len(set(tr)) == 90 and len(set(va)) == 30


def test_same_seed_same_arrays_other_seed_other_members(cifar10_dir, tmp_path):
    data = read.load(cifar10_dir, "cifar10")
    a = split.build(data, tmp_path / "a", 9, 3, seed=0)
    b = split.build(data, tmp_path / "b", 9, 3, seed=0)
    c = split.build(data, tmp_path / "c", 9, 3, seed=1)
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a" / "train_images.npy").read_bytes() == (tmp_path / "b" / "train_images.npy").read_bytes()
    assert a["sha256"]["train_images"] != c["sha256"]["train_images"]
    assert a["sha256"]["test_images"] == c["sha256"]["test_images"]


def test_too_few_images_per_class_names_the_numbers(cifar10_dir, tmp_path):
    data = read.load(cifar10_dir, "cifar10")
    with pytest.raises(UserError, match=r"has 12 training images .*needs 4500 train \+ 500 val = 5000"):
        split.build(data, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_cli_builds_cifar100_with_smaller_per_class(cifar100_dir, capsys):
    code, out, err = run_cli(split.main, ["--data-dir", str(cifar100_dir), "--train-per-class", "4",
                                          "--val-per-class", "2"], capsys)
    assert code == 0, err
    assert "400 train (4/class), 200 val (2/class), 200 test" in out
    m = json.loads(open("data/cifar100/manifest.json").read())
    assert m["seed"] == 0 and len(m["classes"]) == 100 and set(m["sha256"]) == set(split.ARRAYS)


def test_cli_refuses_default_sizes_on_small_source(cifar100_dir, capsys):
    code, out, err = run_cli(split.main, ["--data-dir", str(cifar100_dir)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: too few images per class")
    assert "450 train + 50 val" in err


def test_damaged_split_is_detected(cifar10_dir, tmp_path):
    data = read.load(cifar10_dir, "cifar10")
    split.build(data, tmp_path / "s", 9, 3)
    arr = np.load(tmp_path / "s" / "val_labels.npy")
    arr[0] = (arr[0] + 1) % 10
    np.save(tmp_path / "s" / "val_labels.npy", arr)
    with pytest.raises(UserError, match="does not match manifest.json"):
        split.load(tmp_path / "s")


def test_ensure_reuses_or_rebuilds(cifar10_dir, tmp_path, capsys):
    d = split.ensure("cifar10", cifar10_dir, tmp_path / "s", 9, 3, seed=0)
    first = (d / "manifest.json").stat().st_mtime_ns
    split.ensure("cifar10", cifar10_dir, tmp_path / "s", 9, 3, seed=0)
    assert (d / "manifest.json").stat().st_mtime_ns == first
    split.ensure("cifar10", cifar10_dir, tmp_path / "s", 8, 3, seed=0)
    assert "rebuilding" in capsys.readouterr().out
    assert split.read_manifest(d)["train_per_class"] == 8
    split.ensure("cifar10", cifar10_dir, tmp_path / "s", 8, 3, seed=1)
    assert "rebuilding" in capsys.readouterr().out
    assert split.read_manifest(d)["seed"] == 1
