#!/usr/bin/env python
"""Which ResNet18 stem at 32x32: accuracy and speed of each variant at equal training time.

The stock ImageNet stem (stride-2 conv + max-pool) shrinks a 32-px image to 8x8 before the first
block; the known remedies are dropping the max-pool, also making conv1 stride 1, or upsampling the
input. All variants keep conv1's weights loadable unchanged. Each trains on the same split for the
same --time-budget (from scratch unless --pretrained-file is given); val accuracy and training
images/s are printed side by side.

    python benchmarks/resnet18_stem.py --dataset cifar10 --data-dir ../shared/data --time-budget 150
"""

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train as train_cli  # noqa: E402
from cifarkit import models  # noqa: E402
from cifarkit.errors import cli  # noqa: E402
from cifarkit.train import fit  # noqa: E402


class Upsampled(nn.Module):
    def __init__(self, net, size):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x):
        return self.net(F.interpolate(x, size=self.size, mode="bilinear", align_corners=False))


def variant(kind):
    def build(num_classes):
        import timm

        net = timm.create_model("resnet18", num_classes=num_classes)
        if kind in ("no_maxpool", "stride1_no_maxpool"):
            net.maxpool = nn.Identity()
        if kind == "stride1_no_maxpool":
            net.conv1.stride = (1, 1)
        return Upsampled(net, 128) if kind == "upsample128" else net
    build.__name__ = f"resnet18_{kind}"
    return build


VARIANTS = ("stock", "no_maxpool", "stride1_no_maxpool", "upsample128")


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--data-dir", required=True, help="folder holding the official CIFAR files")
    p.add_argument("--time-budget", default="150", help="seconds of training per variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="stems to compare")
    p.add_argument("--output", default="runs/bench_stem", help="folder for the runs")
    a = p.parse_args()
    results = {}
    for kind in a.variants:
        fn = variant(kind)
        models.register(**models.TRANSFER_DEFAULTS)(fn)
        args = train_cli.parser().parse_args([
            "--model", fn.__name__, "--no-pretrained", "--dataset", a.dataset, "--data-dir", a.data_dir,
            "--time-budget", a.time_budget, "--output", a.output, "--experiment", kind])
        run = fit(args)
        log = pd.read_csv(run / "log.csv")
        results[kind] = (log["val_acc"].max(), log["images_per_s"].mean(), log["train_seconds"].iloc[-1])
    print(f"\nResNet18 stems on {a.dataset}, {a.time_budget} s of training each, from scratch:")
    for kind, (acc, speed, secs) in results.items():
        print(f"  {kind:20s} best val acc {acc:.4f}   {speed:6.0f} train images/s   ({secs:.0f} s)")


if __name__ == "__main__":
    main()
