"""Interrupted runs: kill -9 mid-epoch, --resume, and the run ends as if it had never stopped."""

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

EPOCHS = 4


def args(data_dir, output):
    return ["--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(data_dir), "--train-per-class", "9",
            "--val-per-class", "3", "--epochs", str(EPOCHS), "-b", "8", "--device", "cpu", "--output", str(output),
            "--experiment", "run", "--checkpoint-interval", "4", "--no-amp", "--model-ema"]


def saved_position(path):
    """(epochs done, batches done in the next one) that last.pt holds."""
    ckpt = torch.load(path, weights_only=True, mmap=True)
    return ckpt["epoch"], ckpt["train_state"]["loop"]["batch"]


def stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "tT"


def test_kill_9_mid_epoch_then_resume_continues_the_same_curve(cifar10_dir, tmp_path, train_main, capsys):
    """Killed where last.pt was saved mid-epoch (by --checkpoint-interval) after a whole epoch: the resumed run
    redoes nothing it saved and ends with the uninterrupted run's log and weights, model EMA included."""
    code, _, err = run_cli(train_main, args(cifar10_dir, tmp_path / "ref"), capsys)
    assert code == 0, err
    reference = pd.read_csv(tmp_path / "ref" / "run" / "log.csv")

    last = tmp_path / "killed" / "run" / "last.pt"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as child_stderr:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args(cifar10_dir, tmp_path / "killed")],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=child_stderr)
    deadline = time.time() + 300
    while True:  # from the first save on, the run goes on in short slices only, and last.pt is read between them
        if last.exists():
            os.kill(proc.pid, signal.SIGSTOP)
            while proc.poll() is None and not stopped(proc.pid):
                time.sleep(0.001)
            assert proc.returncode is None, f"the run ended before a mid-epoch save: {stderr.read_text()}"
            pos = saved_position(last)
            if pos[0] >= 1 and pos[1] > 0:
                break
            os.kill(proc.pid, signal.SIGCONT)
        assert proc.poll() is None, f"the run ended before a mid-epoch save: {stderr.read_text()}"
        assert time.time() < deadline, "no mid-epoch save in 300 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    code, out, err = run_cli(train_main, ["--resume", str(last.parent)], capsys)
    assert code == 0, err
    assert f"resuming at epoch {pos[0] + 1}, batch {pos[1]}:" in out
    log = pd.read_csv(last.parent / "log.csv")
    assert log["epoch"].tolist() == list(range(1, EPOCHS + 1)), "no duplicated or missing epochs"
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert log[col].tolist() == pytest.approx(reference[col].tolist(), rel=1e-5, abs=1e-6), col
    for name in ("best.pt", "last.pt"):
        ours, ref = (checkpoint.load(d / "run" / name)["state_dict"] for d in (tmp_path / "killed", tmp_path / "ref"))
        assert all(torch.allclose(ours[k].float(), ref[k].float(), atol=1e-5) for k in ref), name
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
