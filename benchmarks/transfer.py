#!/usr/bin/env python
"""What transfer learning is worth here, arm by arm, at equal training time, in one run.

On the partial CIFAR-100 with real ImageNet MobileNetV2 weights: scratch vs pretrained at 32 px and
upsampled to 64/80/96/128 px (all layers from the start); then, at the best size, head-first vs all at
once, a lower backbone learning rate, the stem and first two stages held, the split's vs the weights' normalisation,
mixup and cutmix; and the model's registry recipe, which is what `train.py --model NAME` runs. With fast_cnn_s:
a real CIFAR-10 checkpoint as the start of a CIFAR-100 run vs scratch. Prints one table (markdown).

    python benchmarks/transfer.py --data-dir ../shared/data/cifar100-partial \
        --pretrained-file ../shared/data/weights/mobilenetv2_100_timm_backbone.pth \
        --cifar10-dir ../shared/data --time-budget 300
"""

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train as train_cli  # noqa: E402  the same flags and defaults as train.py
from cifarkit import runtime  # noqa: E402
from cifarkit.errors import cli  # noqa: E402
from cifarkit.train import fit  # noqa: E402


def run(a, name, flags, dataset="cifar100", data_dir=None, split=None, budget=None):
    """One arm: train for the budget, return its row."""
    split = ["--train-per-class", a.train_per_class, "--val-per-class", a.val_per_class] if split is None else split
    argv = ["--dataset", dataset, "--data-dir", data_dir or a.data_dir, "--time-budget", str(budget or a.time_budget),
            "--output", a.output, "--split-dir", f"{a.output}/split-{dataset}",
            "--experiment", name.replace("/", " and "), *split, *flags]  # a folder name: "mean/std" nested one
    t0 = time.perf_counter()
    folder = fit(train_cli.parser().parse_args(argv))
    log = pd.read_csv(folder / "log.csv")
    cfg = pd.read_json(folder / "config.json", typ="series")
    return dict(arm=name, flags=" ".join(flags), val_acc=log["val_acc"].max(), epochs=len(log),
                train_s=log["train_seconds"].iloc[-1], images_per_s=log["images_per_s"].mean(),
                wall_s=time.perf_counter() - t0, amp=cfg["amp"], batch=cfg["batch_size"], folder=folder)


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with cifar-100-python/ (the partial CIFAR-100 here)")
    p.add_argument("--pretrained-file", required=True, help="ImageNet weights for --model (timm layout)")
    p.add_argument("--cifar10-dir", required=True, help="folder with cifar-10-batches-py/, for the CIFAR-10 start")
    p.add_argument("--cifar10-checkpoint", default=None,
                   help="a fast_cnn_s CIFAR-10 best.pt to start from (default: train one for --cifar10-budget)")
    p.add_argument("--cifar10-budget", type=float, default=300, help="seconds for that CIFAR-10 run")
    p.add_argument("--cifar10-split", default="", metavar="FLAGS",
                   help="split flags for that run, as one string (default: the standard 4500/500 split)")
    p.add_argument("--model", default="mobilenetv2_100", help="the pretrained network (timm name)")
    p.add_argument("--train-per-class", default="80")
    p.add_argument("--val-per-class", default="10")
    p.add_argument("--time-budget", type=float, default=300, help="seconds of training for every arm")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 80, 96, 128], help="input sizes to try")
    p.add_argument("--output", default="runs/bench_transfer", help="folder for the runs and splits")
    a = p.parse_args()

    weights = ["--model", a.model, "--pretrained-file", a.pretrained_file]
    # Every layer from the first step at one learning rate (0.01, timm's usual fine-tuning rate), in fp32:
    # spelled out, since the model's registry recipe may differ in each of these.
    one_lr = ["--freeze-epochs", "0", "--lr", "0.01", "--backbone-lr-scale", "1", "--frozen-stages", "0", "--no-amp"]
    plain = [*weights, *one_lr]
    rows = [run(a, "scratch 32 px", ["--model", a.model, "--no-pretrained", *one_lr, "--img-size", "32"])]
    for size in a.sizes:
        rows.append(run(a, f"pretrained {size} px", [*plain, "--img-size", str(size)]))
    best = max(rows[1:], key=lambda r: r["val_acc"])
    size = best["flags"].split("--img-size ")[1]
    at_best = [*plain, "--img-size", size]
    for name, extra in ((f"{size} px, head first (1 epoch)", ["--freeze-epochs", "1"]),
                        (f"{size} px, backbone lr x0.1 (lr 0.001)", ["--backbone-lr-scale", "0.1"]),
                        (f"{size} px, stem + 2 stages held", ["--frozen-stages", "3"]),
                        (f"{size} px, split's mean/std", ["--norm-stats", "split"]),
                        (f"{size} px, mixup 0.2", ["--mixup", "0.2"]),
                        (f"{size} px, cutmix 1.0", ["--cutmix", "1.0"])):
        rows.append(run(a, name, at_best + extra))
    rows.append(run(a, f"{a.model}'s registry recipe (train.py --model {a.model})", weights))

    start = a.cifar10_checkpoint
    if start is None:
        c10 = run(a, "fast_cnn_s CIFAR-10 (the start)", ["--model", "fast_cnn_s"], dataset="cifar10",
                  data_dir=a.cifar10_dir, split=a.cifar10_split.split(), budget=a.cifar10_budget)
        start = str(c10["folder"] / "best.pt")
        print(f"CIFAR-10 start: {c10['val_acc']:.4f} val after {c10['train_s']:.0f} s -> {start}", flush=True)
    rows.append(run(a, "fast_cnn_s from the CIFAR-10 run", ["--model", "fast_cnn_s", "--initial-checkpoint", start]))
    rows.append(run(a, "fast_cnn_s from scratch", ["--model", "fast_cnn_s"]))

    print(f"\n{runtime.device_name(runtime.pick_device())}; partial CIFAR-100 ({a.train_per_class}/class train, "
          f"{a.val_per_class}/class val); {a.time_budget:g} s of training per arm; {a.model} weights: {a.pretrained_file}\n")
    print("| arm | val accuracy | epochs | train images/s | batch | flags |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arm']} | {r['val_acc'] * 100:.1f}% | {r['epochs']} | {r['images_per_s']:.0f} | {r['batch']} | "
              f"`{r['flags'].replace(a.pretrained_file, 'W')}` |")
    full32 = next(r for r in rows if r["arm"] == "pretrained 32 px")
    top = max(rows[1:-2], key=lambda r: r["val_acc"])
    print(f"\nbest pretrained recipe: {top['arm']} at {top['val_acc'] * 100:.1f}%, "
          f"{(top['val_acc'] - full32['val_acc']) * 100:+.1f} points over the 32-px full fine-tune; "
          f"CIFAR-10 start vs scratch (fast_cnn_s): {(rows[-2]['val_acc'] - rows[-1]['val_acc']) * 100:+.1f} points")


if __name__ == "__main__":
    main()
