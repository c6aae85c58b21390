"""Use a trained model: evaluate on a labelled split, predict the hidden test split, write the submission."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import checkpoint, models, runtime, split, submission
from .atomic import atomic_path
from .errors import UserError
from .loader import DeviceLoader, Normalize


def inference_batch(device):
    """Images per inference batch. On a CPU a small batch keeps its largest feature maps in cache: predict.py on
    10,000 CIFAR-10 images with fast_cnn_s_muon took 12.7-13.6 s in batches of 128 against 16.3-18.0 s in 512,
    and 78 s against 100 s with flip_shift TTA (interleaved, one process, 2-core AMD EPYC, fp32). A GPU wants
    large ones."""
    return 512 if device.type == "cuda" else 128


TTA = {"flip": "average with the horizontally flipped image",
       "flip_shift": "also with the image and its flip shifted by 1 px both ways (6 views)",
       "flip_shift_unsure": "flip_shift's 6 views for the least sure fifth of the images only (smallest "
                            "margin between the top two classes), 1 view for the rest: twice the cost of none"}
UNSURE_SHARE = 0.2  # of the images, the least sure: as accurate as flip_shift on three CIFAR-10 checkpoints (README)
TTA_DEFAULT = "flip_shift_unsure"  # `--tta` alone: flip's cost, ahead of flip wherever both were measured (README)


def _views(x, tta):
    if tta not in (None, "flip", "flip_shift"):  # flip_shift_unsure ranks the whole set: logits() alone does it
        raise ValueError(f"no per-batch views for TTA {tta!r}")
    yield x
    if tta:
        yield x.flip(3)
    if tta == "flip_shift":
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        h, w = x.shape[-2:]
        for dy, dx in ((0, 0), (2, 2)):
            shifted = padded[..., dy:dy + h, dx:dx + w]
            yield shifted
            yield shifted.flip(3)


def _averaged(model, x, device, amp, tta):
    with runtime.autocast(device, amp):
        return torch.stack([model(v).float() for v in _views(x, tta)]).mean(0)


@torch.no_grad()
def logits(model, loader, device, amp=None, tta=None):
    """Logits for every batch of `loader`, in order; with `tta` (a TTA key), averaged over views."""
    model.eval()
    if tta == "flip_shift_unsure":
        return _unsure_averaged(model, loader, device, amp)
    return torch.cat([_averaged(model, x, device, amp, tta) for x, _ in loader])


def _unsure_averaged(model, loader, device, amp):
    """flip_shift where the plain view is least sure. The share is ranked over the whole set (two passes), so
    the result does not depend on the batch size; a chosen image gets exactly flip_shift's average."""
    z = torch.cat([_averaged(model, x, device, amp, None) for x, _ in loader])
    top2 = z.softmax(1).topk(min(2, z.shape[1]), 1).values
    margin = top2[:, 0] - top2[:, -1]
    chosen = torch.zeros(len(z), dtype=torch.bool, device=z.device)
    chosen[margin.topk(math.ceil(UNSURE_SHARE * len(z)), largest=False).indices] = True
    start = 0
    for x, _ in loader:
        part, rows = z[start:start + len(x)], chosen[start:start + len(x)]  # part is a view: written into z
        if rows.any():
            with runtime.autocast(device, amp):
                others = [model(v).float() for v in list(_views(x[rows], "flip_shift"))[1:]]
            part[rows] = torch.stack([part[rows], *others]).mean(0)
        start += len(x)
    return z


@torch.no_grad()
def evaluate(model, loader, device, amp=None, tta=None, dist=None):
    """Mean cross-entropy and accuracy over a labelled loader (NaN for an empty one). Under torchrun
    each rank scores its share of every batch and the sums are reduced."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, images
    for x, y in loader:
        z = _averaged(model, x, device, amp, tta)
        sums += torch.stack([F.cross_entropy(z, y, reduction="sum"), (z.argmax(1) == y).sum(),
                             torch.tensor(len(y), device=device)]).double()
    if dist is not None:
        dist.sum(sums)
    loss, correct, n = sums.tolist()
    return (loss / n, correct / n) if n else (float("nan"), float("nan"))


def load_model(ckpt, device, channels_last=True):
    """Rebuild the network named in a checkpoint and load its weights; refuse a mismatch clearly."""
    model = models.create(ckpt["model"], ckpt["num_classes"], model_kwargs=ckpt.get("model_kwargs"))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise UserError(f"checkpoint weights do not fit {ckpt['model']} with {ckpt['num_classes']} classes ({first})") from None
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def held_out(ckpt):
    """How many of the split's labelled images the model never trained on: 0 after --train-on-val. A checkpoint
    from before train.py recorded it says so only as a best.pt: its val_acc is NaN where no val images existed
    (a last.pt saved within epoch 1 has NaN too, so the count is the one to trust)."""
    return ckpt.get("val_images", 0 if math.isnan(ckpt["val_acc"]) else None)


def _members(args):
    """The checkpoints to predict with (newest run's best.pt by default), all of one data set and class list."""
    paths = [Path(c) for c in args.checkpoint] if args.checkpoint else [checkpoint.newest(args.output, args.dataset)]
    ckpts = [checkpoint.load(p) for p in paths]
    for path, ckpt in zip(paths, ckpts):
        if args.dataset and ckpt["dataset"] != args.dataset:
            raise UserError(f"{path} was trained on {ckpt['dataset']}, not {args.dataset}")
        if ckpt["classes"] != ckpts[0]["classes"]:
            raise UserError(f"{path} was trained with other classes than {paths[0]}: an ensemble needs one class list")
    return paths, ckpts


@torch.no_grad()
def probabilities(ckpt, model, images, device, amp, tta):
    """Class probabilities for uint8 NHWC images, with the checkpoint's own normalisation and input size."""
    norm = Normalize(ckpt["mean"], ckpt["std"], device, channels_last=True, size=ckpt.get("img_size"))
    loader = DeviceLoader(images, np.zeros(len(images), dtype=np.int64), inference_batch(device), norm, device)
    return logits(model, loader, device, amp, tta).softmax(1)


def pseudo_labels(path, split_dir, classes, threshold, device):
    """The test images a trained model labels with confidence >= threshold, with its labels."""
    ckpt = checkpoint.load(path)
    if ckpt["classes"] != classes:
        raise UserError(f"{path} was trained with other classes than the split in {split_dir}/")
    images = split.load(split_dir, ("test",))["test_images"]
    probs = probabilities(ckpt, load_model(ckpt, device), images, device, models.amp_dtype(ckpt["model"], device), None)
    confidence, labels = probs.max(1)
    keep = (confidence >= threshold).cpu().numpy()
    return images[keep], labels.cpu().numpy()[keep]


def run(args):
    """Predict the test split (or score the val split) with one checkpoint or the average of several
    (an ensemble); write and check the submission, save probabilities, score, report, submit as asked."""
    paths, ckpts = _members(args)
    first = ckpts[0]
    if args.report and (len(ckpts) > 1 or first["dataset"] != "cifar10"):
        raise UserError("--report compares with CIFAR-10 figures: give it one cifar10 checkpoint")
    baseline = _baseline(args, first)
    if args.split == "val" and (args.report or args.submit):
        raise UserError("--split val scores the validation split; --report and --submit need the test split")
    held_none = [p for p, c in zip(paths, ckpts) if held_out(c) == 0]
    if args.split == "val" and held_none:  # it learned the val images: its val score would flatter it
        raise UserError(f"{held_none[0]} held no validation images out of its training (--train-on-val or "
                        "--val-per-class 0), so --split val cannot score it: score the test split (--score)")
    device = runtime.pick_device(args.device)
    amp = models.amp_dtype(first["model"], device, args.amp)
    split_dir = Path(args.split_dir or first["split_dir"])
    if not (split_dir / "manifest.json").exists():
        split.ensure(first["dataset"], args.data_dir, split_dir, first.get("train_per_class"),
                     first.get("val_per_class"), first.get("split_seed", first.get("seed", 0)))
    s = split.load(split_dir, (args.split,))
    if s["manifest"]["classes"] != first["classes"]:
        raise UserError(f"{paths[0]} was trained with other classes than the split in {split_dir}/")
    images = s[f"{args.split}_images"]
    members = [(ckpt, load_model(ckpt, device)) for ckpt in ckpts]
    probs = torch.stack([probabilities(c, m, images, device, models.amp_dtype(c["model"], device, args.amp), args.tta)
                         for c, m in members]).mean(0).cpu()
    labels = probs.argmax(1).numpy()
    val = ("trained on train + val" if held_out(first) == 0 else "before its first validation"
           if math.isnan(first["val_acc"]) else f"val acc {first['val_acc']:.4f}")
    what = (f"{paths[0]} ({first['model']}, epoch {first['epoch']}, {val})" if len(paths) == 1
            else f"the average of {len(paths)} checkpoints' probabilities")
    if args.save_probs:
        table = pd.DataFrame(probs.numpy(), columns=first["classes"])
        table.insert(0, "id", np.arange(len(labels)))
        with atomic_path(args.save_probs) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        print(f"wrote {args.save_probs}: {args.split} class probabilities, {len(labels)} rows")
    if args.split == "val":
        acc = float(np.mean(labels == s["val_labels"]))
        print(f"val accuracy {acc:.4f} ({int(round(acc * len(labels)))}/{len(labels)}) of {what}")
        _record(paths, "val", acc, args)
        return labels
    classes = first["classes"] if args.label_format == "name" else None
    submission.write(args.submission, labels, len(first["classes"]), classes)
    print(f"wrote {args.submission}: {len(labels)} rows, checked (ids 0..{len(labels) - 1}, "
          f"{'class names' if classes else 'labels 0..' + str(len(first['classes']) - 1)}) from {what}")
    if args.score:
        acc = score(labels, split_dir / "solution.csv")
        print(f"test accuracy {acc:.4f} ({int(round(acc * len(labels)))}/{len(labels)}) against {split_dir / 'solution.csv'}")
        _record(paths, "test", acc, args)
    if args.report:
        model = members[0][1]

        def predict_images(x):
            return probabilities(first, model, x, device, amp, args.tta).argmax(1).cpu().numpy()

        write_report(args, paths[0], first, model, predict_images, images, labels, split_dir, device, baseline)
    if args.submit:
        from . import kaggle

        reply = kaggle.submit(args.submit, args.submission, args.message, rows=len(labels),
                              num_classes=len(first["classes"]), classes=classes)
        print(f"submitted {args.submission} to {args.submit}: {reply}")
    return labels


def _record(paths, part, acc, args):
    """A single run's score goes on its leaderboard line (python -m cifarkit.runs)."""
    if len(paths) == 1:
        from .runs import record_score

        record_score(paths[0].parent, part, acc, checkpoint=paths[0].name, tta=args.tta)


def _baseline(args, first):
    """--baseline: a second checkpoint for the report to compare with, checked before any work."""
    if not getattr(args, "baseline", None):
        return None
    if not args.report:
        raise UserError("--baseline is a model for the report to compare with: add --report")
    ckpt = checkpoint.load(Path(args.baseline))
    if ckpt["dataset"] != first["dataset"] or ckpt["classes"] != first["classes"]:
        raise UserError(f"--baseline {args.baseline} is a {ckpt['dataset']} model with {len(ckpt['classes'])} classes: "
                        f"the report compares two models of one data set and class list")
    return ckpt


def write_report(args, path, ckpt, model, predict_images, images, preds, split_dir, device, baseline=None):
    """The CIFAR-10 build-vs-buy report: accuracy with its uncertainty, cost, robustness (and a baseline's
    beside ours, with the rule that chooses between them), a rule-made verdict."""
    from . import report

    truth = _solution(split_dir / "solution.csv", len(preds))

    predictors = {"ours": predict_images}
    compared = None
    if baseline is not None:
        b_model, b_amp = load_model(baseline, device), models.amp_dtype(baseline["model"], device, args.amp)

        def baseline_images(x):
            return probabilities(baseline, b_model, x, device, b_amp, args.tta).argmax(1).cpu().numpy()

        predictors["baseline"] = baseline_images
    acc = {who: {} for who in predictors}
    for name in [*report.CORRUPTIONS, *report.HELD_OUT]:  # each corrupted set made once, for every model
        print(f"robustness: {name} ...", flush=True)
        degraded = report.corrupt(images, name)
        for who, fn in predictors.items():
            acc[who][name] = float(np.mean(fn(degraded) == truth))

    def by_kind(who):
        return ({k: acc[who][k] for k in report.CORRUPTIONS}, {k: acc[who][k] for k in report.HELD_OUT})

    corrupted, held_out = by_kind("ours")
    if baseline is not None:
        b_corrupted, b_held = by_kind("baseline")
        compared = dict(name=f"{Path(args.baseline).parent.name}/{Path(args.baseline).name} ({baseline['model']})",
                        clean=float(np.mean(baseline_images(images) == truth)), corrupted=b_corrupted, held_out=b_held)
    speed = report.throughput(predict_images, images)
    log_path = path.parent / "log.csv"
    if not log_path.is_file():
        raise UserError(f"{log_path} missing: the report needs the run's log for its cost and curves")
    run = dict(model=ckpt["model"], params=sum(p.numel() for p in model.parameters()),
               size_bytes=path.stat().st_size, device=ckpt.get("device", "unknown"), log=pd.read_csv(log_path))
    timing = dict(images_per_s=speed, device=runtime.device_name(device), batch=inference_batch(device),
                  tta=args.tta)
    out, summary = report.build_vs_buy(args.report_dir, labels=truth, preds=preds, classes=ckpt["classes"],
                                       corrupted=corrupted, run=run, timing=timing, held_out=held_out,
                                       baseline=compared, examples=_examples(images, truth))
    print("\n".join(summary))
    print(f"wrote {out} and its figures")


def _examples(images, truth, count=3):
    """The first test images of the first classes, one each: the report shows them under every corruption."""
    picks = [int(np.flatnonzero(truth == c)[0]) for c in range(count) if (truth == c).any()]
    return images[picks]


def _solution(path, rows):
    try:
        truth = pd.read_csv(path)["label"].to_numpy()
    except (OSError, KeyError, pd.errors.ParserError) as e:
        raise UserError(f"cannot score: {path} unreadable ({type(e).__name__})") from None
    if len(truth) != rows:
        raise UserError(f"cannot score: {path} has {len(truth)} rows, predictions {rows}")
    return truth


def score(labels, solution_path):
    return float(np.mean(np.asarray(labels) == _solution(solution_path, len(labels))))
