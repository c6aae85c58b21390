"""The training loop: split -> loader -> model -> one loop over epochs -> log, curves, checkpoints.

Defaults come from the model's registry entry; flags override them. The learning rate follows a
linear warm-up and linear decay over training progress, where progress is steps done / steps
planned, or, with a time budget, seconds spent / seconds allowed: the same schedule fits any budget.

`last.pt` holds everything the loop needs to go on (weights, optimizer, scaler, EMA, RNG, epoch,
batch, log rows), written at every epoch end and every --checkpoint-interval steps; `--resume`
continues from it on the same curve, because batches depend only on (seed, epoch, batch index).
"""

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint, models, runtime, split
from .atomic import write_text
from .augment import recipe as get_recipe
from .errors import UserError
from .loader import AlbuLoader, DeviceLoader, Normalize, channel_stats
from .predict import evaluate

GLOBAL_DEFAULTS = dict(epochs=10, lr=0.05, batch_size=128, weight_decay=5e-4, aug="crop_flip",
                       label_smoothing=0.1, ema=False)
WARMUP = 0.1  # fraction of training spent warming the learning rate up


def resolve(args):
    """Fill the flags left unset (None) from the model's registry defaults, then the global ones."""
    e = models.entry(args.model)
    for k, v in GLOBAL_DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, e.defaults.get(k, v))
    if args.pretrained is None:
        args.pretrained = e.timm_name is not None or args.pretrained_file is not None
    if args.pretrained_file and not args.pretrained:
        raise UserError("--pretrained-file and --no-pretrained contradict each other")
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UserError("--epochs and --batch-size must be at least 1, --lr positive")
    if args.time_budget is not None and args.time_budget <= 0:
        raise UserError("--time-budget must be a positive number of seconds")
    if not 0 <= args.label_smoothing < 1 or args.weight_decay < 0:
        raise UserError("--label-smoothing must be in [0, 1) and --weight-decay not negative")
    if args.workers < 0 or args.checkpoint_interval < 0:
        raise UserError("--workers and --checkpoint-interval must not be negative")
    get_recipe(args.aug)
    return args


def lr_factor(progress):
    if progress < WARMUP:
        return progress / WARMUP
    return max(0.0, (1 - progress) / (1 - WARMUP))


def resume_point(resume, output):
    """The last.pt to continue from: a file, a run folder, or (flag alone) the newest run under --output."""
    if resume == "newest":
        return checkpoint.newest(output, name="last.pt")
    path = Path(resume)
    return path / "last.pt" if path.is_dir() else path


def fit(args):
    """Train one run (or continue one); returns its folder (config.json, log.csv, curves.png, best.pt, last.pt)."""
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    from .report import plot_curves

    saved = None
    if getattr(args, "resume", None):
        path = resume_point(args.resume, args.output)
        saved = checkpoint.load(path)
        if "train_state" not in saved:
            raise UserError(f"{path} cannot be resumed from (no training state): resume from a run's last.pt")
        args = argparse.Namespace(**saved["train_state"]["args"])
        run_dir = path.parent
    else:
        args = resolve(args)
        name = args.experiment or f"{args.dataset}-{args.model}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = Path(args.output) / name
        if (run_dir / "last.pt").exists():
            raise UserError(f"{run_dir}/ already holds a run: continue it with --resume {run_dir}, or choose another --experiment")

    device = runtime.pick_device(args.device)
    torch.manual_seed(args.seed)
    split_dir = split.ensure(args.dataset, args.data_dir, args.split_dir, args.train_per_class,
                             args.val_per_class, args.seed)
    s = split.load(split_dir, ("train", "val"))
    classes = s["manifest"]["classes"]
    mean, std = channel_stats(s["train_images"])
    model = models.create(args.model, len(classes), args.pretrained and saved is None, args.pretrained_file)
    amp = runtime.amp_dtype(device, args.amp)
    amp_name = str(amp).removeprefix("torch.") if amp else "off"
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    norm = Normalize(mean, std, device, args.channels_last)
    if hasattr(model, "init_from_data") and saved is None:
        sample = torch.from_numpy(s["train_images"][:5000]).permute(0, 3, 1, 2).to(device)
        model.init_from_data(norm(sample))

    r = get_recipe(args.aug)
    drop_last = len(s["train_labels"]) >= args.batch_size  # a split smaller than a batch still trains
    if r.albu:
        train_loader = AlbuLoader(s["train_images"], s["train_labels"], args.batch_size, norm, device,
                                  workers=args.workers, seed=args.seed, drop_last=drop_last)
    else:
        train_loader = DeviceLoader(s["train_images"], s["train_labels"], args.batch_size, norm, device, r,
                                    shuffle=True, drop_last=drop_last, seed=args.seed)
    val_loader = DeviceLoader(s["val_images"], s["val_labels"], 512, norm, device)

    opt = create_optimizer_v2(model, "sgd", lr=args.lr, weight_decay=args.weight_decay, momentum=0.9)
    ema = ModelEmaV3(model, decay=0.999, use_warmup=True) if args.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    # The loop's whole state; last.pt stores it, --resume restores it.
    st = dict(epoch=1, batch=0, step=0, train_seconds=0.0, best=-1.0, rows=[], loss_sum=0.0, correct=0, seen=0)
    if saved is None:
        config = dict(vars(args), run_dir=str(run_dir), split_dir=str(split_dir), device=str(device),
                      amp=amp_name, mean=mean, std=std,
                      num_classes=len(classes), train_images=len(s["train_labels"]))
        write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
        action = "training"
    else:
        ts = saved["train_state"]
        model.load_state_dict(ts["model"])
        opt.load_state_dict(ts["optimizer"])
        scaler.load_state_dict(ts["scaler"])
        if ema is not None:
            ema.load_state_dict(ts["ema"])
        torch.set_rng_state(ts["rng"])
        st.update(ts["loop"])
        action = f"resuming at epoch {st['epoch']}, batch {st['batch']}:"
    print(f"{action} {args.model} on {args.dataset} ({len(s['train_labels'])} train / {len(s['val_labels'])} val) "
          f"on {device}{f' with {amp_name} autocast' if amp else ''}, aug {args.aug}, "
          f"{f'budget {args.time_budget:g} s' if args.time_budget else f'{args.epochs} epoch(s)'} -> {run_dir}/",
          flush=True)

    base = dict(model=args.model, num_classes=len(classes), classes=classes, mean=mean, std=std,
                dataset=args.dataset, split_dir=str(split_dir), seed=args.seed, device=str(device),
                train_per_class=s["manifest"]["train_per_class"], val_per_class=s["manifest"]["val_per_class"])

    def save_last():
        eval_model = ema.module if ema is not None else model
        state = dict(
            model=model.state_dict(), optimizer=opt.state_dict(), scaler=scaler.state_dict(),
            ema=ema.state_dict() if ema is not None else None, rng=torch.get_rng_state(),
            loop={k: v for k, v in st.items()}, args=vars(args))
        last_row = st["rows"][-1] if st["rows"] else {}
        checkpoint.save(run_dir / "last.pt", dict(
            base, state_dict=eval_model.state_dict(), epoch=len(st["rows"]),
            val_acc=last_row.get("val_acc", float("nan")), best_val_acc=st["best"],
            train_seconds=st["train_seconds"], train_state=state))

    steps_planned = args.epochs * len(train_loader)
    progress, lr = 0.0, 0.0
    while progress < 1 and (args.time_budget or st["epoch"] <= args.epochs):
        model.train()
        t0 = time.perf_counter()
        seconds_before = st["train_seconds"]
        total = f"/{args.epochs}" if not args.time_budget else ""
        bar = tqdm(train_loader.batches(st["epoch"], st["batch"]), total=len(train_loader), initial=st["batch"],
                   desc=f"epoch {st['epoch']}{total}", leave=False, disable=None, unit="batch")
        # Running sums stay on the device: reading them each step would stall a GPU once per step.
        loss_sum = torch.tensor(st["loss_sum"], dtype=torch.float64, device=device)
        correct = torch.tensor(st["correct"], dtype=torch.int64, device=device)

        def sync():
            st["loss_sum"], st["correct"] = loss_sum.item(), int(correct.item())

        for x, y in bar:
            st["train_seconds"] = seconds_before + time.perf_counter() - t0
            progress = st["train_seconds"] / args.time_budget if args.time_budget else st["step"] / steps_planned
            if progress >= 1:
                break
            lr = args.lr * lr_factor(progress)
            for g in opt.param_groups:
                g["lr"] = lr
            with runtime.autocast(device, amp):
                out = model(x)
                loss = F.cross_entropy(out, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update(model, step=st["step"])
            st["step"] += 1
            st["batch"] += 1
            loss_sum += loss.detach().double() * len(y)
            correct += (out.argmax(1) == y).sum()
            st["seen"] += len(y)
            if bar.disable is False and st["step"] % 20 == 0:
                sync()
                bar.set_postfix(loss=f"{st['loss_sum'] / st['seen']:.3f}", acc=f"{st['correct'] / st['seen']:.3f}",
                                refresh=False)
            if args.checkpoint_interval and st["step"] % args.checkpoint_interval == 0:
                st["train_seconds"] = seconds_before + time.perf_counter() - t0
                sync()
                save_last()
        bar.close()
        sync()
        st["train_seconds"] = seconds_before + time.perf_counter() - t0
        if not args.time_budget:
            progress = st["step"] / steps_planned
        if st["seen"] == 0:
            break
        eval_model = ema.module if ema is not None else model
        val_loss, val_acc = evaluate(eval_model, val_loader, device, amp)
        epoch_seconds = st["train_seconds"] - sum(r["seconds"] for r in st["rows"])
        st["rows"].append(dict(
            epoch=st["epoch"], train_loss=st["loss_sum"] / st["seen"], train_acc=st["correct"] / st["seen"],
            val_loss=val_loss, val_acc=val_acc, lr=lr, seconds=round(epoch_seconds, 2),
            train_seconds=round(st["train_seconds"], 2), images_per_s=round(st["seen"] / max(epoch_seconds, 1e-9), 1)))
        write_text(run_dir / "log.csv", pd.DataFrame(st["rows"]).to_csv(index=False))
        plot_curves(pd.DataFrame(st["rows"]), run_dir / "curves.png", f"{args.model} on {args.dataset}")
        if val_acc > st["best"]:
            st["best"] = val_acc
            checkpoint.save(run_dir / "best.pt", dict(base, state_dict=eval_model.state_dict(), epoch=st["epoch"],
                                                      val_acc=val_acc, best_val_acc=val_acc,
                                                      train_seconds=st["train_seconds"]))
        row = st["rows"][-1]
        print(f"epoch {st['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
              f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.4g}  {epoch_seconds:.1f}s", flush=True)
        st.update(epoch=st["epoch"] + 1, batch=0, loss_sum=0.0, correct=0, seen=0)
        save_last()
    if not st["rows"]:
        raise UserError("no epoch finished: raise --time-budget or --epochs")
    print(f"done: best val acc {st['best']:.4f}, {st['train_seconds']:.0f} s of training on {device}; run in {run_dir}/")
    return run_dir
