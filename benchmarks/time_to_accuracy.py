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


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py/ (or its .tar.gz)")
    p.add_argument("--model", default="fast_cnn", help="model to train (see train.py --list-models)")
    p.add_argument("--time-budget", default="600", help="seconds of training")
    p.add_argument("--output", default="runs/bench_tta", help="folder for the run")
    p.add_argument("--tta", default="flip", choices=["none", "flip", "flip_shift"], help="test-time augmentation")
    p.add_argument("extra", nargs="*", help="more train.py flags, after --")
    a = p.parse_args()
    args = train_cli.parser().parse_args(["--dataset", "cifar10", "--data-dir", a.data_dir, "--model", a.model,
                                          "--time-budget", a.time_budget, "--output", a.output, *a.extra])
    t0 = time.perf_counter()
    run = fit(args)
    wall = time.perf_counter() - t0
    log = pd.read_csv(run / "log.csv")
    pargs = predict_cli.parser().parse_args(["--checkpoint", str(run / "best.pt"), "--submission",
                                             str(run / "submission.csv")] + ([] if a.tta == "none" else ["--tta", a.tta]))
    t1 = time.perf_counter()
    labels = predict.run(pargs)
    predict_seconds = time.perf_counter() - t1
    cfg = pd.read_json(run / "config.json", typ="series")
    acc = predict.score(labels, Path(cfg["split_dir"]) / "solution.csv")
    print(f"\n{a.model} on CIFAR-10, budget {a.time_budget} s on {cfg['device']} ({cfg['amp']} autocast):")
    print(f"  test accuracy      {acc:.4f} (TTA: {a.tta}, official 10,000 test images)")
    print(f"  training seconds   {log['train_seconds'].iloc[-1]:.0f} ({len(log)} epochs, "
          f"{log['images_per_s'].mean():,.0f} train images/s); wall clock incl. validation {wall:.0f}")
    print(f"  predict 10,000     {predict_seconds:.1f} s (predict.py path, incl. loading and the checked CSV)")


if __name__ == "__main__":
    main()
