#!/usr/bin/env python
"""Train a CIFAR classifier: `python train.py --model resnet18` (see --help)."""

import argparse

from cifarkit import models, train
from cifarkit.augment import RECIPES
from cifarkit.errors import HelpFormatter, UserError, cli
from cifarkit.split import add_split_args


def parser():
    p = argparse.ArgumentParser(
        description="Train a CIFAR classifier on the Kaggle-style split (built on first use). "
                    "Unset flags take the model's own defaults (see --list-models).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="resnet18",
                   help="a registry name (see --list-models) or any timm model name")
    p.add_argument("--model-kwargs", nargs="+", default=None, metavar="KEY=VALUE",
                   help="change a model's shape without a new function (Python literals, quoted for the shell), "
                        "e.g. depth=3 'widths=(32,64,128,256)'; --list-models shows each model's keys; stored in "
                        "the checkpoint, so predict rebuilds the same network")
    p.add_argument("--list-models", action="store_true", help="list our models with their defaults and exit")
    add_split_args(p)
    p.add_argument("--seed", type=int, default=0,
                   help="initialisation, batch order and augmentation draws; the split stays --split-seed's, so "
                        "runs of several seeds share one val set and their figures and blends compare")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from ImageNet weights (default: yes for timm models, which download them; "
                        "no for scratch models)")
    p.add_argument("--pretrained-file", default=None,
                   help="local ImageNet weights (.pth/.safetensors, timm or torchvision layout; a file "
                        "without the classifier is fine): use this offline")
    p.add_argument("--initial-checkpoint", default=None, metavar="PATH",
                   help="start from these weights: one of our checkpoints (say a CIFAR-10 run's best.pt for a "
                        "CIFAR-100 run; its normalisation comes along) or any timm/torchvision state dict; a "
                        "classifier for other classes is replaced")
    p.add_argument("--img-size", type=int, default=None, metavar="N",
                   help="resize every batch to N x N px on the device before the model (train and predict); "
                        "ImageNet weights pay off at 64-128 px and more, at 4-16x the compute of 32 px "
                        "(default: the model's; a fixed-size model's own)")
    p.add_argument("--norm-stats", choices=["auto", "split"], default="auto",
                   help="auto: normalise with the starting weights' own mean/std (ImageNet's for pretrained "
                        "models), the training split's for scratch nets; split: always the split's")
    p.add_argument("--freeze-epochs", type=int, default=None, metavar="N",
                   help="train the classifier alone for the first N epochs (backbone held), then everything "
                        "(default: the model's when starting from weights, see --list-models; 0 from scratch)")
    p.add_argument("--frozen-stages", type=int, default=None, metavar="N",
                   help="hold the first N of the network's timm layer groups (the stem, then one per stage) as "
                        "they start, weights and batch-norm statistics, for the whole run: no backward pass "
                        "through them, so each step is cheaper (default: the model's when starting from "
                        "weights; 0 from scratch)")
    p.add_argument("--backbone-lr-scale", type=float, default=None, metavar="F",
                   help="learning rate of the layers outside the classifier = --lr x F, for fine-tuning "
                        "pretrained weights gently (default: the model's when starting from weights, see --list-models; "
                        "1 from scratch)")
    p.add_argument("--mixup", type=float, default=None, metavar="ALPHA",
                   help="mixup with Beta(ALPHA, ALPHA) mixing (timm's Mixup, soft-target loss; 0 = off; "
                        "default: the model's)")
    p.add_argument("--cutmix", type=float, default=None, metavar="ALPHA",
                   help="CutMix with Beta(ALPHA, ALPHA) box areas (with --mixup too, one of the two per "
                        "batch; 0 = off; default: the model's)")
    p.add_argument("--skip-easy", type=float, default=None, metavar="P",
                   help="from epoch 2, each image of the easier half (the lower loss when last trained on) sits "
                        "the epoch out with probability P, so an epoch costs 1 - P/2: more epochs of the images "
                        "still being learnt in a --time-budget (default 0: off; measured in README's speed recipe)")
    p.add_argument("--train-on-val", action="store_true",
                   help="the final fit: train on train + val (every labelled image) for the fixed schedule; no "
                        "validation figure exists, and best.pt holds the last epoch's weights")
    p.add_argument("--pseudo-labels", default=None, metavar="CHECKPOINT",
                   help="add the test images this trained model labels confidently to the training set, with its "
                        "labels (transductive: some competitions forbid it)")
    p.add_argument("--pseudo-threshold", type=float, default=0.9, metavar="P",
                   help="confidence (top class probability) a test image needs for --pseudo-labels")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the model's)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training; the schedule is fitted to it and --epochs is ignored")
    p.add_argument("-b", "--batch-size", type=int, default=None,
                   help="global batch size: under torchrun it is split over the processes, so --lr needs no "
                        "change (default: the model's; on a CPU its cpu_batch_size where --list-models shows one)")
    p.add_argument("--micro-batch", type=int, default=None, metavar="M",
                   help="compute each batch's gradients in chunks of at most M images, then take one step: the "
                        "same recipe in less memory (batch norm sees a chunk at a time); 0: the batch whole "
                        f"(default: {train.CPU_MICRO_BATCH} on a CPU for larger batches, else whole)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate, SGD+Nesterov: the classifier's, the other layers' x --backbone-lr-scale; "
                        "for a Muon model (fast_cnn_muon) Muon's, for the conv filters, its SGD groups keeping "
                        "their per-image rates (default: the model's; on a CPU its cpu_lr where it has one, "
                        "unless -b asks for another batch than its cpu_batch_size)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay; for a Muon model per image of the batch (default: the model's)")
    p.add_argument("--label-smoothing", type=float, default=None, help="label smoothing (default: the model's)")
    p.add_argument("--model-ema", dest="ema", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate and save an exponential moving average of the weights (default: the model's)")
    p.add_argument("--aug", choices=list(RECIPES), default=None,
                   help="augmentation: " + "; ".join(f"{k}: {r.help}" for k, r in RECIPES.items()).replace("%", "%%")
                        + " (default: the model's, crop_flip for all of ours)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA, and on CPUs with native bf16)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (faster on CUDA and on this project's CPUs)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for --aug albu")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: batch-norm statistics over the whole global batch "
                        "(SyncBatchNorm) instead of each process's share")
    p.add_argument("--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="compile the model with torch.compile (alone: the inductor backend); for GPUs, where "
                        "it pays after a minute of compiling")
    p.add_argument("--resume", nargs="?", const="newest", default=None, metavar="PATH",
                   help="continue a run from its last.pt (a file or run folder; alone: the newest run under "
                        "--output) with its own settings; --epochs or --time-budget may lengthen it, other "
                        "flags are refused")
    p.add_argument("--checkpoint-interval", type=int, default=0, metavar="STEPS",
                   help="also save last.pt every STEPS training steps (0: only at epoch ends)")
    p.add_argument("--output", default="runs", help="folder for run folders")
    p.add_argument("--experiment", default=None,
                   help="run folder name (default: <dataset>-<model>-<date-time>)")
    return p


@cli
def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.list_models:
        for name in models.list_models():
            e = models.MODELS[name]
            print(f"{name:16s} {'ImageNet-pretrained' if e.timm_name else 'scratch':20s} "
                  + " ".join(f"{k}={v}" for k, v in e.defaults.items())
                  + "".join(f"\n{'':37s}--model-kwargs: " + " ".join(f"{k}={v!r}" for k, v in knobs.items())
                            for knobs in [models.model_kwargs_of(name)[0]] if knobs))
        print("any other timm model name works too (pretrained, with resnet18's defaults)")
        return
    if args.resume:
        other = [k for k, v in vars(args).items()
                 if v != p.get_default(k) and k not in ("resume", "output", *train.EXTENDABLE)]
        if other:
            raise UserError(f"--resume continues a run with its own settings: --{other[0].replace('_', '-')} "
                            f"cannot change it (only --epochs or --time-budget, to lengthen it)")
    train.fit(args)


if __name__ == "__main__":
    main()
