"""The competition workflow around predict: ensembles, the validation split, saved probabilities, scores."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from cifarkit import checkpoint, split
from cifarkit.loader import Normalize
from cifarkit.predict import load_model

from conftest import run_cli, train_quietly, write_cifar10

TINY = ["--dataset", "cifar10", "--train-per-class", "9", "--val-per-class", "3", "--epochs", "2", "-b", "16",
        "--device", "cpu", "--no-amp"]


@pytest.fixture(scope="module")
def trained_members(tmp_path_factory):
    """Two runs of the same split, trained once for this module: simple_cnn, and fast_cnn_s at another input size
    and normalisation."""
    root = tmp_path_factory.mktemp("members")
    data, cwd = write_cifar10(root / "src"), os.getcwd()
    os.chdir(root)  # runs/ and data/ as in any test's own folder
    try:
        for name, extra in (("a", ["--model", "simple_cnn"]), ("b", ["--model", "fast_cnn_s", "--img-size", "40"])):
            train_quietly(["--data-dir", str(data), *TINY, *extra, "--experiment", name], f"member {name}")
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def members(trained_members, tmp_path):
    """The two runs and their split, copied into this test's folder: tests write scores.json beside them."""
    for part in ("runs", "data"):
        shutil.copytree(trained_members / part, tmp_path / part)
    return [tmp_path / "runs" / n / "best.pt" for n in ("a", "b")]


def by_hand(path, images):
    """One member's class probabilities, computed here without predict's loader."""
    ckpt = checkpoint.load(path)
    model = load_model(ckpt, torch.device("cpu")).eval()
    norm = Normalize(ckpt["mean"], ckpt["std"], "cpu", size=ckpt["img_size"])
    with torch.no_grad():
        x = norm.resize(norm(torch.from_numpy(images).permute(0, 3, 1, 2)))
        return model(x).float().softmax(1).numpy()


def test_val_split_goes_by_the_images_held_out_not_a_missing_val_figure(members, predict_main, capsys, tmp_path):
    """A last.pt saved within epoch 1 has no val figure yet, but its run held val out: --split val scores it. A
    checkpoint from before train.py recorded the count is judged by its NaN val_acc, as a best.pt of a final fit."""
    ckpt = checkpoint.load(members[0])
    assert ckpt["val_images"] == 30
    checkpoint.save(tmp_path / "early.pt", dict(ckpt, val_acc=float("nan")))
    code, out, err = run_cli(predict_main, ["--checkpoint", str(tmp_path / "early.pt"), "--split", "val"], capsys)
    assert code == 0 and "val accuracy " in out and "before its first validation" in out, err
    old = {k: v for k, v in ckpt.items() if k != "val_images"}
    checkpoint.save(tmp_path / "old.pt", dict(old, val_acc=float("nan")))
    code, _, err = run_cli(predict_main, ["--checkpoint", str(tmp_path / "old.pt"), "--split", "val"], capsys)
    assert code == 2 and "old.pt held no validation images out of its training" in err


def test_ensemble_averages_the_members_probabilities(members, predict_main, capsys, tmp_path):
    code, out, err = run_cli(predict_main, ["--checkpoint", *map(str, members), "--save-probs", "probs.csv",
                                            "--no-amp", "--device", "cpu"], capsys)  # as by_hand: 5e-5 off on a GPU
    assert code == 0, err
    images = split.load(tmp_path / "data" / "cifar10", ("test",))["test_images"]
    expected = (by_hand(members[0], images) + by_hand(members[1], images)) / 2
    saved = pd.read_csv(tmp_path / "probs.csv")
    assert saved.columns[0] == "id" and list(saved.columns[1:3]) == ["airplane", "automobile"]
    np.testing.assert_allclose(saved.iloc[:, 1:].to_numpy(), expected, atol=1e-5)
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    assert sub["label"].tolist() == expected.argmax(1).tolist()
    assert "the average of 2 checkpoints' probabilities" in out


def test_val_split_scores_without_writing_a_submission(members, predict_main, capsys, tmp_path):
    code, out, err = run_cli(predict_main, ["--checkpoint", str(members[0]), "--split", "val", "--no-amp"], capsys)
    assert code == 0, err
    s = split.load(tmp_path / "data" / "cifar10", ("val",))
    acc = float(np.mean(by_hand(members[0], s["val_images"]).argmax(1) == s["val_labels"]))
    assert f"val accuracy {acc:.4f}" in out
    assert not (tmp_path / "submissions").exists()
    assert json.loads((members[0].parent / "scores.json").read_text())["val"]["acc"] == pytest.approx(acc)


def test_score_is_recorded_for_the_leaderboard(members, predict_main, capsys, tmp_path):
    code, out, err = run_cli(predict_main, ["--checkpoint", str(members[1]), "--score", "--tta"], capsys)
    assert code == 0, err
    acc = float(out.split("test accuracy ")[1].split()[0])
    scores = json.loads((members[1].parent / "scores.json").read_text())
    assert scores["test"] == {"acc": pytest.approx(acc), "checkpoint": "best.pt", "tta": "flip_shift_unsure"}
    alone = pd.read_csv(tmp_path / "submissions" / "submission.csv")  # --tta alone is flip_shift_unsure, whole
    code, _, err = run_cli(predict_main, ["--checkpoint", str(members[1]), "--tta", "flip_shift_unsure"], capsys)
    assert code == 0, err
    assert alone.equals(pd.read_csv(tmp_path / "submissions" / "submission.csv"))


def test_members_must_share_their_classes(members, cifar100_dir, train_main, predict_main, capsys, tmp_path):
    code, _, err = run_cli(train_main, ["--model", "simple_cnn", "--data-dir", str(cifar100_dir), "--train-per-class",
                                        "4", "--val-per-class", "2", "--epochs", "1", "-b", "50", "--device", "cpu",
                                        "--experiment", "c100"], capsys)
    assert code == 0, err
    code, _, err = run_cli(predict_main, ["--checkpoint", str(members[0]), "runs/c100/best.pt"], capsys)
    assert code == 2 and "an ensemble needs one class list" in err and err.count("\n") == 1
    code, _, err = run_cli(predict_main, ["--checkpoint", str(members[0]), "--split", "val", "--submit", "x"], capsys)
    assert code == 2 and "--split val scores the validation split" in err


def test_final_fit_trains_on_every_labelled_image(cifar10_dir, train_main, predict_main, capsys, tmp_path):
    code, out, err = run_cli(train_main, ["--data-dir", str(cifar10_dir), *TINY, "--model", "simple_cnn",
                                          "--train-on-val", "--experiment", "final"], capsys)
    assert code == 0, err
    assert "final fit on train + val: all 120 labelled images" in out and "no validation figure exists" in out
    assert "epoch   2  train loss" in out and "no val images" in out and "nan" not in out
    cfg = json.loads((tmp_path / "runs" / "final" / "config.json").read_text())
    assert cfg["train_images"] == 120 and cfg["val_images"] == 0
    assert pd.read_csv(tmp_path / "runs" / "final" / "log.csv")["val_acc"].isna().all()
    assert checkpoint.load(tmp_path / "runs" / "final" / "best.pt")["epoch"] == 2  # the last epoch's weights
    code, out, err = run_cli(predict_main, ["--score"], capsys)
    assert code == 0, err
    assert "(simple_cnn, epoch 2, trained on train + val)" in out and "nan" not in out
    code, _, err = run_cli(predict_main, ["--split", "val"], capsys)  # it learned them: no val score of it
    assert code == 2 and "held no validation images out of its training" in err and err.count("\n") == 1
    assert "val" not in json.loads((tmp_path / "runs" / "final" / "scores.json").read_text())
    code, out, err = run_cli(predict_main, ["--report"], capsys)  # the build-vs-buy report of the final fit
    assert code == 0, err
    text = (tmp_path / "reports" / "cifar10_build_vs_buy.md").read_text()
    assert "| Best validation accuracy | none: no images held out" in text and "nan" not in text.lower()


def test_pseudo_labels_add_only_confident_test_images_with_their_labels(members, train_main, capsys, tmp_path,
                                                                       monkeypatch):
    from cifarkit import predict

    confident = {0: 3, 5: 1, 7: 9}  # test id -> the label the model is sure of

    def fake_probabilities(ckpt, model, images, device, amp, tta):
        probs = torch.full((len(images), 10), 0.5 / 9)
        probs[:, 0] = 0.5  # unsure everywhere else: below the threshold
        for i, label in confident.items():
            probs[i] = 0.0
            probs[i, label] = 1.0
        return probs

    monkeypatch.setattr(predict, "probabilities", fake_probabilities)
    split_dir = tmp_path / "data" / "cifar10"
    test = split.load(split_dir, ("test",))["test_images"]
    images, labels = predict.pseudo_labels(members[0], split_dir, checkpoint.load(members[0])["classes"], 0.9,
                                          torch.device("cpu"))
    assert labels.tolist() == [3, 1, 9] and np.array_equal(images, test[[0, 5, 7]])
    code, out, err = run_cli(train_main, ["--data-dir", "unused", *TINY, "--model", "simple_cnn", "--pseudo-labels",
                                          str(members[0]), "--experiment", "pseudo"], capsys)
    assert code == 0, err
    assert "pseudo-labels: 3 test images" in out
    assert json.loads((tmp_path / "runs" / "pseudo" / "config.json").read_text())["train_images"] == 90 + 3


def test_seeds_share_one_split_and_split_seed_changes_it(cifar10_dir, train_main, capsys, tmp_path):
    """A blend of seeds is scored on a val set none of its members trained on: --seed leaves the split alone."""
    def train(name, *extra):
        code, out, err = run_cli(train_main, ["--data-dir", str(cifar10_dir), *TINY, "--epochs", "1", "--model",
                                              "simple_cnn", "--experiment", name, *extra], capsys)
        assert code == 0, err
        return out, checkpoint.load(tmp_path / "runs" / name / "best.pt")

    manifest = tmp_path / "data" / "cifar10" / "manifest.json"
    _, a = train("s1", "--seed", "1")
    before = manifest.read_text()
    out, b = train("s2", "--seed", "2")
    assert "rebuilding" not in out and manifest.read_text() == before
    first = next(iter(a["state_dict"]))
    assert not torch.equal(a["state_dict"][first], b["state_dict"][first])  # the seed still seeds the weights
    out, c = train("s3", "--seed", "1", "--split-seed", "1")
    assert "rebuilding" in out and json.loads(manifest.read_text())["seed"] == 1
    assert (a["seed"], a["split_seed"], c["split_seed"]) == (1, 0, 1)
