"""Batches for training and evaluation.

Default: `DeviceLoader` holds the whole split on the training device as one uint8 tensor and cuts,
augments and normalises batches with tensor ops (the airbench approach): no workers, no per-image
Python. `AlbuLoader` is the per-image path (albumentations in DataLoader workers) for recipes
that need it. Both yield normalised float NCHW batches and int64 labels.
"""

import random

import numpy as np
import torch
import torch.nn.functional as F

from .augment import RECIPES, albu_pipeline, batch_augment, cutout


def channel_stats(images):
    """Per-channel mean and std of uint8 NHWC images in [0, 1] units, exact, from 256-bin histograms."""
    mean, std = [], []
    levels = np.arange(256) / 255.0
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        m = (hist * levels).sum() / hist.sum()
        mean.append(float(m))
        std.append(float(np.sqrt((hist * (levels - m) ** 2).sum() / hist.sum())))
    return mean, std


class Normalize:
    """uint8 NCHW -> float NCHW with the training set's mean/std (and channels_last when asked)."""

    def __init__(self, mean, std, device, channels_last=False):
        self.scale = (1 / (255 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, x):
        x = x.float() * self.scale - self.shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def generator(seed, epoch, batch=-1):
    """A generator determined by (seed, epoch, batch) alone, so any batch can be re-made after a resume."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + batch + 1) % 2**63)


class DeviceLoader:
    """The split as one tensor on `device`; a new permutation each epoch; batched augmentation.

    Shuffling and augmentation depend only on (seed, epoch, batch index): `batches(epoch, start)`
    re-makes exactly the batches an interrupted run had not yet seen.
    """

    def __init__(self, images, labels, batch_size, normalize, device, recipe=RECIPES["none"],
                 shuffle=False, drop_last=False, seed=0):
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.size = x.shape[-1]
        self.x = F.pad(x, (recipe.pad,) * 4) if recipe.pad else x  # padded once, not per batch
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.batch_size, self.normalize, self.recipe = batch_size, normalize, recipe
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.batches(0)

    def batches(self, epoch, start=0):
        n = len(self.y)
        order = torch.randperm(n, generator=generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
        order = order.to(self.x.device)
        for i in range(start, len(self)):
            gen = generator(self.seed, epoch, i)
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.normalize(batch_augment(self.x[idx], self.recipe, gen, self.size))
            if self.recipe.cutout:
                x = cutout(x, self.recipe.cutout, gen)
            yield x, self.y[idx]


class _AlbuDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, seed):
        self.images, self.labels, self.transform = images, labels, albu_pipeline()
        self.seed, self.epoch = seed, 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(image=self.images[i])["image"], int(self.labels[i])

    def seed_stream(self, worker=0):
        """Seed the pipeline's random state from (seed, epoch, worker): each worker of each epoch gets its
        own stream, and the same run gets the same streams again (so a resume re-makes the same batches)."""
        seq = np.random.SeedSequence([self.seed, self.epoch, worker])
        self.transform.set_random_state(np.random.default_rng(seq), random.Random(int(seq.generate_state(1)[0])))


def _seed_worker(worker_id):
    torch.utils.data.get_worker_info().dataset.seed_stream(worker_id)


class AlbuLoader:
    """Per-image albumentations in DataLoader workers, then the same normalisation on the device.

    Each epoch's shuffle comes from (seed, epoch) and each worker's augmentation stream from (seed, epoch,
    worker); resuming mid-epoch re-runs and drops the batches already seen (correct, but not free).
    """

    def __init__(self, images, labels, batch_size, normalize, device, workers, seed, drop_last):
        self.gen = torch.Generator()
        self.dataset = _AlbuDataset(images, labels, seed)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last, num_workers=workers,
            generator=self.gen, worker_init_fn=_seed_worker, pin_memory=torch.device(device).type == "cuda",
        )
        self.normalize, self.device, self.seed = normalize, device, seed

    def __len__(self):
        return len(self.loader)

    def batches(self, epoch, start=0):
        self.gen.manual_seed(generator(self.seed, epoch).initial_seed())
        self.dataset.epoch = epoch  # read by the workers, which start when the loop below does
        if self.loader.num_workers == 0:
            self.dataset.seed_stream()
        for i, (x, y) in enumerate(self.loader):
            if i < start:
                continue
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            yield self.normalize(x), y.to(self.device, non_blocking=True)
