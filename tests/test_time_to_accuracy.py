"""benchmarks/time_to_accuracy.py --seeds / --compare on tiny data: a row per seed and arm, each scored from the CSV
its run wrote, the mean, spread and paired differences computed from those rows; flags it cannot use are one line
before anything trains."""

import json
import pickle
import re
import statistics

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, load_script, run_script, write_cifar10

SMALL = ["--train-per-class", "9", "--val-per-class", "3", "--device", "cpu"]


def bench(tmp_path, capsys, options, extra=()):
    """The benchmark as `python benchmarks/time_to_accuracy.py ...` runs it, in this process."""
    write_cifar10(tmp_path / "data")
    return run_script([ROOT / "benchmarks" / "time_to_accuracy.py", "--data-dir", tmp_path / "data", "--model",
                       "simple_cnn", "--time-budget", "1", "--tta", "none", "--output", "runs", *options,
                       "--", *SMALL, *extra], capsys)


def percent(cell):
    return float(re.search(r"[-+]?[0-9.]+", cell)[0])


def test_seeds_and_a_compared_flag_in_one_paired_table(tmp_path, capsys):
    code, out, err = bench(tmp_path, capsys, ["--seeds", "0", "1", "--compare", "--lr 1e-6 --label-smoothing 0.3"])
    assert code == 0, err[-800:]
    with open(tmp_path / "data" / "cifar-10-batches-py" / "test_batch", "rb") as f:
        truth = np.array(pickle.load(f, encoding="bytes")[b"labels"])
    scored = {}  # (seed, with the flag) -> accuracy of the CSV that run wrote, scored here on its own
    for run in (tmp_path / "runs").iterdir():
        name = re.fullmatch(r"cifar10-simple_cnn-\d{8}-\d{6}-seed(\d)(-compare)?", run.name)
        assert name, run.name
        seed, compared = int(name[1]), bool(name[2])
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["seed"] == seed and (cfg["label_smoothing"] == 0.3) == compared
        labels = pd.read_csv(run / "submission.csv").sort_values("id")["label"].to_numpy()
        scored[seed, compared] = 100 * np.mean(labels == truth)
    assert sorted(scored) == [(0, False), (0, True), (1, False), (1, True)]

    table = out[out.index("| seed |"):]
    assert ("| seed | `simple_cnn --train-per-class 9 --val-per-class 3 --device cpu` "
            "| with `--lr 1e-6 --label-smoothing 0.3` | difference |") in table
    assert "TTA none, scored from each run's CSV) and epochs, --time-budget 1 on CPU (" in out
    rows = {line.split(" | ")[0][2:]: [c.strip(" |") for c in line.split(" | ")[1:]]
            for line in table.splitlines() if line.startswith("| ") and not line.startswith("| seed")}
    assert re.fullmatch(r"[0-9.]+% \(\d+\)", rows["0"][0]), rows["0"]  # accuracy (epochs)
    for seed in (0, 1):
        without, with_flag, diff = map(percent, rows[str(seed)])
        assert without == pytest.approx(scored[seed, False], abs=0.006)
        assert with_flag == pytest.approx(scored[seed, True], abs=0.006)
        assert diff == pytest.approx(with_flag - without, abs=0.011)
    columns = [[scored[s, k] for s in (0, 1)] for k in (False, True)]
    diffs = [b - a for a, b in zip(*columns)]
    assert any(abs(d) > 5 for d in diffs)  # a rate of 1e-6 leaves the network near its start: the pairs differ
    for got, want in zip(map(percent, rows["mean"]), [*map(statistics.mean, columns), statistics.mean(diffs)]):
        assert got == pytest.approx(want, abs=0.006)
    for got, want in zip(map(float, rows["standard deviation"]), map(statistics.stdev, [*columns, diffs])):
        assert got == pytest.approx(want, abs=0.006)
    assert rows["range"][0] == f"{min(columns[0]):.2f}-{max(columns[0]):.2f}%"
    assert rows["range"][2].startswith(f"ahead on {sum(d > 0.005 for d in diffs)} of 2 seeds, t = ")
    # each run's own line as it finishes: its epochs as the table has them, "1 epoch" in the singular
    lines = re.findall(r"^seed (\d)(, with [^:]+)?: [0-9.]+% test, (\d+) (epochs?), ", out, re.M)
    assert len(lines) == 4 and all((word == "epoch") == (n == "1") for *_, n, word in lines), lines
    for seed, compared, n, _ in lines:
        assert rows[seed][bool(compared)].endswith(f"({n})")
    assert load_script("benchmarks/time_to_accuracy").count(1, "epoch") == "1 epoch"


@pytest.mark.parametrize("options, extra, says", [
    (["--compare", "--no-such-flag 1"], [], "train.py has no --no-such-flag 1 (--compare's flags go to train.py)"),
    (["--seeds", "0"], ["--no-such-flag"], "train.py has no --no-such-flag (the flags after -- go to train.py)"),
    ([], ["--no-such-flag"], "train.py has no --no-such-flag (the flags after -- go to train.py)"),
    (["--seeds", "0", "1"], ["--seed", "3"], "this benchmark sets each run's seed"),
    (["--compare", "--experiment x"], [], "this benchmark sets each run's seed and names its folder"),
    (["--seeds", "1", "2", "1"], [], "--seeds 1 2 1: a seed twice would count one run twice"),
])
def test_what_it_cannot_use_is_one_line_before_anything_trains(tmp_path, capsys, options, extra, says):
    code, out, err = bench(tmp_path, capsys, options, extra)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err[-800:]
    assert not (tmp_path / "runs").exists()
