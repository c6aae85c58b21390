"""Use a trained model: evaluate on a labelled split, predict the hidden test split, write the submission."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import checkpoint, models, runtime, split, submission
from .errors import UserError
from .loader import DeviceLoader, Normalize

BATCH = 512


TTA = {"flip": "average with the horizontally flipped image",
       "flip_shift": "also with the image and its flip shifted by 1 px both ways (6 views)"}


def _views(x, tta):
    yield x
    if tta:
        yield x.flip(3)
    if tta == "flip_shift":
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        h, w = x.shape[-2:]
        for dy, dx in ((0, 0), (2, 2)):
            shifted = padded[..., dy:dy + h, dx:dx + w]
            yield shifted
            yield shifted.flip(3)


def _averaged(model, x, device, amp, tta):
    with runtime.autocast(device, amp):
        return torch.stack([model(v).float() for v in _views(x, tta)]).mean(0)


@torch.no_grad()
def logits(model, loader, device, amp=None, tta=None):
    """Logits for every batch of `loader`, in order; with `tta` ('flip', 'flip_shift'), averaged over views."""
    model.eval()
    return torch.cat([_averaged(model, x, device, amp, tta) for x, _ in loader])


@torch.no_grad()
def evaluate(model, loader, device, amp=None, tta=None, dist=None):
    """Mean cross-entropy and accuracy over a labelled loader (NaN for an empty one). Under torchrun
    each rank scores its share of every batch and the sums are reduced."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, images
    for x, y in loader:
        z = _averaged(model, x, device, amp, tta)
        sums += torch.stack([F.cross_entropy(z, y, reduction="sum"), (z.argmax(1) == y).sum(),
                             torch.tensor(len(y), device=device)]).double()
    if dist is not None:
        dist.sum(sums)
    loss, correct, n = sums.tolist()
    return (loss / n, correct / n) if n else (float("nan"), float("nan"))


def load_model(ckpt, device, channels_last=True):
    """Rebuild the network named in a checkpoint and load its weights; refuse a mismatch clearly."""
    model = models.create(ckpt["model"], ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise UserError(f"checkpoint weights do not fit {ckpt['model']} with {ckpt['num_classes']} classes ({first})") from None
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def run(args):
    """Predict the test split with a checkpoint, write and check the submission; score if asked."""
    path = Path(args.checkpoint) if args.checkpoint else checkpoint.newest(args.output, args.dataset)
    ckpt = checkpoint.load(path)
    if args.dataset and ckpt["dataset"] != args.dataset:
        raise UserError(f"{path} was trained on {ckpt['dataset']}, not {args.dataset}")
    if args.report and ckpt["dataset"] != "cifar10":
        raise UserError("--report compares with CIFAR-10 figures: use a cifar10 run (--dataset cifar10)")
    device = runtime.pick_device(args.device)
    amp = runtime.amp_dtype(device, args.amp)
    split_dir = Path(args.split_dir or ckpt["split_dir"])
    if not (split_dir / "manifest.json").exists():
        split.ensure(ckpt["dataset"], args.data_dir, split_dir, ckpt.get("train_per_class"),
                     ckpt.get("val_per_class"), ckpt.get("seed", 0))
    s = split.load(split_dir, ("test",))
    if s["manifest"]["classes"] != ckpt["classes"]:
        raise UserError(f"{path} was trained with other classes than the split in {split_dir}/")
    model = load_model(ckpt, device)
    norm = Normalize(ckpt["mean"], ckpt["std"], device, channels_last=True, size=ckpt.get("img_size"))

    def predict_images(images):
        loader = DeviceLoader(images, np.zeros(len(images), dtype=np.int64), BATCH, norm, device)
        return logits(model, loader, device, amp, args.tta).argmax(1).cpu().numpy()

    labels = predict_images(s["test_images"])
    classes = ckpt["classes"] if args.label_format == "name" else None
    submission.write(args.submission, labels, len(ckpt["classes"]), classes)
    print(f"wrote {args.submission}: {len(labels)} rows, checked (ids 0..{len(labels) - 1}, "
          f"{'class names' if classes else 'labels 0..' + str(len(ckpt['classes']) - 1)}) "
          f"from {path} ({ckpt['model']}, epoch {ckpt['epoch']}, val acc {ckpt['val_acc']:.4f})")
    if args.score:
        acc = score(labels, split_dir / "solution.csv")
        print(f"test accuracy {acc:.4f} ({int(round(acc * len(labels)))}/{len(labels)}) against {split_dir / 'solution.csv'}")
    if args.report:
        write_report(args, path, ckpt, model, predict_images, s["test_images"], labels, split_dir, device)
    return labels


def write_report(args, path, ckpt, model, predict_images, images, preds, split_dir, device):
    """The CIFAR-10 build-vs-buy report: accuracy with its uncertainty, cost, robustness, a rule-made verdict."""
    from . import report

    truth = _solution(split_dir / "solution.csv", len(preds))
    corrupted = {}
    for name in report.CORRUPTIONS:
        print(f"robustness: {name} ...", flush=True)
        corrupted[name] = float(np.mean(predict_images(report.corrupt(images, name)) == truth))
    speed = report.throughput(predict_images, images)
    log_path = path.parent / "log.csv"
    if not log_path.is_file():
        raise UserError(f"{log_path} missing: the report needs the run's log for its cost and curves")
    run = dict(model=ckpt["model"], params=sum(p.numel() for p in model.parameters()),
               size_bytes=path.stat().st_size, device=ckpt.get("device", "unknown"), log=pd.read_csv(log_path))
    timing = dict(images_per_s=speed, device=runtime.device_name(device), batch=BATCH, tta=args.tta)
    out, summary = report.build_vs_buy(args.report_dir, labels=truth, preds=preds, classes=ckpt["classes"],
                                       corrupted=corrupted, run=run, timing=timing)
    print("\n".join(summary))
    print(f"wrote {out} and its figures")


def _solution(path, rows):
    try:
        truth = pd.read_csv(path)["label"].to_numpy()
    except (OSError, KeyError, pd.errors.ParserError) as e:
        raise UserError(f"cannot score: {path} unreadable ({type(e).__name__})") from None
    if len(truth) != rows:
        raise UserError(f"cannot score: {path} has {len(truth)} rows, predictions {rows}")
    return truth


def score(labels, solution_path):
    return float(np.mean(np.asarray(labels) == _solution(solution_path, len(labels))))
