"""The training loop, in four parts that each own one concern (the shape of timm's train.py):

- `setup`: the run folder, split, model, optimizer and loaders, and the state to resume from;
- `train_one_epoch`: the steps (learning rate, forward/backward, EMA, mid-epoch saves);
- `predict.evaluate`: validation, sharded over the ranks and reduced under torchrun;
- `Writer`: every file and line a run leaves, written by rank 0 alone.

Defaults come from the model's registry entry; flags override them. The learning rate follows a
linear warm-up and linear decay over training progress, where progress is steps done / steps
planned, or, with a time budget, seconds spent / seconds allowed (the slowest rank's, so all ranks
stop at the same step): the same schedule fits any budget.

`last.pt` holds everything the loop needs to go on (weights, optimizer, scaler, EMA, RNG, the
`LoopState`), written at every epoch end and every --checkpoint-interval steps; `--resume`
continues from it on the same curve, because batches depend only on (seed, epoch, batch index).
"""

import argparse
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, models, runtime, split
from .atomic import write_text
from .augment import mixer
from .augment import recipe as get_recipe
from .errors import UserError
from .loader import AlbuLoader, DeviceLoader, EasySkip, Normalize, channel_stats
from .predict import evaluate, inference_batch

GLOBAL_DEFAULTS = dict(epochs=10, lr=0.05, batch_size=128, weight_decay=5e-4, aug="crop_flip",
                       label_smoothing=0.1, ema=False, img_size=None, freeze_epochs=0, backbone_lr_scale=1.0,
                       frozen_stages=0, mixup=0.0, cutmix=0.0, optimizer="sgd", warmup=0.1, skip_easy=0.0)
# airbench94_muon's optimizer (fast_cnn_muon): Muon at --lr for the conv filters; SGD for the rest at rates per
# image of the batch (the record sums its loss over the batch), --weight-decay per image too; the whitening
# bias trains for the first 3/8 of the run only, its rate falling to 0 by then.
MUON = dict(momentum=0.6, ns_steps=3, sgd_momentum=0.85, head_lr=0.67, bias_lr=0.053, whiten_share=3 / 8)
# A CPU computes a larger batch in chunks of at most this many images by default (--micro-batch): peak memory
# 2.4 GB against 3.5 GB whole for fast_cnn_muon's 2000, at the same speed once malloc keeps freed memory (epoch 1
# 50.0 s against 49.8 s; the 55-58 s against 72-80 s first measured for chunks came from page faults, see
# runtime.keep_freed_memory). Every CPU accuracy figure of the speed recipe was measured with chunks of 1000.
CPU_MICRO_BATCH = 1000
EXTENDABLE = ("epochs", "time_budget")  # what --resume may change: the length of the run
FINE_TUNING = ("freeze_epochs", "backbone_lr_scale", "frozen_stages")  # a registry's, for starts from weights only


def recipe_defaults(name, cpu=False):
    """A model's recipe, each training flag from its registry defaults, else the global ones; on a CPU an entry's
    `cpu_<flag>` wins (a recipe tuned where a step's cost does not depend on the batch size)."""
    defaults = models.entry(name).defaults
    return {k: defaults.get(f"cpu_{k}", defaults.get(k, v)) if cpu else defaults.get(k, v)
            for k, v in GLOBAL_DEFAULTS.items()}


def resolve(args, cpu=False):
    """Fill the flags left unset (None) from the model's recipe (recipe_defaults) for the device (cpu or not).
    A CPU's `cpu_` values are tuned to its batch size, so another -b takes the model's recipe for the rest."""
    e = models.entry(args.model)
    asked = {k for k in FINE_TUNING if getattr(args, k, None) is not None}
    cpu = cpu and getattr(args, "batch_size", None) in (None, e.defaults.get("cpu_batch_size"))
    for k, v in recipe_defaults(args.model, cpu).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.initial_checkpoint:
        if args.pretrained or args.pretrained_file:
            raise UserError("--initial-checkpoint and --pretrained / --pretrained-file contradict each other: "
                            "a run starts from one set of weights")
        if not Path(args.initial_checkpoint).is_file():
            raise UserError(f"initial checkpoint {args.initial_checkpoint} not found")
        args.pretrained = False
    if args.pretrained is None:
        args.pretrained = e.timm_name is not None or args.pretrained_file is not None
    if args.pretrained_file and not args.pretrained:
        raise UserError("--pretrained-file and --no-pretrained contradict each other")
    has_weights = args.pretrained or bool(args.initial_checkpoint)
    if not has_weights:
        for k in set(FINE_TUNING) - asked:
            setattr(args, k, GLOBAL_DEFAULTS[k])
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UserError("--epochs and --batch-size must be at least 1, --lr positive")
    if args.time_budget is not None and args.time_budget <= 0:
        raise UserError("--time-budget must be a positive number of seconds")
    if not 0 <= args.label_smoothing < 1 or args.weight_decay < 0:
        raise UserError("--label-smoothing must be in [0, 1) and --weight-decay not negative")
    if args.workers < 0 or args.checkpoint_interval < 0:
        raise UserError("--workers and --checkpoint-interval must not be negative")
    args.model_kwargs = models.parse_model_kwargs(args.model_kwargs)
    args.img_size = models.input_size(args.model, args.img_size)
    if not 8 <= args.img_size <= 1024:
        raise UserError("--img-size must be between 8 and 1024 pixels")
    if args.freeze_epochs < 0 or (not args.time_budget and args.freeze_epochs >= args.epochs):
        raise UserError(f"--freeze-epochs must be at least 0 and fewer than --epochs ({args.epochs})")
    if args.freeze_epochs and not has_weights:
        raise UserError("--freeze-epochs trains the classifier alone first: it needs weights to start from "
                        "(pretrained or --initial-checkpoint)")
    if args.frozen_stages < 0:
        raise UserError("--frozen-stages must not be negative")
    if args.frozen_stages and not has_weights:
        raise UserError("--frozen-stages holds the first layers as they start: it needs weights to start from "
                        "(pretrained or --initial-checkpoint)")
    if args.model_kwargs or args.frozen_stages:  # refused now, before the split is written; meta allocates nothing
        with torch.device("meta"):
            model = models.create(args.model, 10, model_kwargs=args.model_kwargs)
            if args.frozen_stages:
                models.stem_modules(model, args.model, args.frozen_stages)
    if not 0 < args.backbone_lr_scale <= 1:
        raise UserError("--backbone-lr-scale must be in (0, 1]")
    if args.micro_batch is not None and args.micro_batch < 0:
        raise UserError("--micro-batch must not be negative (0: the whole batch at once)")
    if args.mixup < 0 or args.cutmix < 0:
        raise UserError("--mixup and --cutmix alphas must not be negative")
    if not 0 <= args.skip_easy < 1:
        raise UserError("--skip-easy is a probability in [0, 1): 0 trains every image every epoch")
    if args.skip_easy and get_recipe(args.aug).albu:
        raise UserError("--skip-easy needs a batched augmentation on the device, not --aug albu")
    if args.pseudo_labels and not 0 < args.pseudo_threshold < 1:
        raise UserError("--pseudo-threshold must be between 0 and 1")
    if args.pseudo_labels and not Path(args.pseudo_labels).is_file():
        raise UserError(f"checkpoint {args.pseudo_labels} not found")
    if (args.mixup or args.cutmix) and args.batch_size % 2:
        raise UserError("--mixup / --cutmix pair each image with another: --batch-size must be even")
    get_recipe(args.aug)
    return args


def lr_factor(progress, warmup=0.1):
    """Linear warm-up over the first `warmup` of training, then linear decay to 0 at progress 1."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1 - progress) / (1 - warmup))


def set_lr(opts, args, progress):
    """Every group's rate at this progress: --lr x its lr_scale x lr_factor; a group with a share `until` < 1
    runs the whole schedule within that share of the run, then stays at 0. Returns --lr's scheduled value."""
    for opt in opts:
        for g in opt.param_groups:
            g["lr"] = args.lr * g["lr_scale"] * lr_factor(min(progress / g.get("until", 1.0), 1), args.warmup)
    return args.lr * lr_factor(progress, args.warmup)


def resume_point(resume, output):
    """The last.pt to continue from: a file, a run folder, or (flag alone) the newest run under --output."""
    if resume == "newest":
        return checkpoint.newest(output, name="last.pt")
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


@dataclass
class LoopState:
    """Where the loop stands; last.pt stores it and --resume restores it. Under torchrun the running
    sums saved are the sums over all ranks, so after a resume rank 0 alone carries them on."""
    epoch: int = 1
    batch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    best: float = -1.0
    rows: list = field(default_factory=list)
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    image_loss: object = None  # --skip-easy: each training image's loss when last trained on (a tensor)
    keep: object = None  # --skip-easy: the images this epoch trains on (a bool tensor), None: all

    def next_epoch(self):
        self.epoch, self.batch, self.loss_sum, self.correct, self.seen = self.epoch + 1, 0, 0.0, 0, 0


@dataclass
class Run:
    """What `setup` hands the loop."""
    args: argparse.Namespace
    run_dir: Path
    dist: runtime.Dist
    device: torch.device
    amp: object
    model: nn.Module  # the network itself: checkpoints and EMA read it
    train_model: nn.Module  # what the steps call: the same network, DDP-wrapped and/or compiled
    ema: object
    opts: list  # SGD; for a Muon model (optimizer="muon" in its registry entry) also Muon, for the filters
    scaler: torch.amp.GradScaler
    train_loader: object
    val_loader: DeviceLoader
    meta: dict  # what every checkpoint carries for predict
    config: dict
    state: LoopState
    resumed: bool
    head: str  # the classifier's module name
    backbone: list  # the trainable parameters outside the classifier, held during --freeze-epochs
    held: list  # the modules --frozen-stages keeps as they started, weights and batch-norm statistics
    mix: object  # timm Mixup/CutMix for a batch, or None
    criterion: object  # soft-target cross-entropy with mixing, else cross-entropy with label smoothing
    notes: list  # lines for the set-up message
    phase: tuple = None  # (frozen, parameters done with their schedule) the training wrapper was built for
    skip: object = None  # EasySkip under --skip-easy, else None

    @property
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    def progress(self):
        if self.args.time_budget:
            return self.dist.max(self.state.train_seconds / self.args.time_budget)
        # epochs done and the share of this one (whose length --skip-easy varies); step / all steps otherwise
        return (self.state.epoch - 1 + self.state.batch / len(self.train_loader)) / self.args.epochs


def _open_run(args, dist, device):
    """(args, run folder, saved last.pt or None): a new run's resolved flags, or a resumed run's own,
    lengthened if --epochs / --time-budget ask for it."""
    if not getattr(args, "resume", None):
        args = resolve(args, device.type == "cpu")
        name = dist.broadcast(args.experiment or f"{args.dataset}-{args.model}-{datetime.now():%Y%m%d-%H%M%S}")
        run_dir = Path(args.output) / name
        if (run_dir / "last.pt").exists():
            raise UserError(f"{run_dir}/ already holds a run: continue it with --resume {run_dir}, or choose another --experiment")
        return args, run_dir, None
    path = resume_point(args.resume, args.output)
    saved = checkpoint.load(path)
    if "train_state" not in saved:
        raise UserError(f"{path} cannot be resumed from (no training state): resume from a run's last.pt")
    longer = {k: getattr(args, k) for k in EXTENDABLE if getattr(args, k, None) is not None}
    # The run's own settings; a flag it predates takes this version's default.
    args = argparse.Namespace(**{**vars(args), **GLOBAL_DEFAULTS, **saved["train_state"]["args"]})
    if "split_seed" not in saved["train_state"]["args"]:  # runs from before --split-seed: --seed chose the split
        args.split_seed = args.seed
    done = saved["train_state"]["loop"]
    if "epochs" in longer:
        if args.time_budget:
            raise UserError(f"{path.parent} was trained with --time-budget: lengthen it with --time-budget, not --epochs")
        if longer["epochs"] < done["epoch"] - (done["batch"] == 0):
            raise UserError(f"--epochs {longer['epochs']} is fewer than the run has done already")
    if "time_budget" in longer:
        if not args.time_budget:
            raise UserError(f"{path.parent} was trained for a number of epochs: lengthen it with --epochs")
        if longer["time_budget"] <= done["train_seconds"]:
            raise UserError(f"--time-budget {longer['time_budget']:g} is less than the {done['train_seconds']:.0f} s trained already")
    vars(args).update(longer)
    return args, path.parent, saved


def setup(args):
    """Everything the loop needs, built once: run folder, split, model, optimizer, loaders, resume state."""
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    dist, device = runtime.init_distributed(getattr(args, "device", "auto"))
    if device.type == "cpu":
        runtime.keep_freed_memory()
    args, run_dir, saved = _open_run(args, dist, device)
    if args.micro_batch is None:  # a new run's default; a run saved before --micro-batch took whole batches
        args.micro_batch = default_micro_batch(device, args.batch_size) if saved is None else 0
    if dist.world > 1:
        runtime.stop_on_sigterm(run_dir)
    if args.sync_bn and dist.world > 1 and device.type != "cuda":
        raise UserError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on CPUs")
    if (args.mixup or args.cutmix) and args.batch_size // dist.world % 2:
        raise UserError(f"--mixup / --cutmix need an even batch on each of the {dist.world} processes")
    init_state, init_ckpt = (None, None)
    if args.initial_checkpoint and saved is None:
        init_state, init_ckpt = checkpoint.initial(args.initial_checkpoint)
        if init_ckpt is not None and init_ckpt["model"] != args.model:
            raise UserError(f"{args.initial_checkpoint} holds a {init_ckpt['model']} network, not {args.model}: "
                            f"pass --model {init_ckpt['model']}")
    torch.manual_seed(args.seed)  # the same on every rank: one initialisation, as DDP expects
    split_dir = dist.first(lambda: split.ensure(args.dataset, args.data_dir, args.split_dir, args.train_per_class,
                                                args.val_per_class, args.split_seed))
    s = split.load(split_dir, ("train", "val"))
    classes = s["manifest"]["classes"]
    train_x, train_y, val_x, val_y, notes = _training_set(args, s, split_dir, device)
    if 0 < args.micro_batch < args.batch_size // dist.world:
        notes.append(f"batches of {args.batch_size // dist.world} computed in chunks of {args.micro_batch} "
                     f"(--micro-batch), one step a batch")
    model = dist.first(lambda: models.create(args.model, len(classes), args.pretrained and saved is None,
                                             args.pretrained_file, args.model_kwargs))
    if init_state is not None:
        notes.append(models.load_initial(model, init_state, args.initial_checkpoint, args.model))
    mean, std, stats = _stats(args, train_x, init_ckpt, saved)
    amp = models.amp_dtype(args.model, device, args.amp)
    faster = models.entry(args.model).defaults.get("without_native_bf16")
    if faster and device.type == "cpu" and not runtime.cpu_has_native_bf16():
        notes.append(f"this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16): --model {faster} trains "
                     f"faster here than {args.model}")
    if args.sync_bn and dist.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    norm = Normalize(mean, std, device, args.channels_last, args.img_size)
    if hasattr(model, "init_from_data") and saved is None and init_state is None:
        sample = torch.from_numpy(train_x[:5000]).permute(0, 3, 1, 2).to(device)
        model.init_from_data(norm(sample))
    head = models.classifier_name(model)
    held = models.stem_modules(model, args.model, args.frozen_stages)
    for m in held:
        model.get_submodule(m).requires_grad_(False)
    if held:
        notes.append(f"--frozen-stages {args.frozen_stages}: {held[0]} to {held[-1]} held as they start "
                     f"({sum(p.numel() for m in held for p in model.get_submodule(m).parameters(recurse=False)):,} "
                     f"parameters)")
    backbone = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith(head + ".")]

    r = get_recipe(args.aug)
    drop_last = len(train_y) >= args.batch_size  # a split smaller than a batch still trains
    if r.albu:
        train_loader = AlbuLoader(train_x, train_y, args.batch_size, norm, device,
                                  workers=args.workers, seed=args.seed, drop_last=drop_last, dist=dist)
    else:
        train_loader = DeviceLoader(train_x, train_y, args.batch_size, norm, device, r,
                                    shuffle=True, drop_last=drop_last, seed=args.seed, dist=dist)
    val_loader = DeviceLoader(val_x, val_y, inference_batch(device), norm, device, dist=dist)

    opts = optimizers(model, head, args)
    ema = ModelEmaV3(model, decay=0.999, use_warmup=True) if args.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    state = LoopState()
    if saved is not None:
        ts = saved["train_state"]
        model.load_state_dict(ts["model"])
        saved_opts = ts["optimizer"] if isinstance(ts["optimizer"], list) else [ts["optimizer"]]
        try:
            if len(saved_opts) != len(opts):
                raise ValueError
            for opt, sd in zip(opts, saved_opts):
                opt.load_state_dict(sd)
        except ValueError:  # a run saved by a version with other parameter groups
            raise UserError(f"{run_dir} was saved by an older cifarkit whose optimizer state does not fit this "
                            f"one: start a new run (its best.pt still predicts)") from None
        scaler.load_state_dict(ts["scaler"])
        if ema is not None:
            ema.load_state_dict(ts["ema"])
        torch.set_rng_state(ts["rng"])
        if device.type == "cuda" and ts.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ts["cuda_rng"], device)
        state = LoopState(**ts["loop"])
        if state.image_loss is not None:
            state.image_loss = state.image_loss.to(device)
        if not dist.main:  # the saved running sums are all ranks'; rank 0 carries them on
            state.loss_sum, state.correct, state.seen = 0.0, 0, 0

    meta = dict(model=args.model, num_classes=len(classes), classes=classes, mean=mean, std=std,
                img_size=args.img_size, model_kwargs=args.model_kwargs, normalised_with=stats, dataset=args.dataset, split_dir=str(split_dir),
                seed=args.seed, split_seed=args.split_seed, device=str(device), train_per_class=s["manifest"]["train_per_class"], val_per_class=s["manifest"]["val_per_class"],
                val_images=len(val_y))  # 0: nothing held out of training (--train-on-val), no val score to give
    config = dict(vars(args), run_dir=str(run_dir), split_dir=str(split_dir), device=str(device),
                  amp=str(amp).removeprefix("torch.") if amp else "off", mean=mean, std=std, normalised_with=stats,
                  num_classes=len(classes), train_images=len(train_y), val_images=len(val_y),
                  params=sum(p.numel() for p in model.parameters()), world_size=dist.world)
    mix = mixer(args.mixup, args.cutmix, args.label_smoothing, len(classes), args.seed)
    criterion = SoftTargetCrossEntropy() if mix else partial(F.cross_entropy, label_smoothing=args.label_smoothing)
    skip = None
    if args.skip_easy:
        skip = EasySkip(args.skip_easy, args.seed, dist.lowest if dist.world > 1 else None)
        if state.image_loss is None:
            state.image_loss = torch.full((len(train_y),), float("inf"), device=device)
        notes.append(f"--skip-easy {args.skip_easy:g}: from epoch 2 each image of the easier half sits the epoch "
                     f"out with probability {args.skip_easy:g} (epochs of about {1 - args.skip_easy / 2:.0%} of the "
                     f"images)")
    return Run(args, run_dir, dist, device, amp, model, None, ema, opts, scaler, train_loader, val_loader,
               meta, config, state, saved is not None, head, backbone, held, mix, criterion, notes, skip=skip)


def _training_set(args, s, split_dir, device):
    """(train images, labels, val images, labels, notes): the split's, or for the final fit train + val
    (no validation left), plus the test images a given model labels confidently (--pseudo-labels)."""
    from .predict import pseudo_labels

    x, y, vx, vy, notes = s["train_images"], s["train_labels"], s["val_images"], s["val_labels"], []
    if args.train_on_val:
        x, y, vx, vy = np.concatenate([x, vx]), np.concatenate([y, vy]), vx[:0], vy[:0]
        notes.append(f"final fit on train + val: all {len(y)} labelled images")
    if args.pseudo_labels:
        px, py = pseudo_labels(args.pseudo_labels, split_dir, s["manifest"]["classes"], args.pseudo_threshold, device)
        x, y = np.concatenate([x, px]), np.concatenate([y, py])
        notes.append(f"pseudo-labels: {len(py)} test images that {args.pseudo_labels} labels with confidence "
                     f">= {args.pseudo_threshold:g} join the training set (transductive; some competitions forbid it)")
    return x, y, vx, vy, notes


def _stats(args, train_images, init, saved):
    """Mean/std to normalise with: the starting weights' own (a pretrained config, our checkpoint), as
    they were trained with; the training split's for a scratch net or with --norm-stats split."""
    if saved is not None:
        return saved["mean"], saved["std"], saved.get("normalised_with", "the run's own")
    if init is not None and args.norm_stats == "auto":
        return init["mean"], init["std"], f"the initial checkpoint's ({init['dataset']})"
    if args.pretrained and args.norm_stats == "auto":
        cfg = models.pretrained_cfg(args.model)
        return list(cfg.mean), list(cfg.std), f"the pretrained weights' own ({models.entry(args.model).timm_name})"
    mean, std = channel_stats(train_images)
    return mean, std, "the training split's"


def param_groups(model, head, weight_decay, backbone_scale):
    """Built once, so --resume restores the optimizer exactly: no weight decay on biases and norms
    (timm's rule), and the layers outside the classifier at lr x --backbone-lr-scale."""
    groups = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (name.startswith(head + "."), p.ndim <= 1 or name.endswith(".bias"))
            groups.setdefault(key, []).append(p)
    return [dict(params=ps, weight_decay=0.0 if no_decay else weight_decay,
                 lr_scale=1.0 if in_head else backbone_scale) for (in_head, no_decay), ps in groups.items()]


def optimizers(model, head, args):
    """[SGD] with Nesterov momentum for every trainable parameter; for a model whose registry entry says
    optimizer="muon", [SGD for biases and the classifier, Muon for the conv filters], rates as in MUON."""
    if args.optimizer == "sgd":
        return [torch.optim.SGD(param_groups(model, head, args.weight_decay, args.backbone_lr_scale), lr=args.lr,
                                momentum=0.9, nesterov=True)]
    filters, groups = [], {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 4:
            filters.append(p)
            continue
        kind = "head" if name.startswith(head + ".") else "whiten" if name == "whiten.bias" else "bias"
        groups.setdefault(kind, []).append(p)
    sgd = []
    for kind, ps in groups.items():
        per_image = MUON["head_lr" if kind == "head" else "bias_lr"]
        sgd.append(dict(params=ps, lr_scale=per_image * args.batch_size / args.lr,
                        weight_decay=args.weight_decay / per_image,
                        until=MUON["whiten_share"] if kind == "whiten" else 1.0))
    opts = [torch.optim.SGD(sgd, lr=args.lr, momentum=MUON["sgd_momentum"], nesterov=True)] if sgd else []
    if filters:
        opts.append(normed_muon()([dict(params=filters, lr_scale=1.0)], lr=args.lr, momentum=MUON["momentum"],
                                  nesterov=True, ns_steps=MUON["ns_steps"], ns_coefficients="original",
                                  adjust_lr_fn="original"))
    return opts


def normed_muon():
    """The class, built on first use: importing timm.optim takes seconds."""
    import timm.optim.muon as timm_muon

    class NormedMuon(timm_muon.Muon):
        """timm's Muon, each filter bank first rescaled to norm sqrt(output channels), as airbench94_muon does:
        batch norm follows every conv, so the scale carries nothing, and a fixed one keeps the step's size
        relative to the weights the same all run. timm orthogonalises in bf16, which a CPU without native bf16
        emulates (2.8 s a step for fast_cnn's filters on a 2-core AMD EPYC Zen 3): there it runs in fp32."""

        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            first = self.param_groups[0]["params"][0]  # decided once: the CPU check reads /proc/cpuinfo
            self.fp32 = first.device.type == "cpu" and not runtime.cpu_has_native_bf16()

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:  # not a filter held this step (--freeze-epochs)
                        p.mul_(len(p) ** 0.5 / p.norm())
            if not self.fp32:
                return super().step(closure)
            fp32 = partial(timm_muon.zeropower_via_newtonschulz, dtype=torch.float32)
            with patch.object(timm_muon, "zeropower_via_newtonschulz", fp32):
                return super().step(closure)

    return NormedMuon


def set_phase(r):
    """--freeze-epochs: the classifier trains alone first, the backbone's weights and batch-norm statistics
    held, then everything. A group whose schedule has ended (the whitening bias after its 3/8, at rate 0 from then
    on) stops taking gradients from the next epoch, as the record's detach does: that spares the first conv its
    input gradient, 6% of fast_cnn_muon's step on a CPU. DDP and torch.compile wrap the network for the phase's
    trainable set."""
    frozen = r.state.epoch <= r.args.freeze_epochs
    progress = r.progress()
    done = [p for opt in r.opts for g in opt.param_groups if g.get("until", 1) < 1 and progress >= g["until"]
            for p in g["params"]]
    if (frozen, len(done)) != r.phase:
        for p in r.backbone:
            p.requires_grad_(not frozen)
        for p in done:
            p.requires_grad_(False)
        r.train_model = r.model
        if r.dist.world > 1:
            r.train_model = nn.parallel.DistributedDataParallel(
                r.model, device_ids=[r.device.index] if r.device.type == "cuda" else None)
        if r.args.torchcompile:
            r.train_model = torch.compile(r.train_model, backend=r.args.torchcompile)
        r.phase = (frozen, len(done))
    r.train_model.train()
    if frozen:
        r.model.eval()
        r.model.get_submodule(r.head).train()
    for m in r.held:
        r.model.get_submodule(m).eval()


def _global_sums(r, loss_sum, correct):
    """(loss sum, correct, images) of the epoch so far, over all ranks. Called by every rank before each save and
    at the epoch's end, which is where --skip-easy's ranks pool their images' losses too."""
    if r.skip:
        r.skip.pool(r.state.image_loss)
    t = torch.stack([loss_sum, correct.double(), torch.tensor(float(r.state.seen), device=r.device, dtype=torch.float64)])
    loss, right, seen = r.dist.sum(t).tolist()
    return loss, int(round(right)), int(round(seen))


def default_micro_batch(device, batch_size):
    """--micro-batch left out: chunks of CPU_MICRO_BATCH for a larger batch on a CPU, else whole."""
    return CPU_MICRO_BATCH if device.type == "cpu" and batch_size > CPU_MICRO_BATCH else 0


def forward_backward(r, x, target):
    """The batch's outputs and mean loss, its gradients accumulated: in chunks of --micro-batch images where
    that is set, each chunk's loss weighted by its share of the batch, so the step is the batch's (batch norm
    aside, which normalises each chunk by its own statistics), with a chunk's feature maps in memory at a time."""
    n = -(-len(x) // (r.args.micro_batch or len(x)))  # chunks of equal size (within one image), none larger
    outs, total = [], 0
    for i, (xc, tc) in enumerate(zip(x.tensor_split(n), target.tensor_split(n))):
        with nullcontext() if i == n - 1 or r.dist.world == 1 else r.train_model.no_sync():  # DDP: one all-reduce
            with runtime.autocast(r.device, r.amp):
                out = r.train_model(xc)
                loss = r.criterion(out, tc) * (len(xc) / len(x))
            r.scaler.scale(loss).backward()
        outs.append(out.detach())
        total = total + loss.detach()
    return torch.cat(outs) if n > 1 else outs[0], total


def train_one_epoch(r, writer):
    """The steps of one epoch, from where the state stands; stops early when progress reaches 1.
    Returns the epoch's last learning rate and its (loss sum, correct, images) over all ranks."""
    st, args = r.state, r.args
    if r.skip:  # before set_phase, whose progress reads this epoch's length
        if st.batch == 0:  # a mid-epoch resume keeps its epoch's choice
            st.keep = r.skip.choose(st.image_loss, st.epoch)
            if st.keep is not None and r.train_loader.drop_last and st.keep.sum() < args.batch_size:
                st.keep = None  # too few images left for one batch: the epoch takes them all
        r.train_loader.keep = st.keep
    set_phase(r)
    t0, before = time.perf_counter(), st.train_seconds
    batches = (r.train_loader.batches(st.epoch, st.batch, with_index=True) if r.skip  # DeviceLoader's alone
               else r.train_loader.batches(st.epoch, st.batch))
    bar = writer.bar(batches, len(r.train_loader), st.batch,
                     f"epoch {st.epoch}" + ("" if args.time_budget else f"/{args.epochs}"))
    live = not bar.disable  # tqdm leaves disable None on a terminal
    # Running sums stay on the device: reading them each step would stall a GPU once per step.
    loss_sum = torch.tensor(st.loss_sum, dtype=torch.float64, device=r.device)
    correct = torch.tensor(st.correct, dtype=torch.int64, device=r.device)
    lr = 0.0
    for x, y, *idx in bar:
        st.train_seconds = before + time.perf_counter() - t0
        progress = r.progress()
        if progress >= 1:
            break
        lr = set_lr(r.opts, args, progress)
        x, target = r.mix(x, y, st.epoch, st.batch) if r.mix else (x, y)
        r.model.zero_grad(set_to_none=True)
        out, loss = forward_backward(r, x, target)
        if r.skip:
            r.skip.record(st.image_loss, idx[0], out, y)
        for opt in r.opts:
            r.scaler.step(opt)
        r.scaler.update()
        if r.ema is not None:
            r.ema.update(r.model, step=st.step)
        st.step += 1
        st.batch += 1
        loss_sum += loss.detach().double() * len(y)
        correct += (out.argmax(1) == y).sum()
        st.seen += len(y)
        if live and st.step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / st.seen:.3f}", acc=f"{correct.item() / st.seen:.3f}",
                            refresh=False)
        if args.checkpoint_interval and st.step % args.checkpoint_interval == 0:
            st.train_seconds = before + time.perf_counter() - t0
            writer.save_last(_global_sums(r, loss_sum, correct))
    bar.close()
    st.loss_sum, st.correct = loss_sum.item(), int(correct.item())
    st.train_seconds = before + time.perf_counter() - t0
    return lr, _global_sums(r, loss_sum, correct)


class Writer:
    """Every file and line a run leaves: config.json, log.csv, curves.png, best.pt, last.pt, the
    set-up and epoch lines, the progress bar. Off rank 0 it stays quiet and writes nothing."""

    # curves.png at most this often: a redraw takes 0.4 s, longer than an epoch of fast_cnn_muon on an H200
    PLOT_EVERY_S = 30

    def __init__(self, r):
        self.r, self.on = r, r.dist.main
        self.plotted = (None, 0)  # (when, epochs drawn)

    def print(self, text):
        if self.on:
            print(text, flush=True)

    def bar(self, batches, total, initial, desc):
        return tqdm(batches, total=total, initial=initial, desc=desc, leave=False, unit="batch",
                    disable=None if self.on else True)

    def start(self):
        r, a = self.r, self.r.args
        if self.on and not r.resumed:
            write_text(r.run_dir / "config.json", json.dumps(r.config, indent=2) + "\n")
        st = r.state
        action = f"resuming at epoch {st.epoch}, batch {st.batch}:" if r.resumed else "training"
        ranks = f" x {r.dist.world} processes" if r.dist.world > 1 else ""
        amp = f" with {r.config['amp']} autocast" if r.amp else ""
        self.print(f"{action} {a.model} on {a.dataset} ({r.config['train_images']} train / "
                   f"{r.config['val_images']} val) on {r.device}{ranks}{amp}, aug {a.aug}, "
                   f"{f'budget {a.time_budget:g} s' if a.time_budget else f'{a.epochs} epoch(s)'} -> {r.run_dir}/")
        for note in r.notes + [f"inputs {a.img_size} px, normalised with {r.config['normalised_with']} mean/std"]:
            self.print(note)
        if not r.config["val_images"]:
            self.print("no validation images: no validation figure exists; best.pt holds the weights of the last "
                       "epoch, the model to use")

    def end_epoch(self, lr, sums, val_loss, val_acc):
        r, st = self.r, self.r.state
        loss, right, seen = sums
        epoch_seconds = st.train_seconds - sum(row["seconds"] for row in st.rows)
        st.rows.append(dict(
            epoch=st.epoch, train_loss=loss / seen, train_acc=right / seen, val_loss=val_loss, val_acc=val_acc,
            lr=lr, seconds=round(epoch_seconds, 2), train_seconds=round(st.train_seconds, 2),
            images_per_s=round(seen / max(epoch_seconds, 1e-9), 1)))
        improved = val_acc > st.best or not r.config["val_images"]
        if improved:
            st.best = val_acc
        if not self.on:
            return
        write_text(r.run_dir / "log.csv", pd.DataFrame(st.rows).to_csv(index=False))
        self.plot(every=self.PLOT_EVERY_S)
        if improved:
            checkpoint.save(r.run_dir / "best.pt", dict(
                r.meta, state_dict=r.eval_model.state_dict(), epoch=st.epoch, val_acc=val_acc,
                best_val_acc=val_acc, train_seconds=st.train_seconds))
        val = f"val loss {val_loss:.4f} acc {val_acc:.4f}" if r.config["val_images"] else "no val images"
        print(f"epoch {st.epoch:3d}  train loss {loss / seen:.4f} acc {right / seen:.4f}  {val}  lr {lr:.4g}  "
              f"{epoch_seconds:.1f}s", flush=True)

    def plot(self, every=0):
        """curves.png from the epochs so far, unless it already shows them all or was drawn less than `every`
        seconds ago; fit() draws the last ones when the run ends."""
        from .report import plot_curves

        r, (when, drawn) = self.r, self.plotted
        if not self.on or drawn == len(r.state.rows) or (when is not None and time.perf_counter() - when < every):
            return
        plot_curves(pd.DataFrame(r.state.rows), r.run_dir / "curves.png", f"{r.args.model} on {r.args.dataset}")
        self.plotted = (time.perf_counter(), len(r.state.rows))

    def save_last(self, sums=None):
        """last.pt: the weights to use and the whole training state. `sums` are the running sums of a
        mid-epoch save over all ranks (None at an epoch's end)."""
        r = self.r
        if not self.on:
            return
        loop = asdict(r.state)
        if sums is not None:
            loop["loss_sum"], loop["correct"], loop["seen"] = sums
        state = dict(
            model=r.model.state_dict(), optimizer=[opt.state_dict() for opt in r.opts], scaler=r.scaler.state_dict(),
            ema=r.ema.state_dict() if r.ema is not None else None, rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(r.device) if r.device.type == "cuda" else None,
            loop=loop, args=vars(r.args))
        last_row = r.state.rows[-1] if r.state.rows else {}
        checkpoint.save(r.run_dir / "last.pt", dict(
            r.meta, state_dict=r.eval_model.state_dict(), epoch=len(r.state.rows),
            val_acc=last_row.get("val_acc", float("nan")), best_val_acc=r.state.best,
            train_seconds=r.state.train_seconds, train_state=state))


def fit(args):
    """Train one run (or continue one); returns its folder (config.json, log.csv, curves.png, best.pt, last.pt)."""
    r = setup(args)
    try:
        w, st = Writer(r), r.state
        w.start()
        while r.progress() < 1 and (r.args.time_budget or st.epoch <= r.args.epochs):
            lr, sums = train_one_epoch(r, w)
            if sums[2] == 0:
                break
            w.end_epoch(lr, sums, *evaluate(r.eval_model, r.val_loader, r.device, r.amp, dist=r.dist))
            st.next_epoch()
            w.save_last()
        if not st.rows:
            raise UserError("no epoch finished: raise --time-budget or --epochs")
        w.plot()
        best = f"best val acc {st.best:.4f}, " if r.config["val_images"] else ""
        w.print(f"done: {best}{st.train_seconds:.0f} s of training on {r.device}; run in {r.run_dir}/")
    except RuntimeError as e:
        raise runtime.lost_peer(e, r.dist, r.run_dir) from None
    finally:
        runtime.end_distributed()
    return r.run_dir
