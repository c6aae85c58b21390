"""Transfer learning: input size, the weights' own normalisation, head-first phases, starting from our
own checkpoints, mixup/cutmix (reproducible and exactly resumable)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from cifarkit import checkpoint, models, train
from cifarkit.augment import mixer
from cifarkit.predict import evaluate

from conftest import ROOT, load_script, resumes_as_if_never_stopped, run_cli

SMALL = ["--train-per-class", "9", "--val-per-class", "3", "--device", "cpu"]
IMAGENET_MEAN = [0.485, 0.456, 0.406]


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    """A timm-layout ResNet18 state dict, standing in for ImageNet weights (none can be downloaded here)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    return path


def c10(cifar10_dir, *extra):
    return ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL, "-b", "16", *extra]


class Sizes:
    """Records the input sizes the network is called with."""

    def __init__(self, monkeypatch):
        self.seen = set()
        real = models.create

        def create(*a, **k):
            model = real(*a, **k)
            model.register_forward_pre_hook(lambda m, inp: self.seen.add(tuple(inp[0].shape[-2:])))
            return model

        monkeypatch.setattr(models, "create", create)


def test_img_size_reaches_the_model_and_predict_uses_the_stored_size(cifar10_dir, train_main, predict_main,
                                                                      capsys, monkeypatch, tmp_path):
    sizes = Sizes(monkeypatch)
    code, out, err = run_cli(train_main, c10(cifar10_dir, "--model", "simple_cnn", "--img-size", "40",
                                             "--epochs", "1"), capsys)
    assert code == 0, err
    assert sizes.seen == {(40, 40)} and "inputs 40 px" in out
    assert checkpoint.load(next(tmp_path.glob("runs/*/best.pt")))["img_size"] == 40
    sizes.seen.clear()
    code, out, err = run_cli(predict_main, ["--tta"], capsys)
    assert code == 0, err
    assert sizes.seen == {(40, 40)}


def test_normalisation_follows_the_weights(cifar10_dir, train_main, capsys, tmp_path, r18_file):
    def config(name, *extra):
        code, out, err = run_cli(train_main, c10(cifar10_dir, "--epochs", "1", "--experiment", name, *extra), capsys)
        assert code == 0, err
        return pd.read_json(tmp_path / "runs" / name / "config.json", typ="series")

    pretrained = config("pre", "--model", "resnet18", "--pretrained-file", str(r18_file))
    assert pretrained["mean"] == pytest.approx(IMAGENET_MEAN) and "pretrained weights" in pretrained["normalised_with"]
    split = config("split", "--model", "resnet18", "--pretrained-file", str(r18_file), "--norm-stats", "split")
    scratch = config("scratch", "--model", "simple_cnn")
    assert split["mean"] == scratch["mean"] != pytest.approx(IMAGENET_MEAN)
    assert scratch["normalised_with"] == "the training split's"
    assert checkpoint.load(tmp_path / "runs" / "pre" / "best.pt")["mean"] == pytest.approx(IMAGENET_MEAN)


def _args(cifar10_dir, tmp_path, *extra):
    argv = c10(cifar10_dir, "--output", str(tmp_path / "runs"), "--split-dir", str(tmp_path / "split"), *extra)
    return load_script("train").parser().parse_args(argv)


def test_backbone_held_while_frozen_then_trained(cifar10_dir, tmp_path, r18_file):
    r = train.setup(_args(cifar10_dir, tmp_path, "--model", "resnet18", "--pretrained-file", str(r18_file),
                          "--epochs", "2", "--freeze-epochs", "1", "--lr", "0.05", "--no-amp"))
    w = train.Writer(r)

    def backbone():  # weights and batch-norm statistics
        return {k: v.clone() for k, v in r.model.state_dict().items() if not k.startswith("fc.")}

    before, head = backbone(), r.model.fc.weight.clone()
    train.train_one_epoch(r, w)
    after_frozen = backbone()
    assert all(torch.equal(before[k], after_frozen[k]) for k in before), "frozen epoch changed the backbone"
    assert not torch.equal(head, r.model.fc.weight), "the classifier trained"
    r.state.next_epoch()
    train.train_one_epoch(r, w)
    changed = [k for k, v in backbone().items() if not torch.equal(v, after_frozen[k])]
    assert any(k.startswith("layer1.") for k in changed) and any(k.endswith("running_mean") for k in changed)


def test_frozen_stages_hold_the_stem_and_first_stages(cifar10_dir, tmp_path, r18_file):
    """--frozen-stages 2: resnet18's stem and layer1 keep their weights and batch-norm statistics through a
    full-phase epoch and are not in the optimizer; the later stages train."""
    r = train.setup(_args(cifar10_dir, tmp_path, "--model", "resnet18", "--pretrained-file", str(r18_file),
                          "--frozen-stages", "2", "--epochs", "1", "--lr", "0.05", "--no-amp"))
    state = {k: v.clone() for k, v in r.model.state_dict().items()}
    in_opt = {id(p) for g in r.opts[0].param_groups for p in g["params"]}
    assert r.held[0] == "conv1" and {m.split(".")[0] for m in r.held} == {"conv1", "bn1", "layer1"}
    assert not any(id(p) in in_opt for n, p in r.model.named_parameters() if n.startswith(("conv1.", "layer1.")))
    train.train_one_epoch(r, train.Writer(r))
    changed = {k.split(".")[0] for k, v in r.model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed.isdisjoint({"conv1", "bn1", "layer1"}) and {"layer2", "layer4", "fc"} <= changed


def test_frozen_stages_resume_exactly(cifar10_dir, train_main, capsys, tmp_path, r18_file):
    """Stopped after epoch 1 and resumed, a --frozen-stages run logs what the uninterrupted one does."""
    common = ["--model", "resnet18", "--pretrained-file", str(r18_file), "--frozen-stages", "1", "--epochs", "2",
              "--no-amp", "--no-model-ema"]
    resumes_as_if_never_stopped(train_main, capsys, c10(cifar10_dir, *common), tmp_path / "runs")


def test_backbone_lr_scale_sets_the_groups(cifar10_dir, tmp_path, r18_file):
    r = train.setup(_args(cifar10_dir, tmp_path, "--model", "resnet18", "--pretrained-file", str(r18_file),
                          "--backbone-lr-scale", "0.1", "--epochs", "1"))
    scales = {}
    for g in r.opts[0].param_groups:
        scales[g["lr_scale"]] = scales.get(g["lr_scale"], 0) + sum(p.numel() for p in g["params"])
    assert scales[1.0] == 512 * 10 + 10 and scales[0.1] > 11_000_000  # fc alone at the full rate
    no_decay = [g for g in r.opts[0].param_groups if g["weight_decay"] == 0]
    assert all(p.ndim == 1 for g in no_decay for p in g["params"])


def test_registry_fine_tuning_recipe_is_for_pretrained_starts_only():
    """mobilenetv2_100's head-first epoch and lower backbone rate are for ImageNet weights; from scratch every
    layer learns at the full rate unless the user asks otherwise."""
    parse = load_script("train").parser().parse_args
    recipe = models.MODELS["mobilenetv2_100"].defaults
    tuned = train.resolve(parse(["--model", "mobilenetv2_100"]))  # pretrained by default
    assert (tuned.freeze_epochs, tuned.backbone_lr_scale) == (recipe["freeze_epochs"], recipe["backbone_lr_scale"])
    assert tuned.freeze_epochs >= 1 and tuned.backbone_lr_scale < 1
    scratch = train.resolve(parse(["--model", "mobilenetv2_100", "--no-pretrained"]))
    assert (scratch.freeze_epochs, scratch.backbone_lr_scale, scratch.frozen_stages) == (0, 1.0, 0)
    assert tuned.frozen_stages == recipe["frozen_stages"] > 0
    asked = train.resolve(parse(["--model", "mobilenetv2_100", "--no-pretrained", "--backbone-lr-scale", "0.5"]))
    assert asked.backbone_lr_scale == 0.5


def test_a_cifar10_run_seeds_a_cifar100_run(cifar10_dir, cifar100_dir, train_main, predict_main, capsys, tmp_path):
    code, _, err = run_cli(train_main, c10(cifar10_dir, "--model", "fast_cnn_s", "--epochs", "1",
                                           "--experiment", "c10"), capsys)
    assert code == 0, err
    start = tmp_path / "runs" / "c10" / "best.pt"
    c10_ckpt = checkpoint.load(start)
    code, out, err = run_cli(train_main, [
        "--model", "fast_cnn_s", "--initial-checkpoint", str(start), "--data-dir", str(cifar100_dir),
        "--train-per-class", "4", "--val-per-class", "2", "--epochs", "1", "--lr", "1e-9", "-b", "50",
        "--experiment", "c100", "--device", "cpu", "--no-model-ema", "--no-amp"], capsys)
    assert code == 0, err
    assert "classifier replaced (10 classes there, 100 here)" in out
    c100 = checkpoint.load(tmp_path / "runs" / "c100" / "best.pt")
    assert c100["num_classes"] == 100 and c100["mean"] == c10_ckpt["mean"]
    for k, v in c10_ckpt["state_dict"].items():  # lr ~0: the backbone is still the CIFAR-10 one
        if not k.startswith("head.") and v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(c100["state_dict"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert run_cli(predict_main, ["--checkpoint", str(tmp_path / "runs" / "c100" / "best.pt")], capsys)[0] == 0


def test_mixing_is_reproducible_from_seed_epoch_batch_and_leaves_numpy_alone():
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 10
    mix = mixer(0.4, 1.0, 0.1, 10, seed=3)
    np.random.seed(123)
    outside = np.random.get_state()[1].copy()
    a, b, other = mix(x.clone(), y, 2, 5), mix(x.clone(), y, 2, 5), mix(x.clone(), y, 2, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], other[0])
    assert not torch.equal(a[0], x) and a[1].shape == (8, 10) and torch.allclose(a[1].sum(1), torch.ones(8))
    assert (np.random.get_state()[1] == outside).all()
    assert mixer(0, 0, 0.1, 10, 0) is None


def _saved(path):
    try:
        return torch.load(path, weights_only=True)["train_state"]["loop"]
    except Exception:  # not there yet, or mid-rename
        return None


def test_kill_9_and_resume_with_mixup_gives_the_same_log(cifar10_dir, train_main, capsys, tmp_path):
    argv = ["--dataset", "cifar10", "--model", "simple_cnn", "--data-dir", str(cifar10_dir), "--train-per-class", "9",
            "--val-per-class", "3", "--epochs", "8", "-b", "8", "--device", "cpu", "--no-amp",
            "--mixup", "0.4", "--cutmix", "1.0", "--checkpoint-interval", "3", "--experiment", "run"]
    assert run_cli(train_main, [*argv, "--output", "ref"], capsys)[0] == 0
    last = tmp_path / "killed" / "run" / "last.pt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv, "--output", "killed"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill just after a mid-epoch save of epoch >= 2
        loop = _saved(last)
        if loop and loop["epoch"] >= 2 and loop["batch"] > 0:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    loop = _saved(last)
    assert loop and loop["batch"] > 0 and loop["epoch"] < 8, proc.stderr.read().decode()
    code, out, err = run_cli(train_main, ["--resume", str(last.parent)], capsys)
    assert code == 0, err
    ref, log = (pd.read_csv(tmp_path / d / "run" / "log.csv") for d in ("ref", "killed"))
    assert log["epoch"].tolist() == list(range(1, 9))
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert log[col].tolist() == pytest.approx(ref[col].tolist(), rel=1e-5, abs=1e-6), col


def test_a_fixed_size_model_trains_at_its_size_or_says_which(cifar10_dir, train_main, capsys, tmp_path):
    vit = ["--model", "vit_tiny_patch16_224", "--no-pretrained"]
    code, out, err = run_cli(train_main, c10(cifar10_dir, *vit, "--img-size", "64"), capsys)
    assert code == 2 and err.count("\n") == 1 and "pass --img-size 224" in err
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *vit,
                                          "--train-per-class", "2", "--val-per-class", "1", "--epochs", "1",
                                          "-b", "20", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "inputs 224 px" in out


def test_model_names_with_pretrained_tags_work():
    assert models.entry("resnet18.tv_in1k").timm_name == "resnet18.tv_in1k"


@pytest.mark.parametrize("extra, message", [
    (["--mixup", "-0.2"], "--mixup and --cutmix alphas must not be negative"),
    (["--cutmix", "1", "-b", "15"], "--batch-size must be even"),
    (["--freeze-epochs", "3", "--epochs", "3", "--pretrained-file", "W"], "--freeze-epochs must be at least 0 and fewer than --epochs (3)"),
    (["--model", "simple_cnn", "--freeze-epochs", "1"], "it needs weights to start from"),
    (["--backbone-lr-scale", "0"], "--backbone-lr-scale must be in (0, 1]"),
    (["--frozen-stages", "-1"], "--frozen-stages must not be negative"),
    (["--model", "simple_cnn", "--frozen-stages", "1"], "it needs weights to start from"),
    (["--frozen-stages", "5", "--pretrained-file", "W"], "--frozen-stages must be fewer than 5"),
    (["--img-size", "4"], "--img-size must be between 8 and 1024"),
    (["--micro-batch", "-1"], "--micro-batch must not be negative"),
    (["--initial-checkpoint", "nothing.pt"], "initial checkpoint nothing.pt not found"),
    (["--initial-checkpoint", "C10", "--pretrained-file", "W"], "contradict each other"),
    (["--model", "fast_cnn", "--initial-checkpoint", "C10"], "holds a simple_cnn network, not fast_cnn: pass --model simple_cnn"),
])
def test_bad_transfer_flags_one_line_nothing_written(cifar10_dir, train_main, capsys, tmp_path, r18_file, extra, message):
    c10_ckpt = tmp_path / "c10.pt"
    torch.save(dict(model="simple_cnn", num_classes=10, classes=list("abcdefghij"), mean=[0.5] * 3, std=[0.2] * 3,
                    dataset="cifar10", state_dict=models.create("simple_cnn", 10).state_dict()), c10_ckpt)
    extra = [{"W": str(r18_file), "C10": str(c10_ckpt)}.get(a, a) for a in extra]
    code, out, err = run_cli(train_main, ["--dataset", "cifar10", "--data-dir", str(cifar10_dir), *SMALL,
                                          *(["--model", "resnet18"] if "--model" not in extra else []), *extra], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
