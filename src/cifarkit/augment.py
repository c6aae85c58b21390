"""Augmentation recipes: one table. Batched tensor ops for the on-device loader, albumentations per image.

The batched ops act on a whole uint8 batch already on the training device (no per-image Python):
random crop + flip = one gather from the split padded once by the loader, with a per-image offset
and mirror; cutout = a per-image square zeroed after normalisation (zero is the training-set mean);
corruptions (robustness training) = noise, blur, JPEG, brightness and contrast at random strengths,
one kind per image, in pixel units before normalisation. Their random choices are drawn for a whole
epoch at once (`draw`); the noise pixels come from a generator of (seed, epoch, batch), drawn for
the whole global batch so that every rank slices the same values.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Recipe:
    help: str
    pad: int = 0
    flip: float = 0.0
    cutout: int = 0
    albu: bool = False  # per-image albumentations pipeline through a DataLoader
    corrupt: float = 0.0  # share of images given one random corruption (CORRUPTIONS)
    alt_flip: bool = False  # each image's mirror drawn once, then inverted every other epoch (alternating_flips)
    pad_mode: str = "constant"  # how the loader pads for crops: zeros, or "reflect" (the border mirrored)


RECIPES = {
    "none": Recipe("no augmentation"),
    "flip": Recipe("horizontal flip", flip=0.5),
    "crop_flip": Recipe("random crop (pad 4) + horizontal flip, batched on the device", pad=4, flip=0.5),
    "shift_altflip": Recipe("random shift of up to 2 px (border reflected) + horizontal flips that alternate by "
                            "epoch (airbench's: every image seen both ways in any two epochs), batched on the device",
                            pad=2, flip=0.5, alt_flip=True, pad_mode="reflect"),
    "crop_flip_cutout": Recipe("crop_flip + one 12x12 cutout square per image", pad=4, flip=0.5, cutout=12),
    "crop_flip_robust": Recipe("crop_flip + one random corruption on 30% of the images (Gaussian noise, blur, JPEG, "
                               "brightness, contrast at random strengths; for degraded inputs), batched on the "
                               "device", pad=4, flip=0.5, corrupt=0.3),
    "albu": Recipe("albumentations per image: shift/scale/rotate, flip, colour jitter, coarse dropout", albu=True),
}


def recipe(name):
    from .errors import UserError

    if name not in RECIPES:
        raise UserError(f"unknown augmentation {name!r}: choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def generator(seed, epoch, batch=-1):
    """A generator determined by (seed, epoch, batch) alone, so any batch can be re-made after a resume."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch + 1) % 2**63)


def draw(r, n, gen, size=32):
    """Every random choice of an epoch at once, one row per image: crop offset (dy, dx), mirror,
    cutout centre (cy, cx), corruption kind (0 none, else 1 + its index in CORRUPTIONS) and strength
    (0..STEPS). Drawn on the CPU from (seed, epoch) and copied to the device once per epoch, so a step
    never waits on a host-to-device copy, and any rank or resume can re-draw them."""
    p = torch.zeros(n, 7, dtype=torch.int64)
    if r.pad:
        p[:, :2] = torch.randint(0, 2 * r.pad + 1, (n, 2), generator=gen)
    if r.flip:
        p[:, 2] = torch.rand(n, generator=gen) < r.flip
    if r.cutout:
        p[:, 3:5] = torch.randint(0, size, (n, 2), generator=gen)
    if r.corrupt:
        hit = torch.rand(n, generator=gen) < r.corrupt
        p[:, 5] = torch.where(hit, torch.randint(1, len(CORRUPTIONS) + 1, (n,), generator=gen), 0)
        p[:, 6] = torch.randint(0, STEPS + 1, (n,), generator=gen)
    return p


def alternating_flips(seed, epoch, order):
    """Mirror flags for the images in `order`: each image's drawn once from the seed, inverted in even epochs.
    Random flips show 25% of the images one way only in two epochs; these show every image both ways."""
    first = torch.rand(len(order), generator=generator(seed, 0)) < 0.5
    return (first[order] ^ (epoch % 2 == 0)).long()


def crop_flip(x, size, dy, dx, mirror):
    """Cut one size x size window per image from a padded batch at offset (dy, dx), mirrored where
    `mirror`: one gather over the flattened image plane (the flip is folded into the column index),
    about 8x faster on CPU than indexing all four dimensions."""
    n, c, _, wp = x.shape
    j = torch.arange(size, device=x.device)
    cols = dx[:, None] + torch.where(mirror[:, None].bool(), size - 1 - j, j)
    rows = dy[:, None] + j
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, size * size)
    return x.flatten(2).gather(2, index.expand(n, c, size * size)).view(n, c, size, size)


def cutout(x, size, cy, cx):
    """Zero one size x size square per image centred at (cy, cx) (clipped by the border)."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    dy = ys - cy[:, None, None] + size // 2
    dx = xs - cx[:, None, None] + size // 2
    inside = (dy >= 0) & (dy < size) & (dx >= 0) & (dx < size)
    return x.masked_fill(inside[:, None], 0)


def batch_augment(x, r, p, size=32):
    """Crop and flip a uint8 batch that the loader padded by r.pad, with its rows `p` of draw()."""
    if r.pad or r.flip:
        return crop_flip(x, size, p[:, 0], p[:, 1], p[:, 2])
    return x


# --- corruptions for robustness training ------------------------------------------------------
# Each maps a strength u in [0, 1] to its parameter in plain units (pixel levels of 0..255, pixels,
# JPEG quality). The ranges cover the build-vs-buy report's fixed severities (noise std 15 levels,
# blur sigma 1 px, brightness +64 levels, contrast x0.6, JPEG quality 30) from mild to past them.
STEPS = 1000  # strengths are drawn as integers 0..STEPS (the plan tensor is int64)
CORRUPTIONS = {
    "noise": lambda u: 25 * u,  # Gaussian noise, std in pixel levels
    "blur": lambda u: 0.4 + 1.2 * u,  # Gaussian blur, sigma in pixels
    "jpeg": lambda u: 90 - 70 * u,  # JPEG quality (rounded to tens, one encoder call per quality)
    "brightness": lambda u: 140 * u - 70,  # pixel levels added
    "contrast": lambda u: 1 - 0.55 * u,  # every pixel value multiplied by this
}
NOISE = 1 + list(CORRUPTIONS).index("noise")  # its kind in draw()'s plan


def gaussian_blur(x, sigma, radius=3):
    """Blur each image of a float NCHW batch with its own sigma (pixels): a separable Gaussian as two
    grouped convolutions (torchvision's gaussian_blur takes one sigma per call)."""
    n, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    y = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    y = F.conv2d(F.conv2d(y, k[:, None, None, :], groups=n * c), k[:, None, :, None], groups=n * c)
    return y.view(n, c, h, w)


def corrupt(x, kind, strength, noise):
    """Corrupt a uint8 NCHW batch as `draw` chose (kind 0 = leave the image alone); returns float pixel
    levels in [0, 255]. `noise`: standard normal values, one image's worth for each image of kind noise, in
    batch order (drawn for those alone, not for the whole batch)."""
    from torchvision.transforms.v2.functional import jpeg

    x = x.float()
    u = strength.to(x.dtype) / STEPS
    names = list(CORRUPTIONS)
    for k, name in enumerate(names, 1):
        rows = (kind == k).nonzero().squeeze(1)
        if not len(rows):
            continue
        a, v = x[rows], CORRUPTIONS[name](u[rows])
        if name == "noise":
            a = a + v.view(-1, 1, 1, 1) * noise
        elif name == "blur":
            a = gaussian_blur(a, v)
        elif name == "jpeg":
            q = (v / 10).round() * 10
            a8 = a.round().clamp(0, 255).to(torch.uint8)
            for quality in q.unique().tolist():
                same = q == quality
                a8[same] = jpeg(a8[same], int(quality))
            a = a8.float()
        elif name == "brightness":
            a = a + v.view(-1, 1, 1, 1)
        else:
            a = a * v.view(-1, 1, 1, 1)
        x[rows] = a.clamp(0, 255)
    return x


def mixer(mixup, cutmix, label_smoothing, num_classes, seed):
    """timm's Mixup/CutMix as `mix(x, y, epoch, batch) -> (x, soft targets)`, or None when both are off.

    timm draws from numpy's global generator; it is seeded from (seed, epoch, batch) for each batch
    and put back after, so a mixed batch is re-made exactly after a resume and nothing else shifts.
    """
    if not (mixup or cutmix):
        return None
    import numpy as np
    from timm.data import Mixup

    m = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes)

    def mix(x, y, epoch, batch):
        outside = np.random.get_state()
        np.random.seed(generator(seed, epoch, batch).initial_seed() % 2**32)
        try:
            return m(x, y)
        finally:
            np.random.set_state(outside)

    return mix


def albu_pipeline():
    """The per-image recipe, for transforms that have no cheap batched form."""
    import albumentations as A

    return A.Compose([
        A.Affine(translate_px=(-4, 4), scale=(0.9, 1.1), rotate=(-15, 15), p=0.7),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(8, 8), hole_width_range=(8, 8), p=0.5),
    ])
