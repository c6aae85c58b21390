#!/usr/bin/env python
"""What ImageNet pretraining buys at equal training time on this machine.

Trains the same timm network twice on the same split with the same --time-budget, once from a
local ImageNet weights file and once from scratch, and prints both val accuracies side by side.

    python benchmarks/pretrained_vs_scratch.py --data-dir ../shared/data/cifar100-partial \
        --pretrained-file ../shared/data/weights/mobilenetv2_100_timm_backbone.pth
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train as train_cli  # noqa: E402  the same flags and defaults as train.py
from cifarkit.errors import cli  # noqa: E402
from cifarkit.train import fit  # noqa: E402


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenetv2_100", help="any timm model name")
    p.add_argument("--pretrained-file", required=True, help="local ImageNet weights for --model")
    p.add_argument("--dataset", default="cifar100", choices=["cifar10", "cifar100"])
    p.add_argument("--data-dir", required=True, help="folder holding the official CIFAR files")
    p.add_argument("--train-per-class", default="80", help="training images per class")
    p.add_argument("--val-per-class", default="10", help="validation images per class")
    p.add_argument("--time-budget", default="180", help="seconds of training for each of the two runs")
    p.add_argument("--output", default="runs/bench_pretrained", help="folder for the two runs and their split")
    a = p.parse_args()
    common = ["--model", a.model, "--dataset", a.dataset, "--data-dir", a.data_dir, "--train-per-class",
              a.train_per_class, "--val-per-class", a.val_per_class, "--time-budget", a.time_budget,
              "--output", a.output, "--split-dir", f"{a.output}/split"]
    results = {}
    for label, extra in (("ImageNet-pretrained", ["--pretrained-file", a.pretrained_file]),
                         ("from scratch", ["--no-pretrained"])):
        tag = "pretrained" if extra[0] == "--pretrained-file" else "scratch"
        args = train_cli.parser().parse_args(common + extra + ["--experiment", f"{a.model}-{tag}"])
        run = fit(args)
        log = pd.read_csv(run / "log.csv")
        results[label] = (log["val_acc"].max(), log["train_seconds"].iloc[-1], len(log))
    print(f"\n{a.model} on {a.dataset} ({a.train_per_class}/class train, {a.val_per_class}/class val), "
          f"{a.time_budget} s of training each:")
    for label, (acc, secs, epochs) in results.items():
        print(f"  {label:20s} best val acc {acc:.4f}  ({secs:.0f} s, {epochs} epochs)")
    gain = results["ImageNet-pretrained"][0] - results["from scratch"][0]
    print(f"  pretraining buys {gain * 100:+.1f} points of val accuracy at equal time")


if __name__ == "__main__":
    main()
