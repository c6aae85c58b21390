"""Tiny CIFAR-format data in the official pickle layout, written by the tests themselves.

Images carry a learnable signal (a colour and a bright quadrant per class, plus noise), so a short
training run must beat chance clearly: a broken loop, loader or label pipeline fails the tests.
"""

import contextlib
import importlib.util
import io
import os
import pickle
import runpy
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_images(labels, num_classes, seed):
    rng = np.random.default_rng(seed)
    n = len(labels)
    palette = np.random.default_rng(1234).integers(40, 216, size=(num_classes, 3))
    img = rng.normal(0, 25, size=(n, 32, 32, 3)) + palette[labels][:, None, None, :]
    quadrant = labels % 4
    for q in range(4):
        sel = quadrant == q
        r, c = divmod(q, 2)
        img[sel, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16, :] += 60
    return np.clip(img, 0, 255).astype(np.uint8)


def to_official(images):
    """NHWC uint8 -> the official (N, 3072) row layout: all red, then green, then blue, row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root, train_per_class=12, test_per_class=4, seed=0):
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.repeat(np.arange(10), train_per_class)
    np.random.default_rng(seed).shuffle(labels)
    images = make_images(labels, 10, seed)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        dump(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(), b"labels": labels[part].tolist(),
            b"data": to_official(images[part]), b"filenames": [f"img_{j}.png".encode() for j in part]})
    test_labels = np.tile(np.arange(10), test_per_class)
    dump(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(),
        b"data": to_official(make_images(test_labels, 10, seed + 1)),
        b"filenames": [f"test_{j}.png".encode() for j in range(len(test_labels))]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})
    return folder


def write_cifar100(root, train_per_class=6, test_per_class=2, seed=0):
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, per_class, s in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        labels = np.repeat(np.arange(100), per_class)
        np.random.default_rng(s).shuffle(labels)
        dump(folder / name, {
            b"filenames": [f"{name}_{j}.png".encode() for j in range(len(labels))],
            b"batch_label": f"{name} batch".encode(), b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(), b"data": to_official(make_images(labels, 100, s))})
    dump(folder / "meta", {b"fine_label_names": [f"class{i:03d}".encode() for i in range(100)],
                           b"coarse_label_names": [f"super{i:02d}".encode() for i in range(20)]})
    return folder


HOME_VARS = {"HOME": "", "XDG_CACHE_HOME": ".cache", "XDG_CONFIG_HOME": ".config", "HF_HOME": ".cache/huggingface",
             "HF_HUB_CACHE": ".cache/huggingface/hub", "TORCH_HOME": ".cache/torch", "MPLCONFIGDIR": ".config/matplotlib"}


def pytest_configure(config):
    """Point home and every cache the libraries read (hub weights, torch hub, matplotlib) at an empty temporary
    home, before anything imports them, so no test reads the real user's files or depends on what they hold."""
    home = Path(tempfile.mkdtemp(prefix="cifarkit-tests-home-"))
    config.cifarkit_home = (home, {var: os.environ.get(var) for var in HOME_VARS})
    for var, sub in HOME_VARS.items():
        os.environ[var] = str(home / sub)


def pytest_unconfigure(config):
    home, saved = config.cifarkit_home
    for var, value in saved.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def cifar10_dir(tmp_path):
    return write_cifar10(tmp_path / "src")


@pytest.fixture
def cifar100_dir(tmp_path):
    return write_cifar100(tmp_path / "src")


def load_script(name):
    """Import train.py / predict.py from the repo root as modules, to call their main(argv)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def train_main():
    return load_script("train").main


@pytest.fixture
def predict_main():
    return load_script("predict").main


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own folder, so data/, runs/ and submissions/ never touch the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """simple_cnn trained once for 4 short epochs on tiny CIFAR-10 in full precision, shared by the tests that
    only read the run (they pass --checkpoint or --output and write their own outputs elsewhere)."""
    root = tmp_path_factory.mktemp("trained")
    t = SimpleNamespace(data=write_cifar10(root / "src"), split=root / "data" / "cifar10", output=root / "runs")
    t.run = t.output / "tiny"
    argv = ["--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(t.data), "--split-dir", str(t.split),
            "--train-per-class", "9", "--val-per-class", "3", "--epochs", "4", "-b", "16", "--lr", "0.05",
            "--output", str(t.output), "--experiment", "tiny", "--device", "cpu", "--no-amp"]
    t.stdout = train_quietly(argv, "the shared run")
    return t


def train_quietly(argv, what):
    """train.py's main(argv) for a fixture shared by several tests (no capsys there); returns its stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            load_script("train").main(argv)
        except SystemExit:
            pytest.fail(f"training {what} failed: {err.getvalue()}")
    return out.getvalue()


def logits_by_hand(ckpt_path, images):
    """A checkpoint's network on uint8 NHWC images, normalised here with its own mean/std, in full precision."""
    import torch

    from cifarkit import checkpoint, models

    ckpt = checkpoint.load(ckpt_path)
    model = models.create(ckpt["model"], ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    mean, std = (torch.tensor(ckpt[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        return model.eval()((torch.from_numpy(images).permute(0, 3, 1, 2) / 255 - mean) / std)


def run_cli(main, argv, capsys):
    """Run a CLI main(argv); return (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def run_script(argv, capsys):
    """Run a script as `python ARGV` would, in this process (`-m MODULE` too): its `__main__` block, sys.argv and
    sys.path as there; returns run_cli's (exit code, stdout, stderr). Imports are already paid for here, so a check
    of the arguments takes a fraction of a second instead of a fresh interpreter's seconds."""
    module = argv[0] == "-m"
    target, args = (argv[1], argv[2:]) if module else (str(argv[0]), argv[1:])
    saved = sys.argv, sys.path[:]
    sys.argv = [target, *map(str, args)]
    try:
        if module:
            return run_cli(lambda _: runpy.run_module(target, run_name="__main__", alter_sys=True), [], capsys)
        return run_cli(lambda _: runpy.run_path(target, run_name="__main__"), [], capsys)
    finally:
        sys.argv, sys.path[:] = saved


class _Stopped(Exception):
    pass


def resumes_as_if_never_stopped(train_main, capsys, argv, output, stop=None):
    """Train `argv` whole, then again stopped and resumed with --resume: the two logs and last weights must match.
    Stopped after epoch 1 (what fit() leaves there: last.pt), or, given `stop`, at the first mid-epoch save
    (--checkpoint-interval) where stop(run) holds. Returns the whole run's log."""
    import pandas as pd
    import pytest
    import torch

    from cifarkit import checkpoint, train
    from cifarkit.predict import evaluate

    argv = [*argv, "--output", str(output)]
    code, _, err = run_cli(train_main, [*argv, "--experiment", "whole"], capsys)
    assert code == 0, err
    r = train.setup(load_script("train").parser().parse_args([*argv, "--experiment", "cut"]))
    w = train.Writer(r)
    save = w.save_last

    def save_then_maybe_stop(*sums):
        save(*sums)
        if sums and stop(r):  # a mid-epoch save
            raise _Stopped

    if stop:
        w.save_last = save_then_maybe_stop
    w.start()
    try:
        while r.state.epoch <= r.args.epochs:  # what fit() does, epoch by epoch
            w.end_epoch(*train.train_one_epoch(r, w), *evaluate(r.eval_model, r.val_loader, r.device, r.amp))
            r.state.next_epoch()
            w.save_last()
            if not stop:
                break  # the process "stops" here
    except _Stopped:
        pass
    else:
        assert not stop, "stop(run) held at no mid-epoch save"
    code, out, err = run_cli(train_main, ["--resume", str(output / "cut")], capsys)
    assert code == 0, err
    assert f"resuming at epoch {r.state.epoch}, batch {r.state.batch}:" in out
    whole, cut = (pd.read_csv(output / n / "log.csv") for n in ("whole", "cut"))
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert cut[col].tolist() == pytest.approx(whole[col].tolist(), rel=1e-5, abs=1e-6), col
    ours, ref = (checkpoint.load(output / n / "last.pt")["state_dict"] for n in ("cut", "whole"))
    assert all(torch.allclose(ours[k].float(), ref[k].float(), atol=1e-5) for k in ref), "last weights"
    return whole


# Python for a child process: 16 steps of feature maps (144 MB) made, touched and freed; prints "faults" and the
# page faults of steps 2-16 (the first maps the heap in either way).
FAULT_STEPS = """
import resource, torch
steps = []
for step in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    maps = [torch.ones(n * 2**20) for n in (12, 16, 8)]
    del maps
    steps.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("faults", *steps[1:])
"""


def fault_counts(out):
    """The step faults FAULT_STEPS printed, from a process's output (a prefix before 'faults' allowed)."""
    return [int(n) for n in out.split("faults ", 1)[1].split("\n")[0].split()]


def assert_pages_reused(plain, keep):
    """Plain malloc faults every step's 144 MB in afresh (36,864 pages); with runtime.keep_freed_memory the heap
    settles within a few steps (how many varies from run to run) and a step then reuses the pages of the one
    before: 0.07-0.17 x the plain steps' faults over 15 steps, in 8 runs."""
    assert min(plain) > 30_000
    assert sum(keep) < 0.3 * sum(plain) and sum(n < 1_000 for n in keep) >= 3, keep
