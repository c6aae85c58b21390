"""Robustness training: the batched corruptions, their stated strengths, and their determinism."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2.functional import gaussian_blur as tv_blur
from torchvision.transforms.v2.functional import jpeg as tv_jpeg

from cifarkit.augment import CORRUPTIONS, RECIPES, STEPS, corrupt, draw, gaussian_blur
from cifarkit.loader import DeviceLoader, Normalize, channel_stats

KIND = {name: k for k, name in enumerate(CORRUPTIONS, 1)}


def images(n=8, value=None, seed=0):
    if value is not None:
        return torch.full((n, 3, 32, 32), value, dtype=torch.uint8)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def apply(x, name, u):
    kind = torch.full((len(x),), KIND[name])
    strength = torch.full((len(x),), int(u * STEPS))
    return corrupt(x, kind, strength, torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("u", [0.0, 0.5, 1.0])
def test_every_corruption_keeps_shape_dtype_and_range(name, u):
    x = images()
    out = apply(x, name, u)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, apply(x, name, u))  # the same inputs, the same output


def test_kind_zero_leaves_images_alone_and_only_the_chosen_rows_change():
    x = images()
    kind = torch.tensor([0, 1, 0, 2, 0, 3, 4, 5])
    out = corrupt(x, kind, torch.full((8,), STEPS), torch.randn(1, 3, 32, 32))  # noise for its one image
    same = (out == x.float()).flatten(1).all(1)
    assert same.tolist() == [True, False, True, False, True, False, False, False]


def test_strengths_are_the_stated_plain_units():
    gray = images(value=128)
    noisy = apply(gray, "noise", 1.0) - 128  # std 25 pixel levels at full strength
    assert noisy.std().item() == pytest.approx(25, rel=0.03)
    assert torch.allclose(apply(images(value=100), "brightness", 1.0), torch.full((8, 3, 32, 32), 170.0))
    assert torch.allclose(apply(images(value=100), "brightness", 0.0), torch.full((8, 3, 32, 32), 30.0))
    assert torch.allclose(apply(images(value=200), "contrast", 1.0), torch.full((8, 3, 32, 32), 90.0))
    assert torch.equal(apply(images(value=200), "contrast", 0.0), images(value=200).float())
    assert CORRUPTIONS["jpeg"](1.0) == 20 and CORRUPTIONS["blur"](0.0) == pytest.approx(0.4)


def test_blur_matches_torchvision_with_each_images_own_sigma():
    x = images(2).float()
    ours = gaussian_blur(x, torch.tensor([0.6, 1.4]))
    for i, sigma in enumerate((0.6, 1.4)):
        theirs = tv_blur(x[i:i + 1], kernel_size=[7, 7], sigma=[sigma, sigma])
        assert torch.allclose(ours[i:i + 1], theirs, atol=1e-3)


def test_jpeg_is_torchvisions_encoder_at_the_stated_quality():
    x = images(4)
    assert torch.equal(apply(x, "jpeg", 1.0), tv_jpeg(x, 20).float())  # u = 1: quality 20
    assert not torch.equal(apply(x, "jpeg", 0.0), apply(x, "jpeg", 1.0))


def test_robust_recipe_corrupts_three_images_in_ten_with_every_kind():
    p = draw(RECIPES["crop_flip_robust"], 4000, torch.Generator().manual_seed(0))
    kinds = np.bincount(p[:, 5].numpy(), minlength=len(CORRUPTIONS) + 1)
    assert 0.67 < kinds[0] / 4000 < 0.73 and (kinds[1:] > 180).all()
    assert 0 <= p[:, 6].min() and p[:, 6].max() <= STEPS


def loader(seed=3, dist=None):
    data = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    norm = Normalize(*channel_stats(data), "cpu")
    return DeviceLoader(data, np.arange(40) % 10, 16, norm, "cpu", RECIPES["crop_flip_robust"], shuffle=True,
                        seed=seed, dist=dist)


def test_robust_batches_come_from_seed_epoch_and_batch_alone():
    a, b = list(loader().batches(2)), list(loader().batches(2))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert not torch.equal(a[0][0], next(loader(seed=4).batches(2))[0])
    resumed = list(loader().batches(2, start=1))  # a resume re-makes batch 1 without batch 0
    assert torch.equal(resumed[0][0], a[1][0])
    plain = DeviceLoader(np.zeros((40, 32, 32, 3), np.uint8), np.zeros(40), 16,
                         Normalize([0.5] * 3, [0.25] * 3, "cpu"), "cpu", RECIPES["crop_flip"], shuffle=True, seed=3)
    assert len(list(plain.batches(2))) == len(a)


def test_ranks_slice_the_same_corrupted_global_batch():
    from cifarkit.runtime import Dist

    whole = list(loader().batches(1))
    shares = [list(loader(dist=Dist(rank, 2)).batches(1)) for rank in range(2)]
    for i, (x, _) in enumerate(whole):
        assert torch.allclose(torch.cat([s[i][0] for s in shares]), x, atol=1e-5)
