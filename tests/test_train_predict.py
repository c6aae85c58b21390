"""A short real training run and predict on tiny synthetic CIFAR-10 and CIFAR-100, end to end."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
import torch

from cifarkit import checkpoint

from conftest import ROOT, logits_by_hand, run_cli, write_cifar100

SMALL = ["--train-per-class", "9", "--val-per-class", "3"]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_train_writes_the_run_folder(trained):
    run = trained.run
    for name in ("config.json", "log.csv", "curves.png", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(log.columns)
    assert log["val_acc"].max() >= 0.5, "4 epochs on separable data must beat chance (0.1) clearly"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "simple_cnn" and cfg["epochs"] == 4 and cfg["device"] == "cpu"
    best = checkpoint.load(run / "best.pt")
    assert best["val_acc"] == log["val_acc"].max()
    assert best["classes"][0] == "airplane" and best["num_classes"] == 10 and len(best["mean"]) == 3
    assert checkpoint.load(run / "last.pt")["epoch"] == 4
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch   4  train loss" in trained.stdout and "best val acc" in trained.stdout


def test_predict_writes_the_models_argmax_and_scores_it(trained, predict_main, capsys, tmp_path):
    best = trained.run / "best.pt"
    code, out, err = run_cli(predict_main, ["--checkpoint", str(best), "--score", "--device", "cpu", "--no-amp"],
                             capsys)
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    assert list(sub.columns) == ["id", "label"] and sub["id"].tolist() == list(range(40))
    assert sub["label"].tolist() == logits_by_hand(best, np.load(trained.split / "test_images.npy")).argmax(1).tolist()
    truth = pd.read_csv(trained.split / "solution.csv")["label"]
    independent = float(np.mean(sub["label"].to_numpy() == truth.to_numpy()))
    assert f"test accuracy {independent:.4f}" in out
    assert independent > 0.3


def test_label_format_name_maps_each_label_to_its_class_name(trained, predict_main, capsys, tmp_path):
    common = ["--checkpoint", str(trained.run / "best.pt"), "--tta", "flip_shift"]
    assert run_cli(predict_main, [*common, "--submission", "index.csv"], capsys)[0] == 0
    code, out, err = run_cli(predict_main, [*common, "--label-format", "name", "--submission", "named.csv"], capsys)
    assert code == 0, err
    index = pd.read_csv(tmp_path / "index.csv")["label"]
    assert index.nunique() > 1, "a model that predicts one class would not test the mapping"
    assert pd.read_csv(tmp_path / "named.csv")["label"].tolist() == [CIFAR10_NAMES[i] for i in index]


def test_albumentations_in_workers_trains_the_same_run_twice(cifar10_dir, train_main, capsys, tmp_path):
    """The per-image path through fit, with two workers: the same seed gives the same curve."""
    logs = []
    for name in ("a", "b"):
        code, out, err = run_cli(train_main, [
            "--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(cifar10_dir), *SMALL, "--aug", "albu",
            "--workers", "2", "--epochs", "2", "-b", "16", "--experiment", name], capsys)
        assert code == 0, err
        assert "aug albu" in out
        logs.append(pd.read_csv(tmp_path / "runs" / name / "log.csv"))
    assert len(logs[0]) == 2 and logs[0]["train_loss"].tolist() == logs[1]["train_loss"].tolist()


def test_cifar100_transfer_path_with_saved_resnet18(train_main, predict_main, capsys, tmp_path):
    """The real ResNet18 path: a torchvision-layout state dict loads unchanged; predict writes the model's argmax
    for every test id, and rebuilds a deleted split from the checkpoint's own settings (per-class numbers, seed)."""
    import torchvision

    cifar100_dir = write_cifar100(tmp_path / "src", test_per_class=1)  # 100 test images: ResNet18 is slow on a CPU
    weights = tmp_path / "resnet18_tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    code, out, err = run_cli(train_main, [
        "--model", "resnet18", "--pretrained-file", str(weights), "--data-dir", str(cifar100_dir),
        "--train-per-class", "4", "--val-per-class", "2", "--epochs", "1", "-b", "32", "--device", "cpu"], capsys)
    assert code == 0, err
    code, out, err = run_cli(predict_main, ["--no-amp"], capsys)
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    best = next((tmp_path / "runs").glob("*/best.pt"))
    assert sub["label"].tolist() == logits_by_hand(best, np.load("data/cifar100/test_images.npy")).argmax(1).tolist()
    manifest = (tmp_path / "data" / "cifar100" / "manifest.json").read_text()
    shutil.rmtree(tmp_path / "data" / "cifar100")
    code, out, err = run_cli(predict_main, ["--no-amp", "--data-dir", str(cifar100_dir), "--submission", "again.csv"],
                             capsys)
    assert code == 0, err
    assert "built cifar100 split" in out and (tmp_path / "data" / "cifar100" / "manifest.json").read_text() == manifest
    assert pd.read_csv(tmp_path / "again.csv").equals(sub)


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_net"], "unknown model 'no_such_net'"),
    (["--pretrained-file", "missing.pth"], "pretrained file missing.pth not found"),
    (["--model", "simple_cnn", "--pretrained-file", "x.pth"], "scratch model with no pretrained weights"),
    (["--model", "simple_cnn", "--label-smoothing", "2"], "--label-smoothing must be in [0, 1)"),
    (["--model", "simple_cnn", "--weight-decay", "-1"], "--weight-decay not negative"),
    (["--model", "simple_cnn", "--workers", "-1"], "--workers and --checkpoint-interval must not be negative"),
    (["--model", "simple_cnn", "--checkpoint-interval", "-3"], "must not be negative"),
])
def test_train_bad_inputs_one_line(cifar10_dir, train_main, capsys, argv, message):
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, *argv],
                             capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_train_too_few_per_class(cifar10_dir, train_main, capsys):
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir),
                                          "--model", "simple_cnn"], capsys)
    assert code == 2 and "too few images per class" in err and err.count("\n") == 1


def test_train_missing_data_offline(tmp_path, train_main, capsys, monkeypatch):
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    code, out, err = run_cli(train_main, ["--model", "simple_cnn", "--data-dir", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "download failed" in err and "--data-dir" in err and err.count("\n") == 1


@pytest.fixture
def hub(monkeypatch, request):
    """Records every weights download timm asks the hub for (with the offline switch and cache in force at that
    moment) and every name look-up; look-ups fail, as on a machine with no network."""
    import socket

    import huggingface_hub.constants as constants
    import timm.models._hub as timm_hub

    seen = SimpleNamespace(downloads=[], lookups=[], constants=constants)
    real = timm_hub.hf_hub_download

    def download(*args, **kwargs):
        cache = kwargs.get("cache_dir") or constants.HF_HUB_CACHE
        seen.downloads.append(dict(offline=constants.HF_HUB_OFFLINE, cache=cache))
        return real(*args, **kwargs)

    def no_dns(host, *args, **kwargs):
        seen.lookups.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(timm_hub, "hf_hub_download", download)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert Path(constants.HF_HUB_CACHE).is_relative_to(request.config.cifarkit_home[0]), "the tests' home, not the user's"
    assert not list(Path(constants.HF_HUB_CACHE).glob("models--timm--resnet18*"))
    return seen


def only_the_empty_cache_was_asked(hub):
    assert hub.downloads, "timm looked in the cache"
    assert all(d["offline"] and d["cache"] == hub.constants.HF_HUB_CACHE for d in hub.downloads), hub.downloads


def test_offline_hub_without_file_says_what_to_do(cifar10_dir, train_main, capsys, monkeypatch, hub):
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL], capsys)
    assert code == 2 and "--pretrained-file" in err and "--no-pretrained" in err and err.count("\n") == 1
    assert hub.lookups == [], "offline means no network at all"
    only_the_empty_cache_was_asked(hub)


def test_unreachable_hub_fails_at_once_in_one_line(cifar10_dir, train_main, capsys, hub):
    """No DNS for the hub: one look-up, then the cache only; no HTTP attempt, so no minute of retries."""
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL], capsys)
    assert code == 2 and err.count("\n") == 1 and "--pretrained-file" in err, err
    assert hub.lookups == [urlparse(hub.constants.ENDPOINT).hostname]
    only_the_empty_cache_was_asked(hub)


@pytest.mark.parametrize("script, argv, message", [
    ("predict.py", [], "no run with best.pt under runs/"),
    ("train.py", ["--model", "no_such_net"], "unknown model"),
])
def test_scripts_exit_nonzero_with_one_line(script, argv, message, tmp_path):
    """The real scripts, as a user runs them: no traceback, exit code 2."""
    r = subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_predict_refuses_a_checkpoint_of_another_dataset(trained, predict_main, capsys):
    code, out, err = run_cli(predict_main, ["--output", str(trained.output), "--dataset", "cifar100"], capsys)
    assert code == 2 and "no cifar100 run" in err
