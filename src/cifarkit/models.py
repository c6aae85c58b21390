"""The model registry: one function and one `@register` line per model; any timm name also works.

Each entry carries its training defaults (epochs, lr, batch size), so `train.py --model X` is
sensible without flags. Its shape knobs (widths, depth, branches) are keyword arguments with
defaults, which `--model-kwargs key=value` changes without a new function, as in timm. Pretrained
weights come from the timm hub, or from a local file (`--pretrained-file`) that must fit the
network except for its classifier.
"""

import ast
import inspect
import pickle
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError


@dataclass
class Entry:
    build: callable
    defaults: dict = field(default_factory=dict)
    timm_name: str = None  # set for transfer models: pretrained weights come from this timm model


MODELS = {}

TRANSFER_DEFAULTS = dict(epochs=10, lr=0.01, batch_size=128, weight_decay=5e-4, aug="crop_flip")


def register(timm_name=None, **defaults):
    def deco(fn):
        MODELS[fn.__name__] = Entry(fn, defaults, timm_name)
        return fn
    return deco


def conv_bn(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def vgg(num_classes, widths, depth, dropout):
    """Stages of `depth` conv-BN-ReLU layers, each stage closed by a 2x2 max-pool, then global pooling."""
    layers, cin = [], 3
    for w in widths:
        for _ in range(depth):
            layers.append(conv_bn(cin, w))
            cin = w
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))


@register(epochs=12, lr=0.05, batch_size=128, weight_decay=5e-4, aug="crop_flip", label_smoothing=0.0)
def simple_cnn(num_classes, widths=(32, 64, 128), depth=2, dropout=0.1):
    """The baseline: a plain VGG-style net (0.3M parameters), the kind a first attempt would use."""
    return vgg(num_classes, widths, depth, dropout)


@register(epochs=15, lr=0.05, batch_size=128, weight_decay=5e-4, aug="crop_flip", label_smoothing=0.1)
def deep_cnn(num_classes, widths=(32, 64, 128, 256), depth=2, dropout=0.2):
    """The classic answer to 'go deeper, add normalisation': simple_cnn's recipe one stage deeper (1.2M parameters).

    The textbook widths=(64, 128, 256, 512) (4.7M) train 3x slower per CPU thread than these, too slow to
    beat simple_cnn in ten CPU minutes; they suit a GPU.
    """
    return vgg(num_classes, widths, depth, dropout)


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU: pooling early halves the cost of the second conv."""

    def __init__(self, cin, cout, bn_weight=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, momentum=0.4)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=0.4)
        for conv in (self.conv1, self.conv2):  # identity-like start: each conv first passes its input on
            w = conv.weight.data
            nn.init.dirac_(w[: w.size(1)])
        for bn in (self.bn1, self.bn2):  # without a trainable scale, as airbench: Muon keeps the filters' norm fixed
            bn.weight.requires_grad_(bn_weight)

    def forward(self, x):
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.bn2(self.conv2(x)))


class BranchMix(nn.Module):
    """Several convs side by side on one input, mixed per image by weights computed from that input.

    Branch i is a 3x3 conv with dilation i+1, so the branches see 3, 5, 7... px neighbourhoods at equal
    cost; the gate (global average pool -> linear -> softmax) picks per image how much of each to take.
    With `pool`, each branch is max-pooled before the mix (the same as pooling the scaled branch, since
    the weights are positive), so the mix runs on a quarter of the pixels. The gate starts at zero
    (equal weights) and every branch starts identity-like, as in ConvGroup.
    """

    def __init__(self, cin, cout, branches, pool=False):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=d, dilation=d, bias=False)
                                   for d in range(1, branches + 1))
        for conv in self.convs:
            nn.init.dirac_(conv.weight.data[: min(cin, cout)])
        self.gate = nn.Linear(cin, branches)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.pool = pool
        self.bn = nn.BatchNorm2d(cout, momentum=0.4)

    def forward(self, x):
        w = self.gate(x.mean((2, 3))).softmax(1)
        y = 0
        for i, conv in enumerate(self.convs):
            out = F.max_pool2d(conv(x), 2) if self.pool else conv(x)
            y = y + out * w[:, i, None, None, None].to(out.dtype)
        return F.gelu(self.bn(y))


def branch_stage(cin, cout, branches, depth):
    """One stage of branch-mixing blocks; the first pools (before BN, as ConvGroup does)."""
    return nn.Sequential(BranchMix(cin, cout, branches, pool=True),
                         *(BranchMix(cout, cout, branches) for _ in range(depth - 1)))


class FastNet(nn.Module):
    """An airbench-class net: a frozen patch-whitening stem set from the data, a stack of conv groups.

    The whitening stem decorrelates 2x2 pixel patches, so the first layers need not learn it;
    `init_from_data` sets it from training images before the first step. `group(cin, cout)` builds
    each stage (ConvGroup for fast_cnn); the head is a global max-pool and a scaled linear layer
    (`head_std`: its initial weights' std, None for PyTorch's default).
    """

    def __init__(self, num_classes, widths=(64, 256, 256), whiten_width=24, group=ConvGroup, logit_scale=1 / 9,
                 head_std=None):
        super().__init__()
        self.whiten = nn.Conv2d(3, whiten_width, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from data, never trained
        cins = (whiten_width, *widths[:-1])
        self.groups = nn.Sequential(*(group(cin, cout) for cin, cout in zip(cins, widths)))
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        if head_std is not None:
            nn.init.normal_(self.head.weight, std=head_std)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_from_data(self, images, eps=5e-4):
        """Whitening filters from the eigenvectors of the 2x2 patch covariance (and their negatives)."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N,C,H',W',2,2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        evals, evecs = torch.linalg.eigh(cov)
        filters = (evecs.T / torch.sqrt(evals + eps)[:, None]).flip(0).reshape(12, 3, 2, 2)
        half = self.whiten.out_channels // 2
        self.whiten.weight.copy_(torch.cat([filters[:half], -filters[:half]]))
        self.whiten.bias.zero_()

    def forward(self, x):
        x = F.gelu(self.whiten(x))
        x = self.groups(x)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)
        return self.head(x) * self.logit_scale


@register(epochs=10, lr=0.2, batch_size=256, weight_decay=5e-4, aug="crop_flip", label_smoothing=0.2, ema=True)
def fast_cnn(num_classes):
    """Fast scratch net for GPUs and longer CPU budgets (2.0M parameters)."""
    return FastNet(num_classes, widths=(64, 256, 256))


@register(epochs=10, lr=0.2, batch_size=256, weight_decay=5e-4, aug="crop_flip", label_smoothing=0.2, ema=True)
def fast_cnn_s(num_classes):
    """The same design at about half the compute, for CPU budgets (1.2M parameters)."""
    return FastNet(num_classes, widths=(64, 128, 256))


MUON_DEFAULTS = dict(epochs=8, lr=0.24, batch_size=2000, weight_decay=2e-6, aug="shift_altflip", label_smoothing=0.2,
                     ema=False, optimizer="muon", warmup=0.0)
MUON_CPU = dict(cpu_batch_size=1000, cpu_lr=0.17)  # an image costs a CPU the same in either batch: take twice the steps


@register(**MUON_DEFAULTS, **MUON_CPU, without_native_bf16="fast_cnn_s_muon")
def fast_cnn_muon(num_classes, widths=(64, 256, 256)):
    """fast_cnn trained as the CIFAR-10 speed record trains it (airbench94_muon): Muon for the filters, batches of
    2000, shifts of 2 px and flips that alternate by epoch; batch norm without a trainable scale, the head
    started at std 1 and scaled by 1/width, as the record's rates expect (see train.MUON). On a CPU, batches of
    1000 at Muon rate 0.24/sqrt(2): an image costs the same there, and twice the steps gave 94.44% against 94.26% in
    600 s (five seeds each, README). A CPU without native bf16 trains it in fp32, where fast_cnn_s_muon has 1.7x its
    images/s (`without_native_bf16`: train.py says so when it starts)."""
    return FastNet(num_classes, widths, group=partial(ConvGroup, bn_weight=False), logit_scale=1 / widths[-1],
                   head_std=1.0)


@register(**MUON_DEFAULTS, **MUON_CPU)
def fast_cnn_s_muon(num_classes, widths=(64, 128, 256)):
    """The record's recipe at fast_cnn_s's widths, for CPUs: 1.7x its images/s, and 89.7% CIFAR-10 test against
    87.1% for fast_cnn_muon in 900 s on a 2-core AMD EPYC (README, 'The speed recipe'). On a CPU in batches of 1000
    at rate 0.17 as fast_cnn_muon: 92.17% against 91.85% in 150 s, eight seeds each (README)."""
    return fast_cnn_muon(num_classes, widths)


@register(epochs=10, lr=0.2, batch_size=256, weight_decay=5e-4, aug="crop_flip", label_smoothing=0.2, ema=True)
def branch_mix_net(num_classes, widths=(48, 96, 192), depth=2, branches=2):
    """A course-project design made fast: stages of branch-mixing blocks on fast_cnn's stem, head and recipe
    (1.3M parameters). Two branches double the convolutions, so the widths are fast_cnn_s's x0.75 to keep
    a CPU budget's epochs; widths=(64, 128, 256) (2.3M) is 1.4x slower per CPU thread.
    """
    return FastNet(num_classes, widths, group=lambda cin, cout: branch_stage(cin, cout, branches, depth))


@register(timm_name="resnet18", **TRANSFER_DEFAULTS)
def resnet18(num_classes, **timm_kwargs):
    """timm ResNet18 with the max-pool removed from its stem, so 32-px inputs keep a 16x16 map after it.

    The stock stem shrinks a 32-px image to 8x8 before the first block; upsampling to 128 px costs
    11x the compute. Dropping the max-pool keeps conv1 as it is, so ImageNet files load unchanged
    (see README, 'Why this ResNet18 stem', and benchmarks/resnet18_stem.py).
    """
    import timm

    model = timm.create_model("resnet18", num_classes=num_classes, **timm_kwargs)
    model.maxpool = nn.Identity()
    return model


@register(epochs=30, lr=0.1, batch_size=128, weight_decay=5e-4, aug="crop_flip", label_smoothing=0.1)
def resnet18_cifar(num_classes, layers=(2, 2, 2, 2), channels=(64, 128, 256, 512), **timm_kwargs):
    """The CIFAR ResNet-18 (11.2M parameters), timm's ResNet with a 3x3 stride-1 stem and no max-pool.

    The standard from-scratch reference; its published figures (about 95% CIFAR-10, 76-78% CIFAR-100)
    take some 200 epochs on a GPU. `layers` and `channels` are timm's names; other kwargs go to timm.
    """
    import timm

    if len(layers) != 4 or len(channels) != 4:
        raise ValueError("layers and channels need 4 entries, one per stage")
    model = timm.create_model("resnet18", num_classes=num_classes, layers=layers, channels=channels, **timm_kwargs)
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as timm inits its convs
    model.maxpool = nn.Identity()
    return model


@register(timm_name="mobilenetv2_100", **dict(TRANSFER_DEFAULTS, img_size=80, batch_size=64, freeze_epochs=1, lr=0.05,
                                              backbone_lr_scale=0.1, frozen_stages=3, cpu_amp=False))
def mobilenetv2_100(num_classes, **timm_kwargs):
    """timm MobileNetV2 (width 1.0), stock stem, fed batches upsampled to 80 px, classifier first.

    At 32 px its stride-32 stem leaves a 1x1 final map; upsampled inputs are what its ImageNet
    weights expect. On a 2-core CPU 80 px beat 64, 96 and 128 at equal time, and batches of 64
    train faster per image than 128 (README, 'Transfer learning'). One cheap frozen epoch first,
    the new classifier at lr 0.05 and the backbone at 0.005, and the stem and first two stages held
    throughout (--frozen-stages 3): their backward pass at 40x40 and 20x20 was 40% of a step, and
    ImageNet's edge filters need no tuning: 66.1% on the partial CIFAR-100 in 300 s (12 epochs),
    vs 64.7% holding one stage more. bf16 autocast is off on CPUs: its depthwise convolutions ran
    slower in bf16 than in fp32 here (117 vs 133 images/s at 96 px, 413 vs 846 at 32 px).
    """
    import timm

    return timm.create_model("mobilenetv2_100", num_classes=num_classes, **timm_kwargs)


def list_models():
    return sorted(MODELS)


def entry(name):
    """The registry entry for `name`, or a transfer entry for any other timm model name."""
    if name in MODELS:
        return MODELS[name]
    import timm

    if timm.is_model(name):  # tags too: resnet18.tv_in1k
        return Entry(lambda num_classes, **timm_kwargs: timm.create_model(name, num_classes=num_classes, **timm_kwargs),
                     dict(TRANSFER_DEFAULTS), name)
    raise UserError(f"unknown model {name!r}: ours are {', '.join(list_models())}, or give any timm model name")


def parse_model_kwargs(items):
    """`key=value` strings -> dict. Values are Python literals (depth=3, widths=(64,128)); anything else stays a string."""
    kwargs = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--model-kwargs: {item!r} is not key=value (e.g. depth=3 or widths=(64,128,256))")
        if key in kwargs:
            raise UserError(f"--model-kwargs: {key} given twice")
        try:
            kwargs[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key] = text.strip()
    return kwargs


def model_kwargs_of(name):
    """The shape knobs a model takes, with their defaults, and whether it passes other kwargs on to timm."""
    params = list(inspect.signature(entry(name).build).parameters.values())[1:]  # after num_classes
    knobs = {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return knobs, any(p.kind is p.VAR_KEYWORD for p in params)


def _fits(value, default):
    """A value of the default's kind: a bool, a positive whole number, a number, a string, or a tuple of those."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, int):
        return isinstance(value, int) and value > 0
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list)) and len(value) > 0 and all(_fits(v, default[0]) for v in value)
    return isinstance(value, type(default))


def _check_model_kwargs(name, kwargs):
    """Refuse, in one line naming the key and the accepted ones, a key the model lacks or a value of the wrong kind.

    Returns the kwargs (lists made tuples) and the accepted keys in words, for later messages.
    """
    knobs, to_timm = model_kwargs_of(name)
    accepted = "accepted keys (defaults): " + (", ".join(f"{k}={v!r}" for k, v in knobs.items()) or "none")
    if to_timm:
        accepted += ", and keyword arguments of timm.create_model"
    for key, value in kwargs.items():
        if key not in knobs and not to_timm:
            raise UserError(f"--model-kwargs: {name} has no {key!r}; {accepted}")
        if key in knobs and not _fits(value, knobs[key]):
            raise UserError(f"--model-kwargs: {key}={value!r} is not valid for {name} (give a value like the "
                            f"default, whole numbers positive); {accepted}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}, accepted


def _build(name, build, num_classes, kwargs, accepted):
    """Build, and with kwargs try one forward pass, so a shape that does not fit fails now in one line."""
    if not kwargs:
        return build(num_classes)
    given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        model = build(num_classes, **kwargs)
        size = input_size(name)
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size))
        return model.train()
    except (TypeError, ValueError, RuntimeError) as e:  # timm's unknown keyword, a negative size, a shape clash
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--model-kwargs {given} do not fit {name} ({first}); {accepted}") from None


def create(name, num_classes, pretrained=False, pretrained_file=None, model_kwargs=None):
    """Build a model (its shape changed by `model_kwargs`); with `pretrained`, load ImageNet weights
    from `pretrained_file` or the timm hub."""
    e = entry(name)
    model = _build(name, e.build, num_classes, *_check_model_kwargs(name, model_kwargs or {}))
    if not pretrained:
        return model
    if e.timm_name is None:
        raise UserError(f"{name} is a scratch model with no pretrained weights: drop --pretrained / --pretrained-file")
    state = read_weights(pretrained_file) if pretrained_file else _hub_weights(e.timm_name)
    load_backbone(model, state, f"{pretrained_file or 'hub weights'}", e.timm_name)
    return model


def _hub_reachable(endpoint):
    """A fast DNS look-up of the hub, so an offline user gets one line now instead of a minute of retries.

    Behind a proxy the local look-up proves nothing, so the download is simply tried.
    """
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")):
        return True
    try:
        socket.getaddrinfo(urlparse(endpoint).hostname, 443)
        return True
    except OSError:
        return False


def _hub_weights(timm_name):
    import huggingface_hub.constants as hub
    import timm

    was_offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = was_offline or not _hub_reachable(hub.ENDPOINT)  # offline: the cache only
    try:
        return timm.create_model(timm_name, pretrained=True).state_dict()
    except Exception as e:  # offline, hub refused, cache unwritable: same remedy
        raise UserError(
            f"cannot fetch ImageNet weights for {timm_name} from the timm hub ({type(e).__name__}); "
            f"offline, pass --pretrained-file PATH (a timm or torchvision {timm_name} file), or --no-pretrained"
        ) from None
    finally:
        hub.HF_HUB_OFFLINE = was_offline


def read_weights(path):
    """Read weights without running code: torch.load(weights_only=True), or safetensors; wrappers removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: refused, it holds pickled objects beyond plain weights (unsafe to load)") from None
    except Exception as e:  # truncated zip, not a torch file, bad header
        raise UserError(f"{path}: not a readable weights file ({type(e).__name__})") from None
    for key in ("state_dict_ema", "state_dict", "model"):  # timm and common training-script wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def classifier_name(model):
    """The classifier's module name: timm's get_classifier() where the model has it, else the last Linear."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    linears = [name for name, m in model.named_modules() if m is head or (head is None and isinstance(m, nn.Linear))]
    if not linears:
        raise UserError(f"cannot tell {type(model).__name__}'s classifier: it has no linear layer")
    return linears[-1]


def stem_modules(model, name, stages):
    """Names of the modules in the first `stages` of timm's coarse layer groups (the stem, then one group
    per stage), which --frozen-stages holds for the whole run; the classifier's group is never among them."""
    if not stages:
        return []
    if not hasattr(model, "group_matcher"):
        raise UserError(f"--frozen-stages needs a timm network with layer groups; {name} has none")
    from timm.models import group_modules

    groups = list(group_modules(model, model.group_matcher(coarse=True)).values())
    if stages >= len(groups) - 1:
        raise UserError(f"--frozen-stages must be fewer than {len(groups) - 1}: {name} has {len(groups) - 1} "
                        f"layer groups before its classifier, and some must train")
    return [m for group in groups[:stages] for m in group]


def load_backbone(model, state, source, timm_name):
    """Load every weight but the classifier; refuse a file that does not fit instead of half-loading it."""
    head = classifier_name(model)

    def is_head(k):
        return k.startswith(head + ".")

    own = model.state_dict()
    state = {k: v for k, v in state.items() if not is_head(k)}
    missing = [k for k in own if k not in state and not is_head(k) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        problems = [f"{len(x)} {what} (e.g. {x[0]})" for x, what in
                    ((missing, "weights missing"), (unexpected, "unexpected keys"), (wrong, "shapes differ")) if x]
        raise UserError(f"{source} is not a {timm_name} weights file: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def amp_dtype(name, device, amp=None):
    """runtime.amp_dtype with this model's own word on CPU autocast (its registry entry's `cpu_amp`)."""
    from .runtime import amp_dtype

    return amp_dtype(device, amp, entry(name).defaults.get("cpu_amp"))


def pretrained_cfg(name):
    """timm's pretrained config for a transfer model (input size, mean/std), read without any download."""
    e = entry(name)
    if e.timm_name is None:
        return None
    import timm

    return timm.get_pretrained_cfg(e.timm_name)


def input_size(name, requested=None):
    """The input size to train at: as asked (default 32), unless the model takes only one size (a ViT's
    patch embedding asserts it), which is then taken from its pretrained config or asked for in one line."""
    cfg = pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        fixed = cfg.input_size[-1]
        if requested not in (None, fixed):
            raise UserError(f"{name} takes {fixed}-px inputs only (fixed input size): pass --img-size {fixed}, or leave it out")
        return fixed
    return requested or 32


def load_initial(model, state, source, name):
    """Start from another run's (or any) weights: all of them when the classifier fits, else all but the
    classifier, which stays new. Returns a line saying what happened, for the log."""
    head = classifier_name(model) + "."
    own = model.state_dict()
    fits = all(k in own and own[k].shape == v.shape for k, v in state.items() if k.startswith(head))
    if fits and any(k.startswith(head) for k in state):
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise UserError(f"{source} does not fit {name} ({first})") from None
        return f"started from {source} (all weights)"
    load_backbone(model, state, source, name)
    out = own[head + "weight"].shape[0]
    theirs = next((v.shape[0] for k, v in state.items() if k == head + "weight"), "no")
    return f"started from {source}; classifier replaced ({theirs} classes there, {out} here)"
