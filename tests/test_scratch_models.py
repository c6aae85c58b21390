"""The scratch networks users come with (deep_cnn, branch_mix_net, resnet18_cifar) and --model-kwargs."""

import pandas as pd
import pytest
import torch

from cifarkit import checkpoint, models
from cifarkit.errors import UserError

from conftest import run_cli

NEW = ["deep_cnn", "branch_mix_net", "resnet18_cifar"]


def params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", NEW)
def test_new_models_classify_32px(name, num_classes):
    model = models.create(name, num_classes)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_resnet18_cifar_is_the_standard_one():
    model = models.create("resnet18_cifar", 10)
    assert params(model) == 11_173_962  # the CIFAR ResNet-18 of the literature, 10 classes
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    layers = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert [len(layer) for layer in layers] == [2, 2, 2, 2]
    assert [layer[-1].conv2.out_channels for layer in layers] == [64, 128, 256, 512]


def test_parameter_counts_as_documented():
    """README and docstrings: deep_cnn 1.2M, branch_mix_net 1.3M parameters (10 classes)."""
    assert round(params(models.create("deep_cnn", 10)) / 1e6, 1) == 1.2
    assert round(params(models.create("branch_mix_net", 10)) / 1e6, 1) == 1.3


@pytest.mark.parametrize("pool", [False, True])
def test_branch_mix_weights_come_from_the_input(pool):
    """Each image gets its own softmax mix of the branches, computed from that image."""
    block = models.BranchMix(8, 8, branches=3, pool=pool)
    torch.nn.init.normal_(block.gate.weight)
    x = torch.randn(2, 8, 16, 16)
    x[1] *= 5
    w = block.gate(x.mean((2, 3))).softmax(1)
    assert torch.allclose(w.sum(1), torch.ones(2)) and not torch.allclose(w[0], w[1])
    block.eval()
    outs = [torch.nn.functional.max_pool2d(conv(x), 2) if pool else conv(x) for conv in block.convs]
    by_hand = sum(out * w[:, i, None, None, None] for i, out in enumerate(outs))
    assert torch.allclose(block(x), torch.nn.functional.gelu(block.bn(by_hand)), atol=1e-5)


def test_parse_model_kwargs():
    got = models.parse_model_kwargs(["depth=3", "widths=(64, 128)", "dropout=0.5", "act=gelu", " x = [1,2] "])
    assert got == dict(depth=3, widths=(64, 128), dropout=0.5, act="gelu", x=[1, 2])
    assert models.parse_model_kwargs(None) == {}


@pytest.mark.parametrize("items, message", [
    (["depth"], "'depth' is not key=value"),
    (["=3"], "'=3' is not key=value"),
    (["depth=2", "depth=3"], "depth given twice"),
])
def test_parse_model_kwargs_refuses_bad_syntax(items, message):
    with pytest.raises(UserError, match=message) as e:
        models.parse_model_kwargs(items)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, kwargs", [
    ("simple_cnn", dict(depth=3)),
    ("deep_cnn", dict(widths=(16, 32, 64), depth=3, dropout=0.0)),
    ("branch_mix_net", dict(widths=(16, 32, 32), depth=1, branches=3)),
    ("resnet18_cifar", dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128))),
])
def test_model_kwargs_change_the_shape(name, kwargs):
    model = models.create(name, 10, model_kwargs=kwargs)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert params(model) != params(models.create(name, 10))
    assert model.training


def test_model_kwargs_reach_the_layers():
    net = models.create("branch_mix_net", 10, model_kwargs=dict(widths=(16, 24), depth=3, branches=4))
    blocks = [m for m in net.modules() if isinstance(m, models.BranchMix)]
    assert len(blocks) == 6 and all(len(b.convs) == 4 for b in blocks)
    assert [b.convs[0].out_channels for b in blocks] == [16, 16, 16, 24, 24, 24]
    assert models.create("deep_cnn", 10, model_kwargs=dict(dropout=0.3))[-2].p == 0.3
    assert models.create("resnet18_cifar", 10, model_kwargs=dict(drop_rate=0.25)).drop_rate == 0.25  # on to timm
    assert models.create("resnet18", 10, model_kwargs=dict(drop_rate=0.25)).drop_rate == 0.25


@pytest.mark.parametrize("name, kwargs, message", [
    ("deep_cnn", dict(depht=3), "deep_cnn has no 'depht'; accepted keys (defaults): widths=(32, 64, 128, 256), "
                                "depth=2, dropout=0.2"),
    ("simple_cnn", dict(branches=2), "simple_cnn has no 'branches'"),
    ("fast_cnn", dict(depth=2), "fast_cnn has no 'depth'; accepted keys (defaults): none"),
    ("deep_cnn", dict(depth=0), "depth=0 is not valid for deep_cnn"),
    ("deep_cnn", dict(depth="three"), "depth='three' is not valid for deep_cnn"),
    ("deep_cnn", dict(widths=(64, -8)), "widths=(64, -8) is not valid"),
    ("deep_cnn", dict(widths=64), "widths=64 is not valid"),
    ("branch_mix_net", dict(branches=1.5), "branches=1.5 is not valid"),
    ("deep_cnn", dict(dropout="high"), "dropout='high' is not valid"),
    ("deep_cnn", dict(dropout=1.5), "do not fit deep_cnn (dropout probability"),
    ("deep_cnn", dict(widths=(8,) * 6), "widths=(8, 8, 8, 8, 8, 8) do not fit deep_cnn"),  # pooled below 1 px
    ("resnet18_cifar", dict(layers=(2, 2)), "do not fit resnet18_cifar (layers and channels need 4 entries"),
    ("resnet18_cifar", dict(no_such=1), "no_such=1 do not fit resnet18_cifar (ResNet.__init__() got an unexpected "
                                           "keyword argument 'no_such'); accepted keys (defaults): layers=(2, 2, 2, 2)"),
    ("mobilenetv2_100", dict(no_such=1), "do not fit mobilenetv2_100"),
])
def test_bad_model_kwargs_one_line(name, kwargs, message):
    with pytest.raises(UserError) as e:
        models.create(name, 10, model_kwargs=kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, message", [(["widths=3"], "widths=3 is not valid for deep_cnn"),
                                             (["widths=(8,8,8,8,8,8)"], "do not fit deep_cnn")])
def test_bad_model_kwargs_refused_before_the_split_is_written(kwargs, message, tmp_path, train_main, capsys):
    """Offline with no data, the model's mistake is the one reported, and nothing is written."""
    argv = ["--dataset", "cifar10", "--model", "deep_cnn", "--data-dir", str(tmp_path / "empty"), "--device", "cpu",
            "--model-kwargs", *kwargs]
    code, out, err = run_cli(train_main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", NEW)
def test_one_epoch_and_predict_round_trip(name, cifar10_dir, train_main, predict_main, capsys, tmp_path):
    """Each new entry trains through the train CLI with its own defaults and comes back through predict."""
    code, out, err = run_cli(train_main, [
        "--dataset", "cifar10", "--model", name, "--data-dir", str(cifar10_dir), "--train-per-class", "4",
        "--val-per-class", "2", "--epochs", "1", "-b", "20", "--device", "cpu", "--experiment", name], capsys)
    assert code == 0, err
    best = checkpoint.load(tmp_path / "runs" / name / "best.pt")
    assert best["model"] == name and best["epoch"] == 1
    code, out, err = run_cli(predict_main, ["--checkpoint", str(tmp_path / "runs" / name / "best.pt"),
                                            "--submission", "sub.csv", "--device", "cpu"], capsys)
    assert code == 0, err
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert sub["id"].tolist() == list(range(40)) and sub["label"].between(0, 9).all()


def test_model_kwargs_are_stored_and_reused_by_predict_and_resume(cifar10_dir, train_main, predict_main, capsys,
                                                                  tmp_path):
    from cifarkit import checkpoint

    argv = ["--dataset", "cifar10", "--model", "deep_cnn", "--data-dir", str(cifar10_dir), "--train-per-class", "9",
            "--val-per-class", "3", "--epochs", "1", "-b", "16", "--device", "cpu", "--experiment", "kw",
            "--model-kwargs", "widths=(8,16)", "depth=1"]
    code, _, err = run_cli(train_main, argv, capsys)
    assert code == 0, err
    best = checkpoint.load(tmp_path / "runs" / "kw" / "best.pt")
    assert best["model_kwargs"] == {"widths": (8, 16), "depth": 1}
    assert best["state_dict"]["0.0.weight"].shape == (8, 3, 3, 3)
    assert run_cli(predict_main, ["--checkpoint", str(tmp_path / "runs" / "kw" / "best.pt")], capsys)[0] == 0
    code, out, err = run_cli(train_main, ["--resume", "runs/kw", "--epochs", "2"], capsys)
    assert code == 0, err
    assert checkpoint.load(tmp_path / "runs" / "kw" / "last.pt")["model_kwargs"] == {"widths": (8, 16), "depth": 1}
    bad = [a if a != "depth=1" else "depht=1" for a in argv]
    bad[bad.index("kw")] = "bad"
    code, _, err = run_cli(train_main, bad, capsys)
    assert code == 2 and err.count("\n") == 1 and "accepted keys" in err
