"""Nothing half-written: an unwritable folder or a full disk gives one line, and old files survive."""

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit import checkpoint, read, split
from cifarkit.atomic import write_text
from cifarkit.errors import UserError

from conftest import run_cli


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot write into (root ignores modes, so use a kernel folder for root)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        yield d
        d.chmod(0o700)
        return
    d = "/sys/kernel"
    try:
        (os.close(os.open(f"{d}/.cifarkit-probe", os.O_CREAT | os.O_WRONLY)), os.unlink(f"{d}/.cifarkit-probe"))
        pytest.skip("no unwritable folder available to root on this machine")
    except OSError:
        yield type(tmp_path)(d)


def test_unwritable_split_dir_is_one_line(cifar10_dir, readonly_dir, capsys):
    code, _, err = run_cli(split.main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), "--split-dir",
                                        str(readonly_dir / "cifar10"), "--train-per-class", "9", "--val-per-class", "3"],
                           capsys)
    assert code == 2 and err.startswith("error: cannot write") and err.count("\n") == 1


def disk_full_halfway(real, target_arg):
    """Wrap a writer (np.save, torch.save): write half of its bytes to the target, then fail as a full disk does."""
    def writer(*args, **kwargs):
        args = list(args)
        target, args[target_arg] = args[target_arg], io.BytesIO()
        real(*args, **kwargs)
        data = args[target_arg].getvalue()
        if hasattr(target, "write"):
            target.write(data[: len(data) // 2])
        else:
            Path(target).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    return writer


def test_disk_full_during_split_keeps_the_old_split(cifar10_dir, tmp_path, monkeypatch):
    data = read.load(cifar10_dir, "cifar10")
    split.build(data, tmp_path / "s", 9, 3, seed=0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    monkeypatch.setattr(np, "save", disk_full_halfway(np.save, 0))
    with pytest.raises(UserError, match="disk full while writing .*train_images.npy; nothing was written"):
        split.build(data, tmp_path / "s", 9, 3, seed=1)
    after = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert after == before, "old split intact, no temp files"
    split.load(tmp_path / "s")


def test_disk_full_during_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    payload = dict(model="simple_cnn", num_classes=10, classes=list("abcdefghij"), mean=[0.5] * 3, std=[0.2] * 3,
                   dataset="cifar10", state_dict={"w": torch.ones(1000)})
    checkpoint.save(path, payload)
    monkeypatch.setattr(torch, "save", disk_full_halfway(torch.save, 1))
    with pytest.raises(UserError, match="disk full"):
        checkpoint.save(path, dict(payload, state_dict={"w": torch.zeros(1000)}))
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["state_dict"]["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_crash_inside_a_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "log.csv"
    write_text(path, "old\n")
    with pytest.raises(KeyboardInterrupt):
        from cifarkit.atomic import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["log.csv"]
