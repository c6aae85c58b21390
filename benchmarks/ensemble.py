#!/usr/bin/env python
"""What a blend and pseudo-labels are worth: members, their ensemble, and a pseudo-labelled run, in one run.

Trains each member (MODEL:SEED) for the same budget on one split, scores every member and the blend of
all of them on the val split and on the test split, and scores the test CSVs independently: against
the labels read from the official test file (cifarkit.read), not the split's solution.csv. With --pseudo-threshold, also
compares at equal total time (2 budgets): the first member's model trained for 2 budgets, against the
first member (1 budget) as the teacher of a run on train + its confident test labels (1 budget).

    python benchmarks/ensemble.py --dataset cifar10 --data-dir ../shared/data --time-budget 120 \
        --members fast_cnn_s:1 fast_cnn_s:2 fast_cnn_s:3 --pseudo-threshold 0.9
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import predict as predict_cli  # noqa: E402
import train as train_cli  # noqa: E402
from cifarkit import predict, read, runtime, split  # noqa: E402
from cifarkit.errors import UserError, cli  # noqa: E402
from cifarkit.train import fit  # noqa: E402


def train(a, name, model, seed, budget, *extra):
    argv = ["--dataset", a.dataset, "--data-dir", a.data_dir, "--model", model, "--seed", str(seed),
            "--time-budget", str(budget), "--output", a.output, "--split-dir", f"{a.output}/split", "--experiment",
            name, *a.split, *extra]
    folder = fit(train_cli.parser().parse_args(argv))
    log = pd.read_csv(folder / "log.csv")
    return folder / "best.pt", log["train_seconds"].iloc[-1]


def scores(a, name, checkpoints, truth, val_truth):
    """(val accuracy, test accuracy scored from the written CSV) of one checkpoint or the blend of several."""
    common = ["--checkpoint", *map(str, checkpoints), *(["--tta", a.tta] if a.tta != "none" else [])]
    val_labels = predict.run(predict_cli.parser().parse_args([*common, "--split", "val"]))
    csv = Path(a.output) / f"{name}.csv"
    predict.run(predict_cli.parser().parse_args([*common, "--submission", str(csv)]))
    sub = pd.read_csv(csv).sort_values("id")
    if len(sub) != len(truth):
        raise UserError(f"{csv} has {len(sub)} rows, the official test set {len(truth)}")
    return float(np.mean(val_labels == val_truth)), float(np.mean(sub["label"].to_numpy() == truth))


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(read.SOURCES), default="cifar10", help="which CIFAR")
    p.add_argument("--data-dir", required=True, help="folder with the official cifar-10-batches-py/ or cifar-100-python/")
    p.add_argument("--members", nargs="+", default=["fast_cnn_s:1", "fast_cnn_s:2", "fast_cnn_s:3"],
                   metavar="MODEL:SEED", help="the ensemble's members: a model name and a training seed each")
    p.add_argument("--time-budget", type=float, default=120, help="seconds of training per member")
    p.add_argument("--split-flags", default="", metavar="FLAGS",
                   help="split flags as one string, e.g. '--train-per-class 80 --val-per-class 10'")
    p.add_argument("--tta", default="none", choices=["none", *predict.TTA], help="test-time augmentation")
    p.add_argument("--pseudo-threshold", type=float, default=None,
                   help="also measure pseudo-labels at this confidence, at equal total time (off by default)")
    p.add_argument("--output", default="runs/bench_ensemble", help="folder for the runs, split and CSVs")
    a = p.parse_args()
    a.split = a.split_flags.split()
    specs = []
    for m in a.members:
        model, _, seed = m.partition(":")
        if not seed.lstrip("-").isdigit():
            raise UserError(f"member {m!r}: write MODEL:SEED, e.g. fast_cnn_s:1")
        specs.append((model, int(seed)))
    truth = read.load(a.data_dir, a.dataset, download=False).test_y  # the official file, read and validated once
    want = train_cli.parser().parse_args(["--dataset", a.dataset, *a.split])  # the split every run will share
    split_dir = split.ensure(a.dataset, a.data_dir, Path(a.output) / "split", want.train_per_class,
                             want.val_per_class, want.split_seed)
    val_truth = split.load(split_dir, ("val",))["val_labels"]

    rows, ckpts = [], []
    for model, seed in specs:
        name = f"{model}-s{seed}"
        ckpt, secs = train(a, name, model, seed, a.time_budget)
        ckpts.append(ckpt)
        rows.append((name, secs, *scores(a, name, [ckpt], truth, val_truth)))
    rows.append((f"blend of {len(ckpts)} (mean probabilities)", sum(r[1] for r in rows), *scores(a, "blend", ckpts, truth, val_truth)))
    if a.pseudo_threshold is not None:
        model, seed = specs[0]
        long_ckpt, long_s = train(a, f"{model}-s{seed}-2x", model, seed, 2 * a.time_budget)
        rows.append((f"{model}, 2 budgets", long_s, *scores(a, "long", [long_ckpt], truth, val_truth)))
        student, secs = train(a, f"{model}-s{seed}-pseudo", model, seed, a.time_budget,
                              "--pseudo-labels", str(ckpts[0]), "--pseudo-threshold", str(a.pseudo_threshold))
        rows.append((f"{model}, 1 budget + pseudo-labels from {model}-s{seed}", rows[0][1] + secs,
                     *scores(a, "pseudo", [student], truth, val_truth)))

    print(f"\n{a.dataset} ({' '.join(a.split) or 'standard split'}), {a.time_budget:g} s of training per member, "
          f"TTA {a.tta}, on {runtime.device_name(runtime.pick_device())}; test scored from each CSV against the "
          f"official test labels ({len(truth)} images)\n")
    print("| what | training s | val accuracy | test accuracy |")
    print("| --- | --- | --- | --- |")
    for name, secs, val, test in rows:
        print(f"| {name} | {secs:.0f} | {val * 100:.2f}% | {test * 100:.2f}% |")
    best = max(rows[:len(specs)], key=lambda r: r[2])
    blend = rows[len(specs)]
    print(f"\nblend vs best member by val ({best[0]}): {(blend[2] - best[2]) * 100:+.2f} val, "
          f"{(blend[3] - best[3]) * 100:+.2f} test points")
    if a.pseudo_threshold is not None:
        print(f"pseudo-labels vs the same time on labels alone: {(rows[-1][3] - rows[-2][3]) * 100:+.2f} test, "
              f"{(rows[-1][2] - rows[-2][2]) * 100:+.2f} val points")


if __name__ == "__main__":
    main()
