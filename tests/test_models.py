import os
import pickle

import pytest
import timm
import torch
import torchvision

from cifarkit import models
from cifarkit.errors import UserError


def test_registry_lists_our_models():
    assert {"simple_cnn", "fast_cnn", "resnet18"} <= set(models.list_models())


@pytest.mark.parametrize("name", ["simple_cnn", "fast_cnn", "resnet18"])
def test_models_classify_32px(name):
    model = models.create(name, 100)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_any_timm_name_works():
    assert models.create("mobilenetv2_100", 7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_model():
    with pytest.raises(UserError, match="unknown model 'nope'"):
        models.create("nope", 10)


@pytest.mark.parametrize("make", [
    lambda: torchvision.models.resnet18().state_dict(),
    lambda: timm.create_model("resnet18").state_dict(),
    lambda: {"state_dict": {"module." + k: v for k, v in timm.create_model("resnet18").state_dict().items()}},
])
def test_real_resnet18_files_load_unchanged(tmp_path, make):
    state = make()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = models.create("resnet18", 100, pretrained=True, pretrained_file=path)
    flat = state.get("state_dict", state)
    src = flat.get("conv1.weight", flat.get("module.conv1.weight"))
    assert torch.equal(model.conv1.weight, src)
    assert torch.equal(model.layer4[1].bn2.running_var, flat.get("layer4.1.bn2.running_var", flat.get("module.layer4.1.bn2.running_var")))
    assert model.fc.out_features == 100


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    state = timm.create_model("resnet18").state_dict()
    path = tmp_path / "r18.safetensors"
    save_file(state, str(path))
    model = models.create("resnet18", 10, pretrained=True, pretrained_file=path)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_backbone_without_classifier_loads(tmp_path):
    state = {k: v for k, v in timm.create_model("mobilenetv2_100").state_dict().items() if not k.startswith("classifier")}
    path = tmp_path / "mnv2.pth"
    torch.save(state, path)
    model = models.create("mobilenetv2_100", 100, pretrained=True, pretrained_file=path)
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])


def test_file_of_another_network_is_refused(tmp_path):
    path = tmp_path / "mnv2.pth"
    torch.save(timm.create_model("mobilenetv2_100").state_dict(), path)
    with pytest.raises(UserError, match="is not a resnet18 weights file: .*weights missing"):
        models.create("resnet18", 10, pretrained=True, pretrained_file=path)


def test_weights_with_pickled_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Evil()}, path, pickle_protocol=2)
    with pytest.raises(UserError, match="refused"):
        models.create("resnet18", 10, pretrained=True, pretrained_file=path)
    assert not marker.exists()


def test_truncated_weights_file(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(UserError, match="not a readable weights file"):
        models.create("resnet18", 10, pretrained=True, pretrained_file=path)


def test_fast_cnn_whitening_from_data():
    model = models.create("fast_cnn", 10)
    images = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    model.init_from_data(images)
    out = model.whiten(images)
    assert not model.whiten.weight.requires_grad
    # whitened responses of the first half of the filters have roughly unit variance
    var = out[:, :12].permute(1, 0, 2, 3).flatten(1).var(1)
    assert torch.allclose(var, torch.ones(12), atol=0.2)
