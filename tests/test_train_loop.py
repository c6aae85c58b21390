"""The training loop's edges: precision choice, the live progress bar, no validation split, lengthening
a finished run, refusing flags a resume would ignore, torch.compile."""

import sys

import pandas as pd
import pytest
import torch
from tqdm import tqdm

from cifarkit import checkpoint, runtime

from conftest import run_cli

TINY = ["--dataset", "cifar10", "--model", "simple_cnn", "--train-per-class", "9", "--val-per-class", "3",
        "-b", "8", "--device", "cpu"]


@pytest.fixture
def tiny(cifar10_dir):
    return ["--data-dir", str(cifar10_dir), *TINY]


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_gpus_without_native_bf16_get_fp16_and_a_scaler(monkeypatch, native, expected):
    """torch's default counts emulated bf16 (T4, V100) as supported: slow, and fp16 never ran."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert runtime.amp_dtype(torch.device("cuda")) is expected
    assert runtime.amp_dtype(torch.device("cuda"), False) is None


def test_live_loss_shows_on_a_terminal_only(tiny, train_main, capsys, monkeypatch):
    shown = []
    monkeypatch.setattr(tqdm, "set_postfix", lambda self, **kw: shown.append(kw))
    assert run_cli(train_main, [*tiny, "--epochs", "2", "--experiment", "pipe"], capsys)[0] == 0
    assert shown == []  # not a terminal: no bar, no per-step reads of the running sums

    class Terminal:
        def write(self, s):
            return len(s)

        def flush(self):
            pass

        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert run_cli(train_main, [*tiny, "--epochs", "2", "--experiment", "tty"], capsys)[0] == 0
    assert shown and {"loss", "acc"} <= set(shown[0])


def test_no_validation_split_on_purpose(tiny, train_main, predict_main, capsys, tmp_path):
    argv = [a if a != "3" else "0" for a in tiny]  # --val-per-class 0
    code, out, err = run_cli(train_main, [*argv, "--epochs", "2", "--experiment", "noval"], capsys)
    assert code == 0, err
    assert "no validation figure exists" in out and "best.pt holds the weights of the last epoch" in out
    best = checkpoint.load(tmp_path / "runs" / "noval" / "best.pt")
    assert best["epoch"] == 2
    assert pd.read_csv(tmp_path / "runs" / "noval" / "log.csv")["val_acc"].isna().all()
    assert run_cli(predict_main, ["--checkpoint", str(tmp_path / "runs" / "noval" / "best.pt")], capsys)[0] == 0


@pytest.mark.parametrize("every, drawn", [(0, [1, 2, 3, 4]), (1e9, [1, 4])])
def test_curves_are_redrawn_at_most_every_so_often_and_at_the_end(tiny, train_main, capsys, monkeypatch, every, drawn):
    """A redraw (0.4 s) outlasted an epoch on an H200; the last epochs are drawn when the run ends."""
    from cifarkit import report, train

    seen = []
    monkeypatch.setattr(report, "plot_curves", lambda log, path, title: seen.append(len(log)))
    monkeypatch.setattr(train.Writer, "PLOT_EVERY_S", every)
    assert run_cli(train_main, [*tiny, "--epochs", "4", "--experiment", "c"], capsys)[0] == 0
    assert seen == drawn


def test_resume_lengthens_a_finished_run(tiny, train_main, capsys, tmp_path):
    assert run_cli(train_main, [*tiny, "--epochs", "2", "--experiment", "r"], capsys)[0] == 0
    code, out, err = run_cli(train_main, ["--resume", "runs/r", "--epochs", "4"], capsys)
    assert code == 0, err
    assert "resuming at epoch 3, batch 0" in out
    assert pd.read_csv(tmp_path / "runs" / "r" / "log.csv")["epoch"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("extra, message", [
    (["--lr", "0.1"], "--lr cannot change it"),
    (["--model", "fast_cnn"], "--model cannot change it"),
    (["--epochs", "1"], "--epochs 1 is fewer than the run has done already"),
    (["--time-budget", "60"], "trained for a number of epochs: lengthen it with --epochs"),
])
def test_resume_refuses_flags_it_would_ignore(tiny, train_main, capsys, extra, message):
    assert run_cli(train_main, [*tiny, "--epochs", "2", "--experiment", "r"], capsys)[0] == 0
    code, out, err = run_cli(train_main, ["--resume", "runs/r", *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_torchcompile_trains_and_saves_plain_weights(tiny, train_main, predict_main, capsys, tmp_path):
    """The eager backend runs the torch.compile wrapper without a C++ build; checkpoints must not carry
    the wrapper's `_orig_mod.` prefix, or predict could not load them."""
    code, out, err = run_cli(train_main, [*tiny, "--epochs", "1", "--torchcompile", "eager", "--experiment", "c"],
                             capsys)
    assert code == 0, err
    best = checkpoint.load(tmp_path / "runs" / "c" / "best.pt")
    assert not any(k.startswith("_orig_mod") for k in best["state_dict"])
    assert run_cli(predict_main, [], capsys)[0] == 0


def test_a_model_can_keep_autocast_off_on_cpus(monkeypatch):
    """mobilenetv2_100's depthwise convolutions run slower in bf16 on CPUs: its entry says so, flags still win."""
    from cifarkit import models

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert models.amp_dtype("mobilenetv2_100", cpu) is None and models.amp_dtype("fast_cnn_s", cpu) is torch.bfloat16
    assert models.amp_dtype("mobilenetv2_100", cpu, True) is torch.bfloat16
