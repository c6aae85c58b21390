"""The local leaderboard: runs of both data sets, sorted and filtered, from the files train and predict write."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cifarkit import models, runs

from conftest import run_cli

LOG_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_seconds",
               "images_per_s"]


def make_run(name, dataset, model, val_accs, epoch_seconds, params=None, test=None, root="runs"):
    """A run folder as train.py writes it (config.json, log.csv), plus scores.json when `test` is given."""
    run = Path(root) / name
    run.mkdir(parents=True)
    config = dict(dataset=dataset, model=model, epochs=len(val_accs), seed=0, run_dir=str(run))
    if params is not None:
        config["params"] = params
    (run / "config.json").write_text(json.dumps(config))
    total = 0.0
    rows = []
    for i, (acc, sec) in enumerate(zip(val_accs, epoch_seconds), start=1):
        total += sec
        rows.append(dict(epoch=i, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=acc, lr=0.01, seconds=sec,
                         train_seconds=total, images_per_s=100.0))
    pd.DataFrame(rows, columns=LOG_COLUMNS).to_csv(run / "log.csv", index=False)
    if test is not None:
        runs.record_score(run, "test", test, checkpoint="best.pt", tta=None)
    return run


@pytest.fixture
def board():
    make_run("c10-small", "cifar10", "simple_cnn", [0.60, 0.71, 0.70], [10, 10, 10], params=310_000, test=0.7012)
    make_run("c10-fast", "cifar10", "fast_cnn_s", [0.80, 0.91], [50, 45.4], params=1_970_000)
    make_run("c100-res", "cifar100", "resnet18", [0.40, 0.52], [100, 100], test=0.5123)


def leaderboard(capsys, *argv):
    code, out, err = run_cli(runs.main, list(argv), capsys)
    assert code == 0, err
    header, *lines = out.splitlines()
    rows = [line for line in lines if not line.startswith("wrote ")]
    assert len({len(line) for line in rows}) == 1 and not any(line.startswith(" ") for line in rows), "not aligned"
    return header, [line.split() for line in lines], err


def test_lists_runs_of_both_data_sets_best_val_first(board, capsys):
    header, lines, err = leaderboard(capsys)
    assert header == "3 run(s) under runs/, sorted by best val accuracy, highest first:" and err == ""
    assert lines == [
        ["run", "dataset", "model", "epochs", "seconds", "params", "val_acc", "test_acc"],
        ["c10-fast", "cifar10", "fast_cnn_s", "2", "95", "1.97M", "0.9100", "-"],
        ["c10-small", "cifar10", "simple_cnn", "3", "30", "0.31M", "0.7100", "0.7012"],
        ["c100-res", "cifar100", "resnet18", "2", "200", "-", "0.5200", "0.5123"],
    ]


@pytest.mark.parametrize("sort, order", [
    ("name", ["c10-fast", "c10-small", "c100-res"]),
    ("seconds", ["c10-small", "c10-fast", "c100-res"]),
    ("params", ["c10-small", "c10-fast", "c100-res"]),  # unknown last
    ("test_acc", ["c10-small", "c100-res", "c10-fast"]),  # unknown last
])
def test_sorting(board, capsys, sort, order):
    _, lines, _ = leaderboard(capsys, "--sort", sort)
    assert [line[0] for line in lines[1:]] == order


def test_filter_by_data_set_and_csv(board, capsys, tmp_path):
    header, lines, _ = leaderboard(capsys, "--dataset", "cifar100", "--csv", "board.csv")
    assert header.startswith("1 run(s) of cifar100 under runs/")
    assert [line[0] for line in lines[1:-1]] == ["c100-res"] and lines[-1] == ["wrote", "board.csv"]
    df = pd.read_csv(tmp_path / "board.csv")
    assert list(df.columns) == runs.COLUMNS and df["params"].isna().all()
    assert df.drop(columns="params").to_dict("records") == [dict(
        run="c100-res", dataset="cifar100", model="resnet18", epochs=2, seconds=200.0, val_acc=0.52, test_acc=0.5123)]


def test_record_score_keeps_other_splits_and_replaces_a_corrupt_file(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    runs.record_score(run, "val", 0.8, checkpoint="best.pt", tta="flip")
    runs.record_score(run, "test", 0.75, checkpoint="best.pt", tta="flip")
    runs.record_score(run, "test", 0.76, checkpoint="last.pt", tta=None)
    assert json.loads((run / "scores.json").read_text()) == {
        "val": {"acc": 0.8, "checkpoint": "best.pt", "tta": "flip"},
        "test": {"acc": 0.76, "checkpoint": "last.pt", "tta": None}}
    (run / "scores.json").write_text("{trunc")
    runs.record_score(run, "test", 0.5)
    assert json.loads((run / "scores.json").read_text()) == {"test": {"acc": 0.5}}
    assert sorted(p.name for p in run.iterdir()) == ["scores.json"]


def test_unreadable_files_are_one_line_warnings(board, capsys):
    (Path("runs") / "c10-fast" / "config.json").write_text("{not json")
    (Path("runs") / "c100-res" / "log.csv").write_bytes(b"\xff\xfe\x00garbage")
    (Path("runs") / "c10-small" / "scores.json").write_text("[1, 2]")
    (Path("runs") / "crashed").mkdir()
    (Path("runs") / "crashed" / "last.pt").write_bytes(b"")
    (Path("runs") / "not-a-run").mkdir()
    _, lines, err = leaderboard(capsys, "--sort", "name")
    assert err.splitlines() == [
        "warning: runs/c10-fast/config.json unreadable (JSONDecodeError): model and data set unknown",
        "warning: runs/c10-small/scores.json not a JSON object: test accuracy unknown",
        "warning: runs/c100-res/log.csv unreadable (UnicodeDecodeError): epochs, seconds and val accuracy unknown",
        "warning: runs/crashed/config.json missing: model and data set unknown",
    ]
    assert lines[1:] == [
        ["c10-fast", "-", "-", "2", "95", "-", "0.9100", "-"],
        ["c10-small", "cifar10", "simple_cnn", "3", "30", "0.31M", "0.7100", "-"],
        ["c100-res", "cifar100", "resnet18", "-", "-", "-", "-", "0.5123"],
        ["crashed", "-", "-", "0", "-", "-", "-", "-"],
    ]


def test_no_runs_is_one_line(capsys):
    code, out, err = run_cli(runs.main, [], capsys)
    assert (code, out) == (2, "") and err == "error: no runs under runs/: train one first (python train.py) or pass --output\n"
    make_run("only", "cifar10", "simple_cnn", [0.5], [1])
    code, out, err = run_cli(runs.main, ["--dataset", "cifar100"], capsys)
    assert (code, out) == (2, "") and err == "error: no cifar100 run among the 1 under runs/\n"


def test_reads_what_train_and_predict_really_write(cifar10_dir, cifar100_dir, train_main, capsys):
    for dataset, source, small in (("cifar10", cifar10_dir, ["9", "3"]), ("cifar100", cifar100_dir, ["4", "2"])):
        code, _, err = run_cli(train_main, [
            "--dataset", dataset, "--model", "simple_cnn", "--data-dir", str(source.parent), "--train-per-class",
            small[0], "--val-per-class", small[1], "--epochs", "1", "-b", "16", "--experiment", f"real-{dataset}",
            "--device", "cpu"], capsys)
        assert code == 0, err
    runs.record_score("runs/real-cifar10", "test", 0.625, checkpoint="best.pt", tta=None)
    _, lines, err = leaderboard(capsys, "--sort", "name")
    assert err == ""
    for line, dataset in zip(lines[1:], ("cifar10", "cifar100")):
        log = pd.read_csv(f"runs/real-{dataset}/log.csv")
        params = sum(p.numel() for p in models.create("simple_cnn", 10 if dataset == "cifar10" else 100).parameters())
        assert line == [f"real-{dataset}", dataset, "simple_cnn", "1", f"{log['train_seconds'].iloc[-1]:.0f}",
                        f"{params / 1e6:.2f}M",
                        f"{log['val_acc'].max():.4f}", "0.6250" if dataset == "cifar10" else "-"]
