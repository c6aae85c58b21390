#!/usr/bin/env python
"""Write submissions/submission.csv from the newest run: `python predict.py` (see --help)."""

import argparse

from cifarkit import predict
from cifarkit.errors import HelpFormatter, cli


def parser():
    p = argparse.ArgumentParser(
        description="Predict the hidden test split with a trained checkpoint and write a checked Kaggle "
                    "submission (id,label).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="PATH",
                   help="checkpoint(s) to use (default: newest run's best.pt); several: an ensemble that averages "
                        "their class probabilities, each with its own normalisation, input size and --tta")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default=None,
                   help="use the newest run of this dataset (default: the newest run of any)")
    p.add_argument("--output", default="runs", help="folder holding the run folders")
    p.add_argument("--split-dir", default=None, help="split folder (default: the one the run trained on)")
    p.add_argument("--data-dir", default="data", help="official CIFAR files, if the split must be rebuilt")
    p.add_argument("--submission", default="submissions/submission.csv", help="CSV to write")
    p.add_argument("--label-format", choices=["index", "name"], default="index",
                   help="integer class labels, or class names (Kaggle CIFAR-10 style)")
    p.add_argument("--tta", nargs="?", const=predict.TTA_DEFAULT, default=None, choices=list(predict.TTA),
                   help=f"test-time augmentation: --tta alone = {predict.TTA_DEFAULT}; "
                        + "; ".join(f"{k}: {v}" for k, v in predict.TTA.items()))
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: predict the hidden test split and write the submission; val: score the validation "
                        "split instead (choose ensemble members without touching the test set)")
    p.add_argument("--save-probs", default=None, metavar="CSV",
                   help="also write the class probabilities (id, one column per class) for blending elsewhere")
    p.add_argument("--score", action="store_true",
                   help="also print accuracy against the split's solution.csv (and record it for python -m cifarkit.runs)")
    p.add_argument("--report", action="store_true",
                   help="CIFAR-10: also write the build-vs-buy report (accuracy with 95%% CI and test against the "
                        "vendor's 70%%, gap to the state of the art, per-class accuracy, confusion matrix, cost, "
                        "robustness under corruptions, recommendation) with its figures")
    p.add_argument("--report-dir", default="reports", help="where --report writes")
    p.add_argument("--baseline", default=None, metavar="CHECKPOINT",
                   help="with --report: another model (say one trained on clean images only) measured on the same "
                        "clean and corrupted test images, side by side; a written rule says which of the two to ship")
    p.add_argument("--submit", default=None, metavar="COMPETITION",
                   help="upload the checked submission to this Kaggle competition (needs the kaggle extra and "
                        "credentials; see python -m cifarkit.kaggle --help)")
    p.add_argument("-m", "--message", default="cifarkit", help="the submission's description on Kaggle")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA, and on CPUs with native bf16)")
    return p


@cli
def main(argv=None):
    predict.run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
