#!/usr/bin/env python
"""Time to accuracy on real CIFAR-10: train within a wall-clock budget, then score the official test set.

Prints test accuracy, training seconds, the device, and how long predict takes on the 10,000 test
images (the whole predict.py path: checkpoint, split, model, inference, checked CSV).

    python benchmarks/time_to_accuracy.py --data-dir ../shared/data --model fast_cnn --time-budget 600

One run says little about a recipe whose seeds spread over a few tenths of a point: --seeds trains once per seed, one
run at a time, and prints a table with each arm's mean, standard deviation and range; --compare FLAGS runs every seed
again with those train.py flags added and prints the paired differences (what a flag is worth on the same seeds).

    python benchmarks/time_to_accuracy.py --data-dir ../shared/data --model fast_cnn_muon --tta flip_shift_unsure \
        --seeds 0 1 2 3 4 5 6 7 8 9 --compare "--skip-easy 0.6" -- --train-on-val
"""

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import predict as predict_cli  # noqa: E402
import train as train_cli  # noqa: E402
from cifarkit import predict  # noqa: E402
from cifarkit import models, runtime  # noqa: E402
from cifarkit.errors import HelpFormatter, UserError, cli  # noqa: E402
from cifarkit.train import fit  # noqa: E402


def train_and_score(data_dir, model, budget, output, tta="flip", extra=()):
    """Train within `budget` seconds, then predict.py's path on the official test set, scored from the CSV."""
    args = train_cli.parser().parse_args(["--dataset", "cifar10", "--data-dir", data_dir, "--model", model,
                                          "--time-budget", str(budget), "--output", output, *extra])
    t0 = time.perf_counter()
    run = fit(args)
    wall = time.perf_counter() - t0
    log = pd.read_csv(run / "log.csv")
    pargs = predict_cli.parser().parse_args(["--checkpoint", str(run / "best.pt"), "--submission",
                                             str(run / "submission.csv")] + ([] if tta == "none" else ["--tta", tta]))
    t1 = time.perf_counter()
    labels = predict.run(pargs)
    predict_seconds = time.perf_counter() - t1
    cfg = pd.read_json(run / "config.json", typ="series")
    return dict(acc=predict.score(labels, Path(cfg["split_dir"]) / "solution.csv"), run=run, wall=wall,
                train_seconds=log["train_seconds"].iloc[-1], epochs=len(log), images_per_s=log["images_per_s"].mean(),
                predict_seconds=predict_seconds, device=cfg["device"], amp=cfg["amp"])


def count(n, noun):
    """"1 epoch", "5 epochs": a run the budget cuts to one epoch says so in English."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_flags(flags, what):
    """train.py's settings from `flags`, so an unknown flag fails before the first run, not after hours of runs."""
    args, unknown = train_cli.parser().parse_known_args(["--dataset", "cifar10", "--data-dir", ".", *flags])
    if unknown:
        raise UserError(f"train.py has no {' '.join(unknown)} ({what} go to train.py)")
    return args


def seed_table(a):
    """Every seed once per arm, one run at a time, then the table: a row per seed, each arm's mean, standard deviation
    and range, and with --compare the paired differences: a seed's two runs share the split and, unless the flag
    changes them, the initial weights and the batches, so what the seeds vary cancels in their difference."""
    arms = [a.extra] + ([a.extra + shlex.split(a.compare)] if a.compare is not None else [])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    acc, epochs = {}, {}
    for seed in a.seeds:
        for k, flags in enumerate(arms):
            name = f"cifar10-{a.model}-{stamp}-seed{seed}" + ("-compare" if k else "")
            r = train_and_score(a.data_dir, a.model, a.time_budget, a.output, a.tta,
                                [*flags, "--seed", str(seed), "--experiment", name])
            acc[seed, k], epochs[seed, k] = r["acc"], r["epochs"]
            print(f"seed {seed}{', with ' + a.compare if k else ''}: {r['acc']:.2%} test, "
                  f"{count(r['epochs'], 'epoch')}, {r['train_seconds']:.0f} s of training, in {r['run']}", flush=True)
    machine = runtime.device_name(torch.device(r["device"]))
    heads = [f"`{' '.join([a.model, *a.extra])}`"] + ([f"with `{a.compare}`", "difference"] if len(arms) > 1 else [])
    print(f"\nCIFAR-10 test accuracy (the official test set, TTA {a.tta}, scored from each run's CSV) and epochs, "
          f"--time-budget {a.time_budget} on {machine}, autocast {r['amp']}:")
    print(f"| seed | {' | '.join(heads)} |\n|" + " --- |" * (len(heads) + 1))
    diffs = [(acc[s, 1] - acc[s, 0]) * 100 for s in a.seeds] if len(arms) > 1 else []
    for i, seed in enumerate(a.seeds):
        cells = [f"{acc[seed, k]:.2%} ({epochs[seed, k]})" for k in range(len(arms))]
        cells += [f"{diffs[i]:+.2f} points"] if diffs else []
        print(f"| {seed} | {' | '.join(cells)} |")
    columns = [[acc[s, k] * 100 for s in a.seeds] for k in range(len(arms))]
    means = [f"**{statistics.mean(c):.2f}%**" for c in columns]
    means += [f"**{statistics.mean(diffs):+.2f} points**"] if diffs else []
    print(f"| mean | {' | '.join(means)} |")
    if len(a.seeds) > 1:
        sds = [statistics.stdev(c) for c in columns + ([diffs] if diffs else [])]
        print(f"| standard deviation | {' | '.join(f'{sd:.2f}' for sd in sds)} |")
        ranges = [f"{min(c):.2f}-{max(c):.2f}%" for c in columns]
        if diffs:
            ahead = sum(d > 0 for d in diffs)
            t = statistics.mean(diffs) / (sds[-1] / len(diffs) ** 0.5) if sds[-1] else float("nan")
            ranges.append(f"ahead on {ahead} of {len(diffs)} seeds, t = {t:.1f}")
        print(f"| range | {' | '.join(ranges)} |")


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py/ (or its .tar.gz)")
    p.add_argument("--model", default="fast_cnn", help="model to train (see train.py --list-models)")
    p.add_argument("--time-budget", default="600", help="seconds of training")
    p.add_argument("--output", default="runs/bench_tta", help="folder for the run")
    p.add_argument("--tta", default="flip", choices=["none", *predict.TTA], help="test-time augmentation")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="train once per seed (train.py --seed), one run at a time, and print a table of the runs "
                        "with their mean, standard deviation and range")
    p.add_argument("--compare", metavar="FLAGS",
                   help="more train.py flags, in quotes (e.g. \"--skip-easy 0.6\"): each seed also runs with them, "
                        "and the table gives the paired differences (--seeds 0 unless given)")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    a = p.parse_args()
    check_flags(a.extra, "the flags after --")
    if a.compare is not None or a.seeds:
        compare = shlex.split(a.compare or "")
        check_flags(compare, "--compare's flags")
        if any(f.split("=")[0] in ("--seed", "--experiment") for f in a.extra + compare):
            raise UserError("--seed, --experiment: with --seeds or --compare this benchmark sets each run's seed and "
                            "names its folder")
        a.seeds = a.seeds or [0]
        if len(set(a.seeds)) < len(a.seeds):
            raise UserError(f"--seeds {' '.join(map(str, a.seeds))}: a seed twice would count one run twice")
        models.entry(a.model)
        return seed_table(a)
    r = train_and_score(a.data_dir, a.model, a.time_budget, a.output, a.tta, a.extra)
    print(f"\n{a.model} on CIFAR-10, budget {a.time_budget} s on {r['device']}, autocast {r['amp']}:")
    print(f"  test accuracy      {r['acc']:.4f} (TTA: {a.tta}, official 10,000 test images)")
    print(f"  training seconds   {r['train_seconds']:.0f} ({r['epochs']} epochs, "
          f"{r['images_per_s']:,.0f} train images/s); wall clock incl. validation {r['wall']:.0f}")
    print(f"  predict 10,000     {r['predict_seconds']:.1f} s (predict.py path, incl. loading and the checked CSV)")


if __name__ == "__main__":
    main()
