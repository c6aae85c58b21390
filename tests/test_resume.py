"""Interrupted runs: kill -9 mid-run, --resume, and the run ends as if it had never stopped."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from cifarkit import checkpoint

from conftest import ROOT, run_cli

EPOCHS = 12


def args(data_dir, output):
    return ["--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(data_dir), "--train-per-class", "9",
            "--val-per-class", "3", "--epochs", str(EPOCHS), "-b", "8", "--device", "cpu", "--output", str(output),
            "--experiment", "run", "--checkpoint-interval", "4", "--no-amp"]


def completed_epochs(path):
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # not there yet, or mid-rename
        return -1


def test_kill_9_then_resume_continues_the_same_curve(cifar10_dir, tmp_path, train_main, capsys):
    # Reference: the same run, never interrupted.
    code, _, err = run_cli(train_main, args(cifar10_dir, tmp_path / "ref"), capsys)
    assert code == 0, err
    reference = pd.read_csv(tmp_path / "ref" / "run" / "log.csv")

    last = tmp_path / "killed" / "run" / "last.pt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args(cifar10_dir, tmp_path / "killed")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while completed_epochs(last) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    seen_before_kill = completed_epochs(last)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen_before_kill >= 3, proc.stderr.read().decode()
    assert seen_before_kill < EPOCHS, "the run finished before it could be killed: make it longer"

    code, out, err = run_cli(train_main, ["--resume", str(last.parent)], capsys)
    assert code == 0, err
    resumed_at = int(out.split("resuming at epoch ")[1].split(",")[0])
    assert resumed_at >= seen_before_kill + 1  # only the interrupted epoch's unsaved part is redone
    log = pd.read_csv(last.parent / "log.csv")
    assert log["epoch"].tolist() == list(range(1, EPOCHS + 1)), "no duplicated or missing epochs"
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert log[col].tolist() == pytest.approx(reference[col].tolist(), rel=1e-5, abs=1e-6), col
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")], "no temp files left behind"


def test_resume_newest_and_finished_run(cifar10_dir, tmp_path, train_main, capsys):
    a = args(cifar10_dir, "runs")
    a[a.index("--epochs") + 1] = "2"
    assert run_cli(train_main, a, capsys)[0] == 0
    code, out, err = run_cli(train_main, ["--resume"], capsys)
    assert code == 0, err
    assert "resuming at epoch 3, batch 0" in out
    assert len(pd.read_csv("runs/run/log.csv")) == 2


def test_resume_needs_a_last_checkpoint(cifar10_dir, tmp_path, train_main, capsys):
    a = args(cifar10_dir, "runs")
    a[a.index("--epochs") + 1] = "1"
    assert run_cli(train_main, a, capsys)[0] == 0
    code, _, err = run_cli(train_main, ["--resume", "runs/run/best.pt"], capsys)
    assert code == 2 and "cannot be resumed from" in err
    code, _, err = run_cli(train_main, ["--resume", "runs/nothing"], capsys)
    assert code == 2 and "not found" in err
    code, _, err = run_cli(train_main, a, capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err


def test_truncated_checkpoint_is_refused(cifar10_dir, tmp_path, train_main, predict_main, capsys):
    a = args(cifar10_dir, "runs")
    a[a.index("--epochs") + 1] = "1"
    assert run_cli(train_main, a, capsys)[0] == 0
    best = tmp_path / "runs" / "run" / "best.pt"
    best.write_bytes(best.read_bytes()[:2000])
    code, _, err = run_cli(predict_main, ["--checkpoint", str(best)], capsys)
    assert code == 2 and "truncated or corrupted" in err
    assert checkpoint.load(tmp_path / "runs" / "run" / "last.pt")["epoch"] == 1
