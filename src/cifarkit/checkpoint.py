"""Checkpoints: plain dicts of tensors and numbers, saved atomically, loaded with weights_only=True."""

import pickle
from pathlib import Path

import torch

from .atomic import atomic_path
from .errors import UserError

REQUIRED = ("model", "num_classes", "classes", "mean", "std", "dataset", "state_dict")


def save(path, payload):
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _read(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: refused, it holds pickled objects beyond weights (unsafe to load)") from None
    except Exception as e:  # truncated zip, not a torch file, ...
        raise UserError(f"{path}: not a readable checkpoint, truncated or corrupted ({type(e).__name__})") from None


def _ours(ckpt):
    return isinstance(ckpt, dict) and all(k in ckpt for k in REQUIRED)


def load(path):
    """Load a checkpoint without running code; a file carrying pickled objects is refused."""
    ckpt = _read(path)
    if not _ours(ckpt):
        raise UserError(f"{path}: not a cifarkit checkpoint (needs {', '.join(REQUIRED)})")
    return ckpt


def initial(path):
    """Weights to start a run from (--initial-checkpoint): (state dict, our checkpoint or None). One of
    ours brings its model name, classes, normalisation and input size; any timm/torchvision state
    dict (.pth or .safetensors) is read as pretrained weights are."""
    from .models import read_weights

    if Path(path).suffix != ".safetensors":
        ckpt = _read(path)
        if _ours(ckpt):
            return ckpt["state_dict"], ckpt
    return read_weights(path), None


def newest(output="runs", dataset=None, name="best.pt"):
    """The newest run's checkpoint under `output`, optionally only runs of one dataset."""
    found = sorted(Path(output).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        if dataset is None or load(path)["dataset"] == dataset:
            return path
    which = f"{dataset} " if dataset else ""
    raise UserError(f"no {which}run with {name} under {output}/: train one first (python train.py) or pass --checkpoint")
