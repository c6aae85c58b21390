"""Augmentation recipes: one table. Batched tensor ops for the on-device loader, albumentations per image.

The batched ops act on a whole uint8 batch already on the training device (no per-image Python):
random crop + flip = one gather from the split padded once by the loader, with a per-image offset
and mirror; cutout = a per-image square zeroed after normalisation (zero is the training-set mean).
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Recipe:
    help: str
    pad: int = 0
    flip: float = 0.0
    cutout: int = 0
    albu: bool = False  # per-image albumentations pipeline through a DataLoader


RECIPES = {
    "none": Recipe("no augmentation"),
    "flip": Recipe("horizontal flip", flip=0.5),
    "crop_flip": Recipe("random crop (pad 4) + horizontal flip, batched on the device", pad=4, flip=0.5),
    "crop_flip_cutout": Recipe("crop_flip + one 12x12 cutout square per image", pad=4, flip=0.5, cutout=12),
    "albu": Recipe("albumentations per image: shift/scale/rotate, flip, colour jitter, coarse dropout", albu=True),
}


def recipe(name):
    from .errors import UserError

    if name not in RECIPES:
        raise UserError(f"unknown augmentation {name!r}: choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def crop_flip(x, size, pad, flip, gen):
    """Cut one size x size window per image from a batch already padded by `pad`, at a random offset,
    mirrored with probability `flip`: one gather over the flattened image plane (the flip is folded
    into the column index), about 8x faster on CPU than indexing all four dimensions."""
    n, c, _, wp = x.shape
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    mirror = (torch.rand(n, generator=gen) < flip).to(dev)
    j = torch.arange(size, device=dev)
    cols = dx[:, None] + torch.where(mirror[:, None], size - 1 - j, j)
    rows = dy[:, None] + j
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, size * size)
    return x.flatten(2).gather(2, index.expand(n, c, size * size)).view(n, c, size, size)


def cutout(x, size, gen):
    """Zero one size x size square per image (centre anywhere, so squares may be clipped by the border)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen).to(x.device)
    cx = torch.randint(0, w, (n,), generator=gen).to(x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    dy = ys - cy[:, None, None] + size // 2
    dx = xs - cx[:, None, None] + size // 2
    inside = (dy >= 0) & (dy < size) & (dx >= 0) & (dx < size)
    return x.masked_fill(inside[:, None], 0)


def batch_augment(x, r, gen, size=32):
    """Crop and flip a uint8 batch that the loader padded by r.pad (cutout comes after normalisation)."""
    if r.pad or r.flip:
        return crop_flip(x, size, r.pad, r.flip, gen)
    return x


def albu_pipeline():
    """The per-image recipe, for transforms that have no cheap batched form."""
    import albumentations as A

    return A.Compose([
        A.Affine(translate_px=(-4, 4), scale=(0.9, 1.1), rotate=(-15, 15), p=0.7),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 8), hole_width_range=(8, 8), p=0.5),
    ])
