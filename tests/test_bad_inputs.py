"""Every bad input through the real CLIs: one line on stderr, exit code 2, and no partial file left."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarkit import split, submission

from conftest import dump, run_cli, write_cifar10

SMALL = ["--train-per-class", "9", "--val-per-class", "3"]


def edit_batch(folder, change, name="data_batch_1"):
    with open(folder / name, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    change(d)
    dump(folder / name, d)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def corrupt_pickle(folder):
    p = folder / "data_batch_2"
    p.write_bytes(p.read_bytes()[: 3000] + b"garbage")


def malicious_archive(folder):
    archive = folder.parent / "cifar-10-python.tar.gz"
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"owned"))


SPLIT_CASES = {
    "truncated pickle": (corrupt_pickle, "data_batch_2: not a readable CIFAR pickle"),
    "pickle with code": (lambda f: dump(f / "data_batch_1", {b"data": Evil()}), "refusing to load posix.system"),
    "wrong shape": (lambda f: edit_batch(f, lambda d: d.update({b"data": d[b"data"][:, :100]})), "uint8 of shape (N, 3072)"),
    "wrong dtype": (lambda f: edit_batch(f, lambda d: d.update({b"data": d[b"data"].astype(np.int32)})), "must be uint8"),
    "label out of range": (lambda f: edit_batch(f, lambda d: d.update({b"labels": [-1] + d[b"labels"][1:]})),
                           "label -1 out of range 0..9"),
    "meta missing": (lambda f: (f / "batches.meta").unlink(), "batches.meta missing"),
    "unsafe archive": (malicious_archive, "refused, unsafe member"),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_bad_source_data(case, tmp_path, capsys):
    folder = write_cifar10(tmp_path / "src")
    damage, message = SPLIT_CASES[case]
    damage(folder)
    code, out, err = run_cli(split.main, ["--dataset", "cifar10", "--data-dir", str(folder.parent), *SMALL], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not Path("data/cifar10").exists(), "no partial split"
    assert not Path("pwned").exists() and not (tmp_path / "escape.txt").exists()
    assert not [p for p in (tmp_path / "src").rglob("*") if p.name.startswith(".extract-")]


def retarget(ckpt_path, out, **changes):
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, out)
    return out


@pytest.mark.parametrize("case", ["other model", "other class count", "pickled code", "truncated", "not a checkpoint",
                                  "other dataset", "other classes"])
def test_bad_checkpoints(case, trained, predict_main, capsys):
    best, path, argv = trained.run / "best.pt", Path("bad.pt"), []
    if case == "other model":
        retarget(best, path, model="fast_cnn")
        message = "checkpoint weights do not fit fast_cnn with 10 classes"
    elif case == "other class count":
        retarget(best, path, num_classes=100)
        message = "do not fit simple_cnn with 100 classes"
    elif case == "pickled code":
        torch.save({"model": Evil()}, path)
        message = "refused, it holds pickled objects"
    elif case == "truncated":
        path.write_bytes(best.read_bytes()[:5000])
        message = "truncated or corrupted"
    elif case == "not a checkpoint":
        torch.save({"weights": torch.ones(3)}, path)
        message = "not a cifarkit checkpoint"
    elif case == "other dataset":
        path, argv = best, ["--dataset", "cifar100"]
        message = f"{best} was trained on cifar10, not cifar100"
    else:
        retarget(best, path, classes=[f"c{i}" for i in range(10)])
        message = f"bad.pt was trained with other classes than the split in {trained.split}/"
    code, _, err = run_cli(predict_main, ["--checkpoint", str(path), *argv], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not Path("submissions").exists() and not Path("pwned").exists()


def test_pretrained_file_of_another_network(cifar10_dir, train_main, capsys):
    import timm

    torch.save(timm.create_model("mobilenetv2_100").state_dict(), "mnv2.pth")
    code, _, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL,
                                        "--pretrained-file", "mnv2.pth", "--experiment", "x"], capsys)
    assert code == 2 and "mnv2.pth is not a resnet18 weights file" in err and err.count("\n") == 1
    assert not Path("runs/x").exists()


@pytest.mark.parametrize("text, message", [
    ("id,lbl\n0,1\n", "header must be exactly 'id,label'"),
    ("id,label,extra\n" + "".join(f"{i},1,0\n" for i in range(40)), "header must be exactly"),
    ("id,label\n" + "".join(f"{i % 39},1\n" for i in range(40)), "appears more than once"),
    ("id,label\n" + "".join(f"{i},1\n" for i in range(39)), "39 rows, expected 40"),
    ("id,label\n" + "".join(f"{i},x\n" for i in range(40)), "is not a whole number"),
    ("id,label\n" + "".join(f"{i},10\n" for i in range(40)), "out of range 0..9"),
])
def test_submission_check_cli(cifar10_dir, text, message, capsys):
    assert run_cli(split.main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL], capsys)[0] == 0
    Path("sub.csv").write_text(text)
    code, _, err = run_cli(submission.main, ["check", "sub.csv", "--dataset", "cifar10"], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    good = "id,label\n" + "".join(f"{i},{i % 10}\n" for i in range(40))
    Path("sub.csv").write_text(good)
    code, out, err = run_cli(submission.main, ["check", "sub.csv", "--dataset", "cifar10"], capsys)
    assert code == 0 and "valid (40 rows, 10 classes)" in out


@pytest.mark.parametrize("script", ["train.py", "predict.py", "-m cifarkit.runs", *sorted(
    f"benchmarks/{p.name}" for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))])
def test_every_cli_help_renders(script, capsys):
    """--help is a user's first step: a '%' in a help text (argparse formats them) once turned it into a traceback.
    Run as `python SCRIPT --help` runs it, in this process (a fresh interpreter per script cost 4 s each)."""
    from conftest import ROOT, run_script

    argv = script.split()
    code, out, err = run_script([*(argv if argv[0] == "-m" else [ROOT / argv[0]]), "--help"], capsys)
    assert code == 0, err[-500:]
    assert "usage:" in out and "Traceback" not in err
    assert "(default: None)" not in out and "(default: False)" not in out
