"""The training loop: split -> loader -> model -> one loop over epochs -> log, curves, checkpoints.

Defaults come from the model's registry entry; flags override them. The learning rate follows a
linear warm-up and linear decay over training progress, where progress is steps done / steps
planned, or, with a time budget, seconds spent / seconds allowed: the same schedule fits any budget.
"""

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
    get_recipe(args.aug)
    return args


def lr_factor(progress):
    if progress < WARMUP:
        return progress / WARMUP
    return max(0.0, (1 - progress) / (1 - WARMUP))


def fit(args):
    """Train one run; returns its folder (config.json, log.csv, curves.png, best.pt, last.pt)."""
    from .report import plot_curves

    args = resolve(args)
    device = runtime.pick_device(args.device)
    torch.manual_seed(args.seed)
    split_dir = split.ensure(args.dataset, args.data_dir, args.split_dir, args.train_per_class,
                             args.val_per_class, args.seed)
    s = split.load(split_dir, ("train", "val"))
    classes = s["manifest"]["classes"]
    mean, std = channel_stats(s["train_images"])
    model = models.create(args.model, len(classes), args.pretrained, args.pretrained_file)

    name = args.experiment or f"{args.dataset}-{args.model}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(args.output) / name
    if (run_dir / "last.pt").exists():
        raise UserError(f"{run_dir}/ already holds a run: choose another --experiment")
    amp = runtime.amp_dtype(device, args.amp)
    channels_last = args.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    norm = Normalize(mean, std, device, channels_last)
    if hasattr(model, "init_from_data"):
        sample = torch.from_numpy(s["train_images"][:5000]).permute(0, 3, 1, 2).to(device)
        model.init_from_data(norm(sample))

    r = get_recipe(args.aug)
    if r.albu:
        train_loader = AlbuLoader(s["train_images"], s["train_labels"], args.batch_size, norm, device,
                                  workers=args.workers, seed=args.seed)
    else:
        train_loader = DeviceLoader(s["train_images"], s["train_labels"], args.batch_size, norm, device, r,
                                    shuffle=True, drop_last=len(s["train_labels"]) >= args.batch_size, seed=args.seed)
    val_loader = DeviceLoader(s["val_images"], s["val_labels"], 512, norm, device)

    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    opt = create_optimizer_v2(model, "sgd", lr=args.lr, weight_decay=args.weight_decay, momentum=0.9)
    ema = ModelEmaV3(model, decay=0.999, use_warmup=True) if args.ema else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(run_dir=str(run_dir), split_dir=str(split_dir), device=str(device),
                  amp=str(amp).replace("torch.", "") if amp else "off", channels_last=channels_last,
                  mean=mean, std=std, num_classes=len(classes), train_images=len(s["train_labels"]))
    write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    print(f"training {args.model} on {args.dataset} ({len(s['train_labels'])} train / {len(s['val_labels'])} val) "
          f"on {device}{' with ' + config['amp'] + ' autocast' if amp else ''}, aug {args.aug}, "
          f"{'budget ' + str(args.time_budget) + ' s' if args.time_budget else str(args.epochs) + ' epochs'} -> {run_dir}/")

    steps_planned = args.epochs * len(train_loader)
    base = dict(model=args.model, num_classes=len(classes), classes=classes, mean=mean, std=std,
                dataset=args.dataset, split_dir=str(split_dir), seed=args.seed,
                train_per_class=s["manifest"]["train_per_class"], val_per_class=s["manifest"]["val_per_class"])
    rows, best, step, train_seconds = [], -1.0, 0, 0.0
    epoch, progress = 0, 0.0
    while progress < 1 and (args.time_budget or epoch < args.epochs):
        epoch += 1
        model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0
        total = f"/{args.epochs}" if not args.time_budget else ""
        bar = tqdm(train_loader, desc=f"epoch {epoch}{total}", leave=False, disable=None, unit="batch")
        for x, y in bar:
            elapsed = train_seconds + time.perf_counter() - t0
            progress = elapsed / args.time_budget if args.time_budget else step / steps_planned
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
                ema.update(model, step=step)
            step += 1
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds
        if not args.time_budget:
            progress = step / steps_planned
        if seen == 0:
            break
        eval_model = ema.module if ema is not None else model
        val_loss, val_acc = evaluate(eval_model, val_loader, device, amp)
        rows.append(dict(epoch=epoch, train_loss=loss_sum / seen, train_acc=correct / seen, val_loss=val_loss,
                         val_acc=val_acc, lr=lr, seconds=round(epoch_seconds, 2), train_seconds=round(train_seconds, 2)))
        _write_log(run_dir / "log.csv", rows)
        plot_curves(pd.DataFrame(rows), run_dir / "curves.png", f"{args.model} on {args.dataset}")
        state = dict(base, state_dict=eval_model.state_dict(), epoch=epoch, val_acc=val_acc,
                     train_seconds=train_seconds, device=str(device))
        if val_acc > best:
            best = val_acc
            checkpoint.save(run_dir / "best.pt", dict(state, best_val_acc=best))
        checkpoint.save(run_dir / "last.pt", dict(state, best_val_acc=best))
        print(f"epoch {epoch:3d}  train loss {rows[-1]['train_loss']:.4f} acc {rows[-1]['train_acc']:.4f}  "
              f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.4g}  {epoch_seconds:.1f}s", flush=True)
    if not rows:
        raise UserError("no epoch finished: raise --time-budget or --epochs")
    print(f"done: best val acc {best:.4f}, {train_seconds:.0f} s of training on {device}; run in {run_dir}/")
    return run_dir


def _write_log(path, rows):
    write_text(path, pd.DataFrame(rows).to_csv(index=False))
