"""A short real training run and predict on tiny synthetic CIFAR-10 and CIFAR-100, end to end."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from cifarkit import checkpoint

from conftest import ROOT, run_cli

SMALL = ["--train-per-class", "9", "--val-per-class", "3"]


@pytest.fixture
def trained(cifar10_dir, train_main, capsys):
    """simple_cnn trained for 4 short epochs on tiny CIFAR-10; returns the run folder."""
    code, out, err = run_cli(train_main, [
        "--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(cifar10_dir), *SMALL,
        "--epochs", "4", "-b", "16", "--lr", "0.05", "--experiment", "tiny", "--device", "cpu"], capsys)
    assert code == 0, err
    return out


def test_train_writes_the_run_folder(trained, tmp_path):
    run = tmp_path / "runs" / "tiny"
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
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "epoch   4  train loss" in trained and "best val acc" in trained


def test_predict_writes_checked_submission_and_scores_it(trained, predict_main, capsys, tmp_path):
    code, out, err = run_cli(predict_main, ["--score", "--device", "cpu"], capsys)
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    assert list(sub.columns) == ["id", "label"] and sub["id"].tolist() == list(range(40))
    assert sub["label"].between(0, 9).all()
    truth = pd.read_csv(tmp_path / "data" / "cifar10" / "solution.csv")["label"]
    independent = float(np.mean(sub["label"].to_numpy() == truth.to_numpy()))
    assert f"test accuracy {independent:.4f}" in out
    assert independent > 0.3


def test_predict_names_and_tta(trained, predict_main, capsys, tmp_path):
    code, out, err = run_cli(predict_main, ["--label-format", "name", "--tta", "flip_shift", "--submission", "named.csv"], capsys)
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "named.csv")
    assert set(sub["label"]) <= {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                 "ship", "truck"}


def test_albumentations_path_trains(cifar10_dir, train_main, capsys, tmp_path):
    code, out, err = run_cli(train_main, [
        "--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(cifar10_dir), *SMALL, "--aug", "albu",
        "--workers", "0", "--epochs", "2", "-b", "16", "--experiment", "albu"], capsys)
    assert code == 0, err
    assert "aug albu" in out and len(pd.read_csv(tmp_path / "runs" / "albu" / "log.csv")) == 2


def test_cifar100_transfer_path_with_saved_resnet18(cifar100_dir, train_main, predict_main, capsys, tmp_path):
    """The real ResNet18 path: a torchvision-layout state dict loads unchanged; predict covers every test id."""
    import torchvision

    weights = tmp_path / "resnet18_tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    code, out, err = run_cli(train_main, [
        "--model", "resnet18", "--pretrained-file", str(weights), "--data-dir", str(cifar100_dir),
        "--train-per-class", "4", "--val-per-class", "2", "--epochs", "1", "-b", "32", "--device", "cpu"], capsys)
    assert code == 0, err
    code, out, err = run_cli(predict_main, [], capsys)
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    assert len(sub) == 200 and sub["label"].between(0, 99).all()


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


def test_offline_hub_without_file_says_what_to_do(cifar10_dir, train_main, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL], capsys)
    assert code == 2 and "--pretrained-file" in err and "--no-pretrained" in err and err.count("\n") == 1


def test_unreachable_hub_fails_fast_in_one_line(cifar10_dir, train_main, capsys, monkeypatch):
    """No DNS for the hub: one line at once, not a minute of retry messages."""
    import socket
    import time

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t0 = time.perf_counter()
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL], capsys)
    assert code == 2 and err.count("\n") == 1 and "--pretrained-file" in err, err
    assert time.perf_counter() - t0 < 20


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
    code, out, err = run_cli(predict_main, ["--dataset", "cifar100"], capsys)
    assert code == 2 and "no cifar100 run" in err
