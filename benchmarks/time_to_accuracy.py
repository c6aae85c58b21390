#!/usr/bin/env python
"""Time to accuracy on real CIFAR-10: train within a wall-clock budget, then score the official test set.

Prints test accuracy, training seconds, the device, and how long predict takes on the 10,000 test
images (the whole predict.py path: checkpoint, split, model, inference, checked CSV).

    python benchmarks/time_to_accuracy.py --data-dir ../shared/data --model fast_cnn --time-budget 600
"""

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import predict as predict_cli  # noqa: E402
import train as train_cli  # noqa: E402
from cifarkit import predict  # noqa: E402
from cifarkit.errors import cli  # noqa: E402
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


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py/ (or its .tar.gz)")
    p.add_argument("--model", default="fast_cnn", help="model to train (see train.py --list-models)")
    p.add_argument("--time-budget", default="600", help="seconds of training")
    p.add_argument("--output", default="runs/bench_tta", help="folder for the run")
    p.add_argument("--tta", default="flip", choices=["none", *predict.TTA], help="test-time augmentation")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    a = p.parse_args()
    r = train_and_score(a.data_dir, a.model, a.time_budget, a.output, a.tta, a.extra)
    print(f"\n{a.model} on CIFAR-10, budget {a.time_budget} s on {r['device']} ({r['amp']} autocast):")
    print(f"  test accuracy      {r['acc']:.4f} (TTA: {a.tta}, official 10,000 test images)")
    print(f"  training seconds   {r['train_seconds']:.0f} ({r['epochs']} epochs, "
          f"{r['images_per_s']:,.0f} train images/s); wall clock incl. validation {r['wall']:.0f}")
    print(f"  predict 10,000     {r['predict_seconds']:.1f} s (predict.py path, incl. loading and the checked CSV)")


if __name__ == "__main__":
    main()
