"""torchrun: 2 gloo processes on the CPU, tiny data. One run, the same result as one process, clean stops."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cifarkit import runtime
from cifarkit.errors import UserError
from conftest import ROOT

# --device cpu: gloo CPU processes on a machine with a GPU too (there auto would give each rank a GPU of its own)
TINY = ["--dataset", "cifar10", "--train-per-class", "9", "--val-per-class", "3", "--no-amp", "--device", "cpu"]


def torchrun(*argv, cwd, nproc=2, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(ROOT / "train.py"), *map(str, argv)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def data(cifar10_dir):
    return ["--data-dir", str(cifar10_dir), *TINY]


def test_more_processes_than_gpus_is_one_line_on_every_rank(monkeypatch):
    """Seen on a 1-GPU machine: torchrun --nproc-per-node 2 ended rank 1 in CUDA's "invalid device ordinal"
    traceback. Every rank now stops with the same line before it waits for the others."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        with pytest.raises(UserError, match=r"torchrun started 2 processes on this machine, which has 1 GPU\(s\): "
                                            r"one process per GPU \(--nproc-per-node 1\), or --device cpu"):
            runtime.init_distributed("auto")
    assert not torch.distributed.is_initialized()


def test_two_processes_equal_one_with_the_same_global_batch_whole_or_in_chunks(data, tmp_path, train_main):
    """ConvNeXt normalises per image (LayerNorm), so splitting a batch over ranks, or a rank's share into
    --micro-batch chunks (all but the last under DDP's no_sync), changes nothing but the order of float sums;
    a batch-norm net would see other batch statistics on each rank and chunk."""
    args = [*data, "--model", "convnext_atto", "--no-pretrained", "--epochs", "2", "-b", "16", "--seed", "5"]
    for name, extra in (("two", []), ("chunks", ["--micro-batch", "3"])):  # a rank's 8 as chunks of 3, 3, 2
        code, out, err = finish(torchrun(*args, *extra, "--experiment", name, cwd=tmp_path))
        assert code == 0, err
    assert "batches of 8 computed in chunks of 3" in out
    train_main([*args, "--experiment", "one"])
    one = torch.load(tmp_path / "runs" / "one" / "last.pt", weights_only=True)
    log1 = pd.read_csv(tmp_path / "runs" / "one" / "log.csv")
    for name in ("two", "chunks"):
        other = torch.load(tmp_path / "runs" / name / "last.pt", weights_only=True)
        for k, v in one["state_dict"].items():
            torch.testing.assert_close(other["state_dict"][k], v, rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
        log = pd.read_csv(tmp_path / "runs" / name / "log.csv")
        for col in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert log[col].tolist() == pytest.approx(log1[col].tolist(), rel=1e-4, abs=1e-6), f"{name}: {col}"


def test_skip_easy_two_processes_leave_out_what_one_does(data, tmp_path, train_main):
    """--skip-easy under torchrun: each rank records the losses of its own share, the ranks pool them at every save
    and epoch's end, so both choose the same images and last.pt holds every image's loss, as one process does
    (per-image normalisation, as above). Refused before; with each rank's own losses the ranks' choices differ."""
    args = [*data, "--model", "convnext_atto", "--no-pretrained", "--epochs", "3", "-b", "16", "--seed", "5",
            "--skip-easy", "0.6", "--checkpoint-interval", "2"]
    code, out, err = finish(torchrun(*args, "--experiment", "two", cwd=tmp_path))
    assert code == 0, err
    train_main([*args, "--experiment", "one"])
    one, two = (torch.load(tmp_path / "runs" / n / "last.pt", weights_only=True) for n in ("one", "two"))
    keep = one["train_state"]["loop"]["keep"]
    assert keep is not None and 0 < int(keep.sum()) < len(keep)  # epoch 3 left images out
    assert torch.equal(two["train_state"]["loop"]["keep"], keep)
    losses = two["train_state"]["loop"]["image_loss"]
    assert torch.isfinite(losses).sum() >= 80  # every image of epoch 1's 5 batches of 16, from both ranks
    torch.testing.assert_close(losses, one["train_state"]["loop"]["image_loss"], rtol=1e-4, atol=1e-5)
    for k, v in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_time_budget_stops_every_rank_cleanly_in_one_run_folder(data, tmp_path):
    """Every rank stops by the same step under --time-budget; one folder, one log, rank 0's lines once."""
    code, out, err = finish(torchrun(*data, "--model", "simple_cnn", "--time-budget", "4", "-b", "8",
                                     "--experiment", "budget", cwd=tmp_path))
    assert code == 0, err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["budget"]
    assert sorted(p.name for p in (tmp_path / "runs" / "budget").iterdir()) == [
        "best.pt", "config.json", "curves.png", "last.pt", "log.csv"]
    log = pd.read_csv(tmp_path / "runs" / "budget" / "log.csv")
    assert log["epoch"].tolist() == list(range(1, len(log) + 1)) and log["train_seconds"].iloc[-1] <= 4 + 1
    assert out.count("epoch   1 ") == 1 and out.count("done:") == 1 and out.count("built cifar10 split") == 1
    assert "x 2 processes" in out


def _children(pid):
    """The worker processes torchrun started (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return sorted(kids)


def _saved_epochs(path):
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # not there yet, or mid-rename
        return -1


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_ends_the_run_in_one_line_and_resume_continues(data, tmp_path):
    args = [*data, "--model", "simple_cnn", "--epochs", "40", "-b", "8", "--experiment", "killed"]
    proc = torchrun(*args, cwd=tmp_path)
    last = tmp_path / "runs" / "killed" / "last.pt"
    deadline = time.time() + 120
    while _saved_epochs(last) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2 and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else workers
    os.kill(workers[1], signal.SIGKILL)
    t0 = time.time()
    code, out, err = finish(proc, timeout=60)
    assert time.time() - t0 < 30 and code != 0
    ours = [line for line in err.splitlines() if line.startswith("error: ")]
    assert ours and all("--resume runs/killed" in line for line in ours), err
    assert any("lost contact with another process" in line or "another process of this distributed run" in line
               for line in ours)
    assert f'File "{ROOT}' not in err, "no traceback through our code (torchrun prints its own summary)"

    code, out, err = finish(torchrun("--resume", "runs/killed", "--epochs", "6", cwd=tmp_path))
    assert code == 0, err
    assert "resuming at epoch" in out
    assert pd.read_csv(last.parent / "log.csv")["epoch"].tolist() == list(range(1, 7))
