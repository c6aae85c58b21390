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

from .augment import NOISE, RECIPES, albu_pipeline, alternating_flips, batch_augment, corrupt, cutout, draw, generator


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
    """uint8 NCHW -> float NCHW with the given mean/std (and channels_last when asked); `resize` then
    brings an augmented batch to the model's input size on the device (`--img-size`)."""

    def __init__(self, mean, std, device, channels_last=False, size=None):
        self.scale = (1 / (255 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.channels_last, self.size = channels_last, size

    def _layout(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, x):
        return self._layout(x.float() * self.scale - self.shift)

    def resize(self, x):
        if not self.size or x.shape[-1] == self.size:
            return x
        return self._layout(F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False))


class DeviceLoader:
    """The split as one tensor on `device`; a new permutation each epoch; batched augmentation.

    Shuffling and augmentation depend only on (seed, epoch): `batches(epoch, start)` re-makes
    exactly the batches an interrupted run had not yet seen. `batch_size` is the global batch;
    under torchrun each rank (`dist`) takes its own share of every batch.
    """

    def __init__(self, images, labels, batch_size, normalize, device, recipe=RECIPES["none"],
                 shuffle=False, drop_last=False, seed=0, dist=None):
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.size = x.shape[-1]
        self.x = F.pad(x, (recipe.pad,) * 4, mode=recipe.pad_mode) if recipe.pad else x  # padded once, not per batch
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.batch_size, self.normalize, self.recipe = batch_size, normalize, recipe
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.shard = dist.shard if dist is not None else (lambda n: slice(0, n))
        self.keep = None  # the images this epoch trains on (a bool mask, --skip-easy), or None: all

    @property
    def keep(self):
        return self._keep

    @keep.setter
    def keep(self, mask):
        """Counted once here: the loop reads len() every step."""
        self._keep, self._images = mask, len(self.y) if mask is None else int(mask.sum())

    def __len__(self):
        n = self._images
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def noise_generator(self, epoch, batch):
        """A generator on the data's device, seeded from (seed, epoch, batch) like every other draw."""
        return torch.Generator(self.x.device).manual_seed(generator(self.seed, epoch, batch).initial_seed())

    def __iter__(self):
        return self.batches(0)

    def batches(self, epoch, start=0, with_index=False):
        """The epoch's batches (x, y), from batch `start`; with_index: (x, y, the images' indices).
        With `keep` set, the epoch's draws are made for every image, then the others left out."""
        n = len(self.y)
        gen = generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        plan = torch.cat([order[:, None], draw(self.recipe, n, gen, self.size)], 1)
        if self.recipe.alt_flip:
            plan[:, 3] = alternating_flips(self.seed, epoch, order)
        if self.keep is not None:
            plan = plan[self.keep[order]]
            n = len(plan)
        noisy = plan[:, 6] == NOISE  # on the host: how many noise images each batch has, without a device sync
        plan = plan.to(self.x.device)  # one copy
        for i in range(start, len(self)):
            part = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            mine = self.shard(part.stop - part.start)
            p = plan[part][mine]
            idx = p[:, 0]
            p = p[:, 1:]
            x = batch_augment(self.x[idx], self.recipe, p, self.size)
            if self.recipe.corrupt:
                # Noise pixels only for the global batch's noise images (6% of all in crop_flip_robust), in
                # batch order; each rank takes the draws of its own noise images.
                g = noisy[part]
                draws = torch.randn((int(g.sum()), *x.shape[1:]), generator=self.noise_generator(epoch, i),
                                    device=x.device)
                x = corrupt(x, p[:, 5], p[:, 6], draws[((g.cumsum(0) - 1)[mine][g[mine]]).to(x.device)])
            x = self.normalize(x)
            if self.recipe.cutout:
                x = cutout(x, self.recipe.cutout, p[:, 3], p[:, 4])
            x = self.normalize.resize(x)
            yield (x, self.y[idx], idx) if with_index else (x, self.y[idx])


class EasySkip:
    """--skip-easy P: from epoch 2, each image of the easier half of the training set (the lower loss when it was
    last trained on) sits the epoch out with probability P, so an epoch costs 1 - P/2 of a full one; the harder
    half always trains. In a time budget that buys more epochs of the images still being learnt (the idea of
    InfoBatch and selective backprop, kept simple). The losses come free from each step's outputs and stay on the
    device (no sync a step); each epoch's choice depends on (seed, epoch) and those losses, which last.pt keeps.

    Under torchrun each rank trains only its share of an epoch's images, so with `lowest` (an in-place minimum
    over the ranks) the losses a rank records wait in `pending` until `pool` hands every rank all of them: then
    every rank chooses the same images, and rank 0's last.pt holds every image's loss."""

    def __init__(self, p, seed, lowest=None):
        self.p, self.seed, self.lowest = p, seed, lowest
        self.pending = None  # under torchrun, this rank's losses since the last pool (infinite: none)

    def choose(self, loss, epoch):
        """The epoch's bool mask on the host, or None (all images) in epoch 1 and when P is 0."""
        if epoch < 2 or not self.p:
            return None
        n = len(loss)
        rank = torch.empty(n, dtype=torch.int64)
        rank[loss.cpu().argsort(stable=True)] = torch.arange(n)
        stay = torch.rand(n, generator=generator(self.seed, epoch, 10**6)) < 1 - self.p
        return (rank >= n // 2) | stay

    def record(self, loss, idx, out, labels):
        """Each image's cross-entropy from this step's outputs, in place (never seen: infinite, so hard)."""
        self._into(loss)[idx] = F.cross_entropy(out.detach().float(), labels, reduction="none")

    def pool(self, loss):
        """Every rank's recorded losses into `loss` on every rank (each image trains on one rank an epoch), at the
        epoch's end and before each mid-epoch save: a collective call, made by every rank at the same step."""
        if self.lowest is None:
            return
        pending = self._into(loss)
        self.lowest(pending)
        loss.copy_(torch.where(torch.isfinite(pending), pending, loss))  # no mask indexing: no host sync on a GPU
        pending.fill_(float("inf"))

    def _into(self, loss):
        """Where a step's losses go: `loss` itself in one process, this rank's pending ones under torchrun."""
        if self.lowest is None:
            return loss
        if self.pending is None:
            self.pending = torch.full_like(loss, float("inf"))
        return self.pending


class _AlbuDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, seed):
        self.images, self.labels, self.transform = images, labels, albu_pipeline()
        self.seed, self.epoch = seed, 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        """Image i's augmentation, seeded from (seed, epoch, i): the same whichever worker, process or
        resume makes it."""
        seq = np.random.SeedSequence([self.seed, self.epoch, i])
        self.transform.set_random_state(np.random.default_rng(seq), random.Random(int(seq.generate_state(1)[0])))
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


class AlbuLoader:
    """Per-image albumentations in DataLoader workers, then the same normalisation on the device.

    The shuffle comes from (seed, epoch) and each image's augmentation from (seed, epoch, image), so the
    batches do not depend on the number of workers or processes (each rank loads its share of every
    global batch), and a resume starts at its batch without re-making the others.
    """

    def __init__(self, images, labels, batch_size, normalize, device, workers, seed, drop_last, dist=None):
        self.dataset = _AlbuDataset(images, labels, seed)
        self.batch_size, self.drop_last, self.workers = batch_size, drop_last, workers
        self.normalize, self.device, self.seed = normalize, device, seed
        self.shard = dist.shard if dist is not None else (lambda n: slice(0, n))

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch, start=0):
        order = torch.randperm(len(self.dataset), generator=generator(self.seed, epoch))
        plan = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(start, len(self))]
        self.dataset.epoch = epoch  # read by the workers, which start with the loop below
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[b[self.shard(len(b))].tolist() for b in plan], num_workers=self.workers,
            pin_memory=torch.device(self.device).type == "cuda")
        for x, y in loader:
            x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            yield self.normalize.resize(self.normalize(x)), y.to(self.device, non_blocking=True)
