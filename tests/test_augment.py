import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarkit import predict
from cifarkit.augment import RECIPES, Recipe, crop_flip, cutout, draw
from cifarkit.loader import AlbuLoader, DeviceLoader, Normalize, channel_stats
from cifarkit.predict import logits


def batch(n=64):
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def crop(padded, pad, flip, seed, size=32):
    p = draw(Recipe("test", pad=pad, flip=flip), len(padded), torch.Generator().manual_seed(seed), size)
    return crop_flip(padded, size, p[:, 0], p[:, 1], p[:, 2])


def test_crop_keeps_shape_dtype_and_stays_inside_padded_image():
    x = batch()
    padded = F.pad(x, (4, 4, 4, 4))
    out = crop(padded, 4, 0.0, 1)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(len(x)):  # each output is exactly one 32x32 window of its own padded image
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # C, 9, 9, 32, 32
        match = (windows == out[i][:, None, None]).all(dim=(0, 3, 4))
        assert match.any(), f"image {i} is not a window of its padded source"


def test_crop_offsets_cover_the_range():
    x = torch.zeros(2000, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 0, 0] = 255  # mark the top-left pixel; where it lands tells the offset
    out = crop(F.pad(x, (4, 4, 4, 4)), 4, 0.0, 2)
    pos = [tuple(np.argwhere(o[0].numpy() == 255)[0]) if (o == 255).any() else None for o in out]
    seen = {p for p in pos if p is not None}
    assert seen == {(r, c) for r in range(5) for c in range(5)}  # shifts 0..4 keep the marker visible


def test_flip_rate_and_content():
    x = batch(4000)
    out = crop(x, 0, 0.5, 3)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(500, 3, 32, 32)
    p = draw(Recipe("test", cutout=8), 500, torch.Generator().manual_seed(4))
    out = cutout(x, 8, p[:, 3], p[:, 4])
    zeros = (out == 0).all(1).flatten(1).sum(1)
    assert zeros.max().item() == 64 and zeros.min().item() > 0  # full 8x8, or clipped at the border
    assert ((out == 0) | (out == 1)).all()


def loader(seed=0, recipe="crop_flip", n=100, bs=16):
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(n) % 10
    mean, std = channel_stats(images)
    norm = Normalize(mean, std, "cpu")
    return images, labels, DeviceLoader(images, labels, bs, norm, "cpu", RECIPES[recipe], shuffle=True, seed=seed)


def test_loader_covers_every_image_once_per_epoch_with_labels_aligned():
    images, labels, dl = loader(recipe="none", n=100, bs=16)
    mean, std = channel_stats(images)
    seen = []
    for x, y in dl:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        raw = (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)) * 255
        raw = raw.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for img, lab in zip(raw, y.numpy()):
            idx = int(np.flatnonzero((images == img).all(axis=(1, 2, 3)))[0])
            assert labels[idx] == lab
            seen.append(idx)
    assert sorted(seen) == list(range(100))


def test_same_seed_same_batches_other_seed_other_batches():
    a = [x for x, _ in loader(seed=7)[2]]
    b = [x for x, _ in loader(seed=7)[2]]
    c = [x for x, _ in loader(seed=8)[2]]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_channel_stats_exact():
    images = np.random.default_rng(1).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    ref = images.reshape(-1, 3) / 255.0
    assert np.allclose(mean, ref.mean(0)) and np.allclose(std, ref.std(0))


def test_tta_views_flip_and_shift():
    from cifarkit.predict import _views

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert len(list(_views(x, None))) == 1 and len(list(_views(x, "flip"))) == 2
    views = list(_views(x, "flip_shift"))
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(3))
    assert torch.equal(views[2][..., 1:, 1:], x[..., :-1, :-1])  # content moved 1 px down-right
    assert torch.equal(views[4][..., :-1, :-1], x[..., 1:, 1:])  # and 1 px up-left
    assert torch.equal(views[5], views[4].flip(3))


def shifted(x, d):
    """x moved d pixels down and right (d < 0: up and left), the border mirrored, by plain indexing."""
    def rows(n):
        i = torch.arange(n) - d
        return torch.where(i < 0, -i, torch.where(i > n - 1, 2 * (n - 1) - i, i))
    return x[..., rows(x.shape[-2]), :][..., rows(x.shape[-1])]


@pytest.mark.parametrize("tta", [None, "flip", "flip_shift"])
def test_tta_averages_the_models_outputs_over_its_views(tta):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(5, 3, 8, 8)
    views = [x] + ([x.flip(3)] if tta else [])
    if tta == "flip_shift":
        views += [shifted(x, 1), shifted(x, 1).flip(3), shifted(x, -1), shifted(x, -1).flip(3)]
    with torch.no_grad():
        expected = torch.stack([model(v) for v in views]).mean(0)
        got = logits(model, [(x[:2], None), (x[2:], None)], torch.device("cpu"), tta=tta)
        assert tta is None or not torch.allclose(expected, model(x), atol=1e-3), "the views must matter here"
    assert torch.allclose(got, expected, atol=1e-6), f"off by {(got - expected).abs().max():.3g}"


def test_flip_shift_unsure_gives_the_least_sure_fifth_flip_shift_whatever_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x, cpu = torch.randn(10, 3, 8, 8), torch.device("cpu")
    with torch.no_grad():
        plain, full = model(x), logits(model, [(x, None)], cpu, tta="flip_shift")
    top2 = plain.softmax(1).topk(2, 1).values
    k = math.ceil(predict.UNSURE_SHARE * 10)
    assert 0 < k < 10, "some images and not all"
    least_sure = sorted((top2[:, 0] - top2[:, 1]).argsort()[:k].tolist())
    for batches in ([(x, None)], [(x[:3], None), (x[3:7], None), (x[7:], None)]):
        got = logits(model, batches, cpu, tta="flip_shift_unsure")
        changed = [i for i in range(10) if not torch.allclose(got[i], plain[i], atol=1e-5)]
        assert changed == least_sure, "the least sure fifth, ranked over all images, not per batch"
        assert torch.allclose(got[least_sure], full[least_sure], atol=1e-5), "those get flip_shift's average"


def test_per_batch_scoring_refuses_flip_shift_unsure_instead_of_flipping_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="flip_shift_unsure"):
        predict.evaluate(model, batches, torch.device("cpu"), tta="flip_shift_unsure")


def albu_loader(workers, seed=0, dist=None):
    """32 copies of one image: any difference between two batches is the augmentation's doing."""
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    norm = Normalize([0.5] * 3, [0.25] * 3, "cpu")
    loader = AlbuLoader(image.repeat(32, 0), np.zeros(32, dtype=np.int64), 8, norm, "cpu", workers=workers,
                        seed=seed, drop_last=False, dist=dist)
    return loader, norm(torch.from_numpy(image).permute(0, 3, 1, 2))


@pytest.mark.parametrize("workers", [0, 2])
def test_albumentations_stream_depends_on_seed_epoch_and_worker(workers):
    loader, source = albu_loader(workers)
    epoch0 = [x for x, _ in loader.batches(0)]
    epoch1 = [x for x, _ in loader.batches(1)]
    assert (torch.cat(epoch0) == source).flatten(1).all(1).float().mean() < 0.5, "most images are changed"
    assert not torch.equal(epoch0[0], epoch0[1]), "batches 0 and 1 (workers 0 and 1 with 2 workers) differ"
    assert not any(torch.equal(a, b) for a, b in zip(epoch0, epoch1)), "each epoch augments anew"
    again = [x for x, _ in albu_loader(workers)[0].batches(0)]
    assert len(again) == 4 and all(torch.equal(a, b) for a, b in zip(epoch0, again)), "same seed, same batches"
    other = [x for x, _ in albu_loader(workers, seed=1)[0].batches(0)]
    assert not any(torch.equal(a, b) for a, b in zip(epoch0, other))
    resumed = [x for x, _ in albu_loader(workers)[0].batches(1, start=2)]
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(epoch1[2:], resumed)), "resume re-makes them"


def test_crop_and_flip_together_are_windows_or_mirrored_windows():
    x = batch(128)
    padded = F.pad(x, (4, 4, 4, 4))
    out = crop(padded, 4, 0.5, 9)
    mirrored = 0
    for i in range(len(x)):
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)
        plain = (windows == out[i][:, None, None]).all(dim=(0, 3, 4)).any()
        flipped = (windows == out[i].flip(2)[:, None, None]).all(dim=(0, 3, 4)).any()
        assert plain or flipped, i
        mirrored += int(flipped and not plain)
    assert 40 < mirrored < 88  # about half, for 128 images


def test_random_choices_are_drawn_once_per_epoch_not_per_step(monkeypatch):
    """Per-step draws on the CPU would mean a host-to-device copy, a CUDA stream sync, every step."""
    calls = []
    for name in ("randint", "rand", "randperm"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    _, _, dl = loader(recipe="crop_flip_cutout", n=100, bs=10)
    batches = dl.batches(epoch=3)
    next(batches)
    at_first_batch = len(calls)
    rest = list(batches)
    assert len(rest) == 9 and len(calls) == at_first_batch > 0


def test_ranks_share_each_global_batch_exactly():
    """Under torchrun every rank takes its share of the same global batch, augmented as in one process."""
    from cifarkit.runtime import Dist

    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(50) % 10
    norm = Normalize(*channel_stats(images), "cpu")

    def batches(dist=None):
        return list(DeviceLoader(images, labels, 16, norm, "cpu", RECIPES["crop_flip_cutout"], shuffle=True,
                                 seed=3, dist=dist).batches(2))

    whole = batches()
    shares = [batches(Dist(rank, 3)) for rank in range(3)]
    for i, (x, y) in enumerate(whole):
        assert [len(s[i][1]) for s in shares] in ([6, 5, 5], [1, 1, 0])  # 16 and the last 2 split over 3
        assert torch.equal(torch.cat([s[i][0] for s in shares]), x)
        assert torch.equal(torch.cat([s[i][1] for s in shares]), y)


def test_albumentations_batches_do_not_depend_on_workers_or_processes():
    from cifarkit.runtime import Dist

    (one, _), (two, _) = albu_loader(0), albu_loader(2)
    whole = [x for x, _ in one.batches(3)]
    assert all(torch.equal(a, b) for a, b in zip(whole, [x for x, _ in two.batches(3)]))
    shares = [[x for x, _ in albu_loader(0, dist=Dist(rank, 2))[0].batches(3)] for rank in range(2)]
    assert all(torch.equal(torch.cat([shares[0][i], shares[1][i]]), x) for i, x in enumerate(whole))
