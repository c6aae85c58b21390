"""The speed-record recipe (fast_cnn_muon): alternating flips, reflected shifts, Muon for the filters with SGD
for the rest, the whitening bias trained early only; each reproducible from (seed, epoch, batch) and resumable."""

import argparse
import re
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from cifarkit import models, train
from cifarkit.augment import RECIPES, alternating_flips
from cifarkit.errors import UserError
from cifarkit.loader import DeviceLoader, EasySkip, Normalize
from cifarkit.predict import evaluate

from conftest import FAULT_STEPS, ROOT, assert_pages_reused, fault_counts, load_script, resumes_as_if_never_stopped

SMALL = ["--train-per-class", "9", "--val-per-class", "3", "--device", "cpu", "-b", "16", "--no-amp"]
NARROW = ["--model", "fast_cnn_muon", "--model-kwargs", "widths=(16,32,32)"]


def test_alternating_flips_show_every_image_both_ways_in_two_epochs():
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(5))
    e1, e2, e3 = (alternating_flips(7, epoch, order) for epoch in (1, 2, 3))
    assert e1.shape == (1000,) and set(e1.tolist()) == {0, 1}
    assert torch.equal(e1 + e2, torch.ones(1000, dtype=torch.long)) and torch.equal(e1, e3)
    assert 0.45 < e1.float().mean().item() < 0.55
    # a flag belongs to the image, not to its place in the epoch's order
    assert torch.equal(alternating_flips(7, 1, torch.arange(1000))[order], e1)
    assert torch.equal(alternating_flips(7, 1, order), e1) and not torch.equal(alternating_flips(8, 1, order), e1)


def shift_loader(images, seed=0):
    norm = Normalize([0, 0, 0], [1 / 255] * 3, "cpu")  # identity: the batches come back in pixel levels
    return DeviceLoader(images.permute(0, 2, 3, 1).numpy(), torch.arange(len(images)).numpy(), 16, norm, "cpu",
                        RECIPES["shift_altflip"], shuffle=True, seed=seed)


def test_shift_altflip_batches_are_reflected_shifts_mirrored_by_epoch():
    """Each batch image is a window of its reflect-padded source, shifted by at most 2 px (no zero border), with
    the left-dark/right-bright pattern telling its mirror, which flips every epoch; batches re-made from (seed,
    epoch, start) are the same."""
    n = 64
    images = torch.full((n, 3, 32, 32), 200, dtype=torch.uint8)
    images[..., :16] = 20  # dark left half
    images += torch.randint(0, 10, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    loader = shift_loader(images)
    mirrored = {}
    for epoch in (1, 2):
        for x, idx in loader.batches(epoch):
            assert x.shape == (len(idx), 3, 32, 32) and x.min() >= 20
            padded = torch.nn.functional.pad(images[idx].float(), (2, 2, 2, 2), mode="reflect")
            for img, src in zip(x, padded):
                windows = src.unfold(1, 32, 1).unfold(2, 32, 1)  # C, 5, 5, 32, 32
                either = (windows == img[:, None, None]) | (windows == img.flip(2)[:, None, None])
                assert either.all(dim=(0, 3, 4)).any(), "not a shift of at most 2 px of the reflect-padded image"
            left_bright = x[..., :14].mean((1, 2, 3)) > x[..., 18:].mean((1, 2, 3))
            mirrored.update({(epoch, int(i)): bool(m) for i, m in zip(idx, left_bright)})
    assert all(mirrored[1, i] != mirrored[2, i] for i in range(n))
    assert 0.3 < sum(mirrored[1, i] for i in range(n)) / n < 0.7
    whole = list(loader.batches(2))
    for (a, ia), (b, ib) in zip(whole[2:], shift_loader(images).batches(2, start=2)):
        assert torch.equal(a, b) and torch.equal(ia, ib)
    other = list(shift_loader(images, seed=1).batches(2))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(whole, other))


def muon_args(**kw):
    return argparse.Namespace(**dict(dict(optimizer="muon", lr=0.24, batch_size=2000, weight_decay=2e-6,
                                          backbone_lr_scale=1.0, warmup=0.0), **kw))


def test_muon_for_the_filters_sgd_for_the_rest_at_per_image_rates():
    model = models.create("fast_cnn_muon", 10)
    sgd, muon = train.optimizers(model, "head", muon_args())
    filters = [p for n, p in model.named_parameters() if p.ndim == 4 and n != "whiten.weight"]
    assert [id(p) for g in muon.param_groups for p in g["params"]] == [id(p) for p in filters]
    groups = {("head" if g["params"][0] is model.head.weight else "whiten" if g["params"][0] is model.whiten.bias
               else "bias"): g for g in sgd.param_groups}
    assert groups["head"]["lr_scale"] * 0.24 == pytest.approx(0.67 * 2000)
    assert groups["bias"]["lr_scale"] * 0.24 == pytest.approx(0.053 * 2000)
    assert groups["bias"]["weight_decay"] * 0.053 == pytest.approx(2e-6)
    trained = [p for p in model.parameters() if p.requires_grad]
    in_some = [id(p) for opt in (sgd, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_some) == sorted(id(p) for p in trained)  # each trainable parameter once
    assert not any(m.weight.requires_grad for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    # the whitening bias runs its schedule in the first 3/8 of the run, then stays at 0; the rest decay to 1
    for progress, whiten, head in ((0.0, 1.0, 1.0), (0.1875, 0.5, 0.8125), (0.5, 0.0, 0.5), (0.99, 0.0, 0.01)):
        lr = train.set_lr([sgd, muon], muon_args(), progress)
        assert lr == pytest.approx(0.24 * head)
        assert groups["whiten"]["lr"] == pytest.approx(0.053 * 2000 * whiten)
        assert groups["head"]["lr"] == pytest.approx(0.67 * 2000 * head)
        assert muon.param_groups[0]["lr"] == pytest.approx(0.24 * head)


def test_muon_step_holds_each_filter_bank_at_norm_sqrt_outputs():
    model = models.create("fast_cnn_muon", 10, model_kwargs=dict(widths=(16, 32, 32)))
    sgd, muon = train.optimizers(model, "head", muon_args(batch_size=8))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in muon.param_groups[0]["params"]]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    muon.param_groups[0]["lr"] = 0.0
    muon.step()
    for p, b in zip(muon.param_groups[0]["params"], before):
        assert p.norm().item() == pytest.approx(len(p) ** 0.5, rel=1e-5)
        assert torch.allclose(p, b * len(p) ** 0.5 / b.norm())  # rescaled, nothing else
    muon.param_groups[0]["lr"] = 0.1
    held = muon.param_groups[0]["params"][0]
    held.grad, kept = None, held.detach().clone()  # a filter held this step (--freeze-epochs) is left as it is
    muon.step()
    assert torch.equal(held, kept)
    assert not any(torch.allclose(p, b * len(p) ** 0.5 / b.norm())  # the others moved
                   for p, b in zip(muon.param_groups[0]["params"][1:], before[1:]))


@pytest.mark.parametrize("name, params", [("fast_cnn_muon", 1_972_792), ("fast_cnn_s_muon", 1_161_272)])
def test_muon_models_classify_10_and_100_classes(name, params):
    for k in (10, 100):
        assert models.create(name, k)(torch.randn(2, 3, 32, 32)).shape == (2, k)
    assert sum(p.numel() for p in models.create(name, 10).parameters()) == params


def test_fast_cnn_muon_learns_and_resumes_exactly(cifar10_dir, train_main, capsys, tmp_path):
    """Stopped after epoch 1 and resumed (Muon's and SGD's momentum from last.pt), the run logs what the
    uninterrupted one does; the whitening bias stops changing once its share of the run is over, and from the
    next epoch stops taking gradients (the first conv's input gradient spared), resumed or not."""
    common = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, *NARROW, "--epochs", "4"]
    whole = resumes_as_if_never_stopped(train_main, capsys, common, tmp_path / "runs")
    assert whole["train_acc"].iloc[-1] > 0.3  # chance is 0.1

    r = train.setup(_parse([*common, "--experiment", "bias"]))
    assert r.args.optimizer == "muon" and len(r.opts) == 2
    biases, grads = [r.model.whiten.bias.detach().clone()], []
    for _ in range(4):
        train.train_one_epoch(r, train.Writer(r))
        r.state.next_epoch()
        biases.append(r.model.whiten.bias.detach().clone())
        grads.append(r.model.whiten.bias.grad is not None)
    assert not torch.equal(biases[0], biases[1]) and not torch.equal(biases[1], biases[2])  # it trains early
    assert torch.equal(biases[2], biases[4])  # 3/8 of 4 epochs: nothing moves it after the middle of epoch 2
    assert grads == [True, True, False, False] and not r.model.whiten.bias.requires_grad
    assert all(p.grad is not None for n, p in r.model.named_parameters() if n != "whiten.bias" and p.requires_grad)


def test_fast_cnn_muon_resumes_exactly_from_mid_epoch_past_the_bias_share(cifar10_dir, train_main, capsys, tmp_path):
    """Stopped at a mid-epoch save (--checkpoint-interval) just past the whitening bias's 3/8, in the epoch where
    the uninterrupted run still computes its gradient at rate 0: the resumed run takes none from there on (its
    phase is set from the progress it resumes at), and still logs and ends where the uninterrupted run does."""
    common = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, *NARROW, "--epochs", "4",
              "--checkpoint-interval", "1"]
    checked = []

    def past_the_share(r):
        share = next(g["until"] for opt in r.opts for g in opt.param_groups if g.get("until", 1) < 1)
        if not r.progress() >= share:
            return False
        assert r.model.whiten.bias.requires_grad and r.model.whiten.bias.grad is not None  # on for this epoch
        assert 0 < r.state.batch < len(r.train_loader)
        resumed = train.setup(_parse(["--resume", str(r.run_dir)]))
        train.set_phase(resumed)
        assert not resumed.model.whiten.bias.requires_grad  # off from the resumed part-epoch on
        checked.append(r.state.batch)
        return True

    resumes_as_if_never_stopped(train_main, capsys, common, tmp_path / "runs", stop=past_the_share)
    assert checked


@pytest.mark.parametrize("soft", [False, True])
def test_micro_batches_give_the_whole_batch_loss_and_gradients(soft):
    """Chunks of at most 3 of a batch of 8 (3, 3, 2), with hard labels or mixup's soft ones: the same
    outputs, mean loss and gradients as the batch at once (a network without batch norm, where they must be)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 5, (8,))
    target = torch.softmax(torch.randn(8, 5), 1) if soft else y
    got = []
    for size in (0, 3):
        r = SimpleNamespace(args=SimpleNamespace(micro_batch=size), dist=SimpleNamespace(world=1), train_model=net,
                            device=torch.device("cpu"), amp=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
                            criterion=lambda out, t: -(t * out.log_softmax(1)).sum(1).mean() if soft else
                            torch.nn.functional.cross_entropy(out, t))
        net.zero_grad()
        out, loss = train.forward_backward(r, x, target)
        got.append((out, loss, [p.grad.clone() for p in net.parameters()]))
    (out0, loss0, g0), (out3, loss3, g3) = got
    assert torch.allclose(out0, out3, rtol=1e-5, atol=1e-6) and loss3.item() == pytest.approx(loss0.item(), rel=1e-6)
    for a, b in zip(g0, g3):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_cpu_takes_batches_over_1000_in_chunks_by_default(cifar10_dir, tmp_path):
    base = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, *NARROW, "--output", str(tmp_path)]
    assert train.setup(_parse([*base, "-b", "2000", "--experiment", "a"])).args.micro_batch == train.CPU_MICRO_BATCH
    assert train.setup(_parse([*base, "--experiment", "b"])).args.micro_batch == 0  # -b 16: whole
    assert train.setup(_parse([*base, "-b", "2000", "--micro-batch", "0", "--experiment", "c"])).args.micro_batch == 0


def test_a_cpu_trains_both_muon_models_in_batches_of_1000_unless_told(cifar10_dir, tmp_path):
    """The record's batches of 2000 at Muon rate 0.24 on a GPU; on a CPU 1000 at 0.17 (both widths), unless -b asks for
    another batch (the rate goes with its batch); an --lr given wins either way."""
    base = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL[:4], "--device", "cpu", *NARROW]
    r = train.setup(_parse([*base, "--output", str(tmp_path), "--experiment", "cpu"]))
    assert (r.args.batch_size, r.args.lr, r.args.micro_batch) == (1000, 0.17, 0)  # whole: no chunks needed
    for cpu, want in ((False, dict(batch_size=2000, lr=0.24)), (True, dict(batch_size=1000, lr=0.17))):
        assert {k: train.recipe_defaults("fast_cnn_muon", cpu)[k] for k in want} == want
        assert {k: train.recipe_defaults("fast_cnn_s_muon", cpu)[k] for k in want} == want  # the CPU's choice too
    got = train.resolve(_parse(["--model", "fast_cnn_muon"]), cpu=True)
    assert (got.batch_size, got.lr, got.weight_decay, got.epochs) == (1000, 0.17, 2e-6, 8)
    got = train.resolve(_parse(["--model", "fast_cnn_muon", "--lr", "0.2"]), cpu=True)
    assert (got.batch_size, got.lr) == (1000, 0.2)
    got = train.resolve(_parse(["--model", "fast_cnn_muon", "-b", "1000"]), cpu=True)  # the default, spelled out
    assert (got.batch_size, got.lr) == (1000, 0.17)
    got = train.resolve(_parse(["--model", "fast_cnn_muon", "-b", "2000"]), cpu=True)  # the record's recipe whole
    assert (got.batch_size, got.lr) == (2000, 0.24)


def test_micro_batches_resume_exactly_and_chunk_every_step(cifar10_dir, train_main, capsys, tmp_path):
    """--micro-batch 6 with batches of 16: every step is three chunks (6, 5, 5), and a run stopped after epoch 1
    and resumed logs what the whole run logs."""
    common = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, *NARROW, "--epochs", "2",
              "--micro-batch", "6"]
    resumes_as_if_never_stopped(train_main, capsys, common, tmp_path / "runs")
    r = train.setup(_parse([*common, "--output", str(tmp_path / "runs"), "--experiment", "chunks"]))
    calls = []
    r.model.register_forward_pre_hook(lambda m, a: calls.append(len(a[0])) if m.training else None)
    train.train_one_epoch(r, train.Writer(r))
    assert calls == [6, 5, 5] * len(r.train_loader)


def test_skip_easy_leaves_out_only_the_easier_half_at_its_rate():
    """Epoch 1 trains every image; from epoch 2 the harder half (higher loss when last seen) always trains and each
    image of the easier half sits out with probability P; the choice is the same from (seed, epoch, losses)."""
    loss = torch.rand(10_000, generator=torch.Generator().manual_seed(3))
    skip = EasySkip(0.6, seed=1)
    assert skip.choose(loss, 1) is None and EasySkip(0.0, seed=1).choose(loss, 2) is None
    keep = skip.choose(loss, 2)
    hard = torch.zeros(10_000, dtype=torch.bool)
    hard[loss.argsort()[5000:]] = True
    assert keep[hard].all()
    assert 0.37 < keep[~hard].float().mean() < 0.43  # 1 - P of the easier half stays
    assert torch.equal(keep, skip.choose(loss.clone(), 2)) and not torch.equal(keep, skip.choose(loss, 3))
    never_seen = torch.full((10,), float("inf"))
    never_seen[:5] = 0.0
    assert EasySkip(0.99, seed=1).choose(never_seen, 2)[5:].all()  # an image not yet trained on counts as hard


def test_skip_easy_ranks_pool_what_each_recorded():
    """Under torchrun a rank's losses wait until the pool (an element-wise minimum over the ranks: two ranks
    simulated here); then both ranks hold the new loss of every image either trained, and the old one of the rest."""
    old = torch.tensor([0.5, float("inf"), 2.0, 3.0])
    ranks = [EasySkip(0.6, seed=1, lowest=lambda t: t) for _ in range(2)]
    losses = [old.clone(), old.clone()]
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]), torch.zeros(3, dtype=torch.int64)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    ranks[0].record(losses[0], torch.tensor([0, 1]), logits[:2], labels[:2])  # rank 0 trained images 0 and 1
    ranks[1].record(losses[1], torch.tensor([3]), logits[2:], labels[2:])  # rank 1 image 3
    assert all(torch.equal(loss, old) for loss in losses)  # nothing moves before the pool
    sent = [skip.pending.clone() for skip in ranks]
    for me in (0, 1):
        ranks[me].lowest = lambda t, other=sent[1 - me]: torch.minimum(t, other, out=t)  # the all-reduce
        ranks[me].pool(losses[me])
    want = torch.stack([ce[0], ce[1], old[2], ce[2]])
    assert torch.equal(losses[0], want) and torch.equal(losses[1], want)
    assert all(torch.isinf(skip.pending).all() for skip in ranks)


def test_an_epoch_with_images_left_out_takes_the_others_with_their_own_draws():
    """With `keep`, an epoch's batches hold each kept image once and no other, each drawn (shift, mirror) as in
    the full epoch, and batches re-made from a start are the same."""
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    loader = shift_loader(images)
    full = {int(i): x for xb, _, ib in loader.batches(2, with_index=True) for x, i in zip(xb, ib)}
    loader.keep = torch.arange(64) % 3 != 0
    assert len(loader) == -(-int(loader.keep.sum()) // 16)
    got = list(loader.batches(2, with_index=True))
    seen = torch.cat([ib for _, _, ib in got])
    assert sorted(seen.tolist()) == torch.nonzero(loader.keep).flatten().tolist()
    for xb, yb, ib in got:
        assert torch.equal(yb, ib)  # shift_loader labels each image with its index
        assert all(torch.equal(x, full[int(i)]) for x, i in zip(xb, ib))
    again = list(loader.batches(2, start=1, with_index=True))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(got[1:], again))


def test_skip_easy_runs_fewer_images_an_epoch_decays_to_zero_and_resumes_exactly(cifar10_dir, train_main, capsys,
                                                                                 tmp_path):
    """--skip-easy 0.6 for 4 epochs: from epoch 2 each epoch trains fewer images, the learning rate still reaches
    (nearly) 0 at the end of epoch 4, and a run stopped at a mid-epoch save in epoch 3 (the epoch's choice and the
    losses in last.pt) logs and ends where the uninterrupted run does."""
    common = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, *NARROW, "--epochs", "4",
              "--skip-easy", "0.6", "--checkpoint-interval", "1"]
    sizes = []

    def in_epoch_3(r):
        sizes.append(len(r.train_loader))
        if r.state.epoch < 3 or r.state.batch != 1:
            return False
        assert r.state.keep is not None and 0 < int(r.state.keep.sum()) < 90
        assert torch.isfinite(r.state.image_loss).sum() >= 80  # every image of epoch 1's 5 batches of 16
        return True

    whole = resumes_as_if_never_stopped(train_main, capsys, common, tmp_path / "runs", stop=in_epoch_3)
    assert sizes[0] == 5 and max(sizes[5:]) < 5  # 90 images: 5 batches of 16, then only part of them
    assert whole["lr"].iloc[-1] < 0.1 * whole["lr"].max()  # progress counts epochs, not steps of a full epoch
    r = train.setup(_parse([*common, "--output", str(tmp_path / "runs"), "--experiment", "again"]))
    assert r.skip is not None and r.state.image_loss.shape == (90,) and torch.isinf(r.state.image_loss).all()


@pytest.mark.parametrize("flags, says", [(["--skip-easy", "1"], "probability in [0, 1)"),
                                         (["--skip-easy", "0.5", "--aug", "albu"], "not --aug albu")])
def test_skip_easy_refuses_what_it_cannot_do(cifar10_dir, tmp_path, flags, says):
    argv = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, *NARROW, "--output", str(tmp_path), *flags]
    with pytest.raises(UserError, match=re.escape(says)):
        train.setup(_parse(argv))


def _parse(argv):
    return load_script("train").parser().parse_args(argv)


@pytest.mark.parametrize("native", [False, True])
def test_a_cpu_without_native_bf16_is_pointed_at_fast_cnn_s_muon(monkeypatch, cifar10_dir, tmp_path, native):
    """README's ten-minute command trains fast_cnn_muon; where the CPU would run it in fp32 (1.7x slower than
    fast_cnn_s_muon there), the set-up message says which model to take instead."""
    from cifarkit import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    base = ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, "--output", str(tmp_path)]
    said = [n for n in train.setup(_parse([*base, *NARROW, "--experiment", "a"])).notes if "native bf16" in n]
    assert said == ([] if native else ["this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16): "
                                       "--model fast_cnn_s_muon trains faster here than fast_cnn_muon"])
    r = train.setup(_parse([*base, "--model", "fast_cnn_s_muon", "--experiment", "b"]))
    assert not [n for n in r.notes if "native bf16" in n]  # already the CPU's choice


@pytest.mark.parametrize("native", [False, True])
def test_muon_orthogonalises_in_fp32_where_the_cpu_lacks_native_bf16(monkeypatch, native):
    """timm orthogonalises in bf16, emulated (10x slower) on a CPU without native bf16: there the step is the
    fp32 Newton-Schulz update to float rounding; with native bf16 it is timm's own bf16 one."""
    import timm.optim.muon as timm_muon

    from cifarkit import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    conv = torch.nn.Conv2d(64, 128, 3, bias=False)
    conv.weight.grad = torch.randn_like(conv.weight)
    (muon,) = train.optimizers(conv, "none", muon_args())
    start = conv.weight.detach() * 128 ** 0.5 / conv.weight.detach().norm()
    muon.step()
    ortho = timm_muon.zeropower_via_newtonschulz(conv.weight.grad.reshape(128, -1), 3,
                                                 timm_muon._COEFFICIENTS["original"], dtype=torch.float32)
    fp32_step = start - 0.24 * ortho.view_as(start)
    off = (conv.weight.detach() - fp32_step).abs().max().item()
    assert off < 1e-5 if not native else off > 1e-4


@pytest.mark.parametrize("name, kinds", [("fast_cnn_s_muon", ["SGD", "NormedMuon"]), ("fast_cnn_s", ["SGD"])])
def test_speed_only_times_each_model_with_its_own_optimizers(monkeypatch, name, kinds):
    """benchmarks/models.py --speed-only steps what train.py would: Muon and SGD for a muon entry, at its batch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_models", ROOT / "benchmarks" / "models.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    made = []
    monkeypatch.setattr(bench, "optimizers", lambda *a: made.extend(train.optimizers(*a)) or made)
    assert bench.train_speed(name, 0.01, 8, torch.device("cpu")) > 0
    assert [type(o).__name__ for o in made] == kinds
    if name.endswith("_muon"):  # the record's per-image rates, at the timed batch
        scales = sorted(g["lr_scale"] for g in made[0].param_groups)  # biases, whitening bias, classifier
        assert scales == pytest.approx([train.MUON[k] * 8 / 0.24 for k in ("bias_lr", "bias_lr", "head_lr")])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_feature_maps_are_reused_not_faulted_in_again():
    def step_faults(mode):
        keep = "from cifarkit import runtime\nassert runtime.keep_freed_memory()\n" if mode == "keep" else ""
        out = subprocess.run([sys.executable, "-c", keep + FAULT_STEPS], capture_output=True, text=True, check=True)
        return fault_counts(out.stdout)
    assert_pages_reused(step_faults("plain"), step_faults("keep"))
