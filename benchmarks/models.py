#!/usr/bin/env python
"""Every registry model at equal training time on one split: parameters, train images/s, val and test accuracy.

Each model trains through train.py's own path (its registry defaults, the schedule fitted to
--time-budget, from scratch: timm-backed entries get --no-pretrained), then predict.py's path
writes its submission, which is scored here against the split's solution.csv. `--speed-only`
measures just the training images/s on random batches, in seconds and without data.

    python benchmarks/models.py --data-dir ../shared/data --time-budget 600
    python benchmarks/models.py --dataset cifar100 --data-dir ../shared/data/cifar100-partial \
        --train-per-class 80 --val-per-class 10 --time-budget 180
    python benchmarks/models.py --speed-only 20
"""

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import predict as predict_cli  # noqa: E402
import train as train_cli  # noqa: E402
from cifarkit import models, predict, runtime  # noqa: E402
from cifarkit.errors import HelpFormatter, UserError, cli  # noqa: E402
from cifarkit.train import default_micro_batch, fit, forward_backward, optimizers, recipe_defaults  # noqa: E402


def train_speed(name, seconds, batch_size, device):
    """Training images/s (forward, backward, optimizer step) on one random batch, with train.py's precision,
    input size, layout, chunks (--micro-batch's default) and optimizers for this model (Muon for the *_muon
    entries' filters, SGD otherwise)."""
    size = models.input_size(name, models.entry(name).defaults.get("img_size"))
    amp = models.amp_dtype(name, device)
    model = models.create(name, 10).to(device, memory_format=torch.channels_last)
    recipe = SimpleNamespace(**{**recipe_defaults(name), "batch_size": batch_size})
    opts = optimizers(model, models.classifier_name(model), recipe)
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    step = SimpleNamespace(args=SimpleNamespace(micro_batch=default_micro_batch(device, batch_size)), device=device,
                           dist=SimpleNamespace(world=1), train_model=model, amp=amp, criterion=F.cross_entropy,
                           scaler=torch.amp.GradScaler(device.type, enabled=False))  # what forward_backward reads
    steps, t0 = -2, None  # two warm-up steps, untimed
    while t0 is None or time.perf_counter() - t0 < seconds:
        model.zero_grad(set_to_none=True)
        _, loss = forward_backward(step, x, y)
        for opt in opts:
            opt.step()
        steps += 1
        if steps == 0:
            t0 = time.perf_counter()
    loss.item()
    return steps * batch_size / (time.perf_counter() - t0)


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data-dir", help="folder holding the official CIFAR files")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--time-budget", default="600", help="seconds of training for each model")
    p.add_argument("--models", nargs="+", default=models.list_models(), help="registry (or timm) models to compare")
    p.add_argument("--train-per-class", default=None, help="training images per class (default: the split's)")
    p.add_argument("--val-per-class", default=None, help="validation images per class (default: the split's)")
    p.add_argument("--output", default="runs/bench_models", help="folder for the runs and their shared split")
    p.add_argument("--speed-only", type=float, default=None, metavar="SECONDS",
                   help="only measure training images/s on random batches for SECONDS per model (no data needed)")
    p.add_argument("-b", "--batch-size", type=int, default=256, help="batch size for --speed-only")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    a = p.parse_args()
    for name in a.models:
        models.entry(name)  # an unknown name fails now, not after an hour of training the others
    if a.speed_only is not None:
        if a.speed_only <= 0 or a.batch_size < 1:
            raise UserError("--speed-only must be a positive number of seconds, --batch-size at least 1")
        device = runtime.pick_device(a.device)
        if device.type == "cpu":
            runtime.keep_freed_memory()  # as train.py does
        print(f"training images/s on random batches of {a.batch_size}, {a.speed_only:g} s each, on "
              f"{runtime.device_name(device)}, {torch.get_num_threads()} threads, channels_last, each model's "
              f"own input size, autocast and optimizers (as train.py):")
        for name in a.models:
            print(f"  {name:16s} {train_speed(name, a.speed_only, a.batch_size, device):8,.0f}", flush=True)
        return
    if a.data_dir is None:
        raise UserError("--data-dir is needed to train (or pass --speed-only SECONDS)")
    per_class = [arg for flag, v in (("--train-per-class", a.train_per_class), ("--val-per-class", a.val_per_class))
                 if v is not None for arg in (flag, v)]
    rows = []
    for name in a.models:
        scratch = ["--no-pretrained"] if models.entry(name).timm_name else []
        args = train_cli.parser().parse_args([
            "--model", name, *scratch, "--dataset", a.dataset, "--data-dir", a.data_dir, *per_class,
            "--split-dir", f"{a.output}/split-{a.dataset}", "--time-budget", a.time_budget, "--output", a.output,
            "--device", a.device])
        run = fit(args)
        log = pd.read_csv(run / "log.csv")
        submission = run / "submission.csv"
        predict.run(predict_cli.parser().parse_args(["--checkpoint", str(run / "best.pt"),
                                                     "--submission", str(submission), "--device", a.device]))
        cfg = pd.read_json(run / "config.json", typ="series")
        images = (log["images_per_s"] * log["seconds"]).sum()  # every epoch's images, the last one's cut short too
        rows.append(dict(model=name, params=cfg["params"], amp=cfg["amp"],
                         images_per_s=images / log["seconds"].sum(), epochs=len(log), val_acc=log["val_acc"].max(),
                         test_acc=predict.score(pd.read_csv(submission)["label"].to_numpy(),
                                                Path(cfg["split_dir"]) / "solution.csv")))
    print(f"\n{a.dataset}, {a.time_budget} s of training each, from scratch, on {cfg['device']}; "
          f"test = the written submission scored against solution.csv:")
    print(f"| model | parameters | autocast | train images/s | epochs | val accuracy | test accuracy |\n|{' --- |' * 7}")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['amp']} | {r['images_per_s']:,.0f} | {r['epochs']} | "
              f"{r['val_acc']:.2%} | {r['test_acc']:.2%} |")


if __name__ == "__main__":
    main()
