"""Use a trained model: evaluate on a labelled split, predict the hidden test split, write the submission."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import checkpoint, models, runtime, split, submission
from .errors import UserError
from .loader import DeviceLoader, Normalize


@torch.no_grad()
def logits(model, loader, device, amp=None, tta=False):
    """Logits for every batch of `loader`, in order; with `tta`, averaged with the flipped images'."""
    model.eval()
    out = []
    for x, _ in loader:
        with runtime.autocast(device, amp):
            z = model(x).float()
            if tta:
                z = (z + model(x.flip(3)).float()) / 2
        out.append(z)
    return torch.cat(out)


def evaluate(model, loader, device, amp=None, tta=False):
    """Mean cross-entropy and accuracy over a labelled loader."""
    z = logits(model, loader, device, amp, tta)
    y = loader.y
    return F.cross_entropy(z, y).item(), (z.argmax(1) == y).float().mean().item()


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
    norm = Normalize(ckpt["mean"], ckpt["std"], device, channels_last=True)
    loader = DeviceLoader(s["test_images"], s["test_labels"], 512, norm, device)
    labels = logits(model, loader, device, amp, args.tta).argmax(1).cpu().numpy()
    classes = ckpt["classes"] if args.label_format == "name" else None
    submission.write(args.submission, labels, len(ckpt["classes"]), classes)
    print(f"wrote {args.submission}: {len(labels)} rows, checked (ids 0..{len(labels) - 1}, "
          f"{'class names' if classes else 'labels 0..' + str(len(ckpt['classes']) - 1)}) "
          f"from {path} ({ckpt['model']}, epoch {ckpt['epoch']}, val acc {ckpt['val_acc']:.4f})")
    if args.score:
        acc = score(labels, split_dir / "solution.csv")
        print(f"test accuracy {acc:.4f} ({int(round(acc * len(labels)))}/{len(labels)}) against {split_dir / 'solution.csv'}")
    return labels


def score(labels, solution_path):
    try:
        truth = pd.read_csv(solution_path)["label"].to_numpy()
    except (OSError, KeyError, pd.errors.ParserError) as e:
        raise UserError(f"cannot score: {solution_path} unreadable ({type(e).__name__})") from None
    if len(truth) != len(labels):
        raise UserError(f"cannot score: {solution_path} has {len(truth)} rows, predictions {len(labels)}")
    return float(np.mean(np.asarray(labels) == truth))
