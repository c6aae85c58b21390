"""Figures and the CIFAR-10 build-vs-buy report: numbers a manager can check, and a rule, not an opinion.

Everything in the report is computed from the checkpoint, its run log and the test set, so it
regenerates byte for byte; the only measured timing (inference speed) sits in its own section.
"""

import io
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .atomic import atomic_path, write_text  # noqa: E402

VENDOR = ("Detectocorp (claimed)", 0.70)
SOTA = [("GPipe (2018, 557M parameters)", 0.990), ("ViT-H/14 (2020, best published)", 0.995)]
ALPHA = 0.05  # significance level of the one-sided test against the vendor's claim
MARGIN = 0.10  # a lead over the vendor below this is too thin to build on without checking the vendor
ROBUST_FLOOR = 0.70  # mean accuracy under corruptions below this means the model is fragile

# Corruptions at moderate severity, in plain units (pixel levels of 0..255, pixels, JPEG quality), with
# fixed parameters so the report regenerates exactly. CORRUPTIONS are the kinds that --aug
# crop_flip_robust trains with (at random strengths, through its own batched code, not this one);
# HELD_OUT are kinds no recipe of ours trains with: they show whether robustness carries over.
CORRUPTIONS = {
    "Gaussian noise, std 15 levels": lambda A: A.GaussNoise(std_range=(0.06, 0.06), p=1.0),
    "Gaussian blur, sigma 1 px": lambda A: A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(1.0, 1.0), p=1.0),
    "brightness +64 levels": lambda A: A.RandomBrightnessContrast(brightness_limit=(0.25, 0.25), contrast_limit=(0, 0), p=1.0),
    "contrast: values x0.6": lambda A: A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(-0.4, -0.4), p=1.0),
    "JPEG quality 30": lambda A: A.ImageCompression(quality_range=(30, 30), p=1.0),
}
HELD_OUT = {
    "shot noise, std ~18 levels at mid-grey": lambda A: A.ShotNoise(scale_range=(0.02, 0.02), p=1.0),
    "motion blur, 5 px streak": lambda A: A.MotionBlur(blur_limit=(5, 5), p=1.0),
    "pixelate, 16 px and back": lambda A: A.Downscale(scale_range=(0.5, 0.5), p=1.0),
    "gamma 1.5 (darker mid-tones)": lambda A: A.RandomGamma(gamma_limit=(150, 150), p=1.0),
}
CLEAN_COST = 0.005  # the most clean accuracy (0.5 points) a more robust model may give up and still be chosen


def _percent(axis):
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0))


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def plot_curves(log, path, title):
    """Loss and accuracy per epoch, train vs val, side by side (train alone for a run without val images)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(log["epoch"], log[f"train_{metric}"], "o-", label="train")
        if not _no_val(log):
            ax.plot(log["epoch"], log[f"val_{metric}"], "o-", label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        if metric == "acc":
            _percent(ax.yaxis)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def _no_val(log):
    """A final fit (--train-on-val or --val-per-class 0): every epoch's validation figure is empty."""
    return log["val_acc"].isna().all()


def best_val(log):
    """The log's best validation accuracy and its epoch; a final fit on train + val has none to give."""
    if _no_val(log):
        return "none: no images held out (a final fit: --train-on-val or --val-per-class 0)"
    return f"{log['val_acc'].max():.2%} (epoch {int(log.loc[log['val_acc'].idxmax(), 'epoch'])})"


def curves_text(log):
    """What the training curves can and cannot say."""
    if _no_val(log):
        return ("Training accuracy here is on augmented, label-smoothed batches of the images the model learns from; "
                "this run held none out, so the test set above is its only independent figure.")
    return ("Training loss sits above validation loss because training images are augmented (random crops and "
            "flips) and the\nloss is label-smoothed; validation accuracy levelling off shows where more epochs stop "
            "paying.")


# --- statistics ---------------------------------------------------------------------------------

def wilson_interval(correct, n, level=0.95):
    from scipy.stats import binomtest

    ci = binomtest(correct, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def beats_claim_pvalue(correct, n, claimed):
    """Exact one-sided binomial test of H0: true accuracy <= claimed, against: it is higher."""
    from scipy.stats import binomtest

    return float(binomtest(correct, n, claimed, alternative="greater").pvalue)


@dataclass
class Verdict:
    decision: str
    reason: str


def recommend(accuracy, pvalue, corrupted_mean, vendor=VENDOR[1]):
    """The written rule; the report prints it next to its outcome."""
    if pvalue >= ALPHA:
        return Verdict("BUY", f"our accuracy does not beat the vendor's claimed {vendor:.0%} significantly "
                              f"(one-sided {fmt_p(pvalue)}, not below {ALPHA})")
    if accuracy - vendor < MARGIN:
        return Verdict("BUILD WITH CAVEATS", f"we beat {vendor:.0%} significantly, but by less than "
                       f"{MARGIN * 100:.0f} points: check the vendor's model on this same test set first")
    if corrupted_mean < ROBUST_FLOOR:
        return Verdict("BUILD WITH CAVEATS", f"we lead by {(accuracy - vendor) * 100:.1f} points, but mean accuracy "
                       f"under corruptions is {corrupted_mean:.1%} (< {ROBUST_FLOOR:.0%}): make it robust (train.py --aug "
                       f"crop_flip_robust) before relying on it for degraded images")
    return Verdict("BUILD", f"we beat {vendor:.0%} significantly and by {(accuracy - vendor) * 100:.1f} points, "
                            f"and stay at {corrupted_mean:.1%} on average under corruptions")


RULE = (f"1. If the one-sided exact binomial test of our accuracy against the vendor's claim gives p >= {ALPHA}: "
        f"**BUY**.\n"
        f"2. Else, if our lead over the claim is under {MARGIN * 100:.0f} points: **BUILD WITH CAVEATS** "
        f"(verify the vendor on our test set).\n"
        f"3. Else, if mean accuracy under the corruptions below is under {ROBUST_FLOOR:.0%}: **BUILD WITH CAVEATS** "
        f"(robustness).\n"
        f"4. Else: **BUILD**.")


# --- figures ------------------------------------------------------------------------------------

def confusion(labels, preds, k):
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


def plot_confusion(matrix, classes, path):
    rates = matrix / matrix.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix on the test set (counts; colour = share of the true class)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)


def plot_per_class(per_class, classes, overall, path):
    order = np.argsort(per_class)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.barh([classes[i] for i in order], per_class[order], color="tab:blue")
    ax.axvline(overall, color="black", lw=1, label=f"overall {overall:.1%}")
    ax.axvline(VENDOR[1], color="tab:red", ls="--", lw=1, label=f"vendor claim {VENDOR[1]:.0%}")
    ax.set_xlim(0, 1)
    _percent(ax.xaxis)
    ax.set_xlabel("test accuracy")
    ax.set_title("Accuracy per class, weakest at the bottom")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def plot_comparison(accuracy, low, high, corrupted, path):
    names = ["ours (clean)"] + [f"ours, {k}" for k in corrupted] + [VENDOR[0]] + [n for n, _ in SOTA]
    values = [accuracy] + list(corrupted.values()) + [VENDOR[1]] + [v for _, v in SOTA]
    colors = ["tab:blue"] + ["tab:cyan"] * len(corrupted) + ["tab:red"] + ["tab:gray"] * len(SOTA)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=colors)
    ax.errorbar([accuracy], [y[0]], xerr=[[accuracy - low], [high - accuracy]], color="black", capsize=4)
    for yi, v in zip(y, values):
        inside = v > 0.85  # long bars carry their label inside, in white
        ax.text(v - 0.01 if inside else v + 0.01, yi, f"{v:.1%}", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    _percent(ax.xaxis)
    ax.set_xlabel("CIFAR-10 test accuracy")
    ax.set_title("CIFAR-10 test accuracy: ours (95% CI) vs claim and published", fontsize=11)
    fig.tight_layout()
    _save(fig, path)


# --- robustness and speed -----------------------------------------------------------------------

def corrupt(images, name, seed=0):
    """Apply one corruption (of CORRUPTIONS or HELD_OUT) to uint8 NHWC images, deterministically."""
    import albumentations as A

    t = A.Compose([{**CORRUPTIONS, **HELD_OUT}[name](A)], seed=seed)
    return np.stack([t(image=img)["image"] for img in images])


def plot_examples(images, path):
    """What each corruption looks like: a few test images, clean and under every corruption."""
    names = ["clean", *CORRUPTIONS, *HELD_OUT]
    rows = [images] + [corrupt(images, n) for n in names[1:]]
    fig, axes = plt.subplots(len(images), len(names), figsize=(1.25 * len(names), 1.35 * len(images) + 0.6),
                             squeeze=False)
    for j, (name, batch) in enumerate(zip(names, rows)):
        for i, img in enumerate(batch):
            ax = axes[i, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                title = name.replace(", ", ",\n").replace(": ", ":\n").replace(" (", "\n(")
                ax.set_title(title + ("\n[held out]" if name in HELD_OUT else ""), fontsize=6)
    fig.tight_layout()
    _save(fig, path)


def choose(ours, baseline):
    """Which of two models to ship, by the written rule (CHOICE_RULE); each a dict with 'clean' and
    'corrupted' (mean over CORRUPTIONS) accuracy. Returns (ship ours?, reason)."""
    def wins(a, b):  # a is at least as robust and gives up at most CLEAN_COST of clean accuracy
        return a["corrupted"] >= b["corrupted"] and a["clean"] >= b["clean"] - CLEAN_COST - 1e-12

    cost = (ours["clean"] - baseline["clean"]) * 100
    gain = (ours["corrupted"] - baseline["corrupted"]) * 100
    said = f"{gain:+.1f} points under corruptions, {cost:+.2f} clean"
    if wins(ours, baseline):
        return True, f"it is at least as robust ({said}) and loses at most {CLEAN_COST * 100:.1f} clean points"
    if wins(baseline, ours):
        return False, f"the baseline is at least as robust ({said} for ours) and as accurate on clean images"
    mix = [(m["clean"] + m["corrupted"]) / 2 for m in (ours, baseline)]
    return mix[0] >= mix[1], (f"neither wins outright ({said}); on half-clean, half-degraded inputs ours scores "
                              f"{mix[0]:.1%} vs the baseline's {mix[1]:.1%}")


CHOICE_RULE = (f"1. A model that is at least as accurate under the corruptions (mean of the {len(CORRUPTIONS)}) and "
               f"loses at most {CLEAN_COST * 100:.1f} points of clean accuracy is shipped.\n"
               f"2. Otherwise the one with the higher average of clean and mean corrupted accuracy (inputs half "
               f"clean, half degraded) is shipped.")


def throughput(predict_fn, images, repeats=3):
    """Images per second of `predict_fn` over `images`, best of `repeats` (after one warm-up pass)."""
    predict_fn(images[:512])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_fn(images)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


# --- the report ---------------------------------------------------------------------------------

def fmt_p(p):
    """p-values as people read them: p = 0.064, p = 3.2e-05, p < 1e-15 (below that the float is noise)."""
    return "p < 1e-15" if p < 1e-15 else f"p = {p:.2g}" if p < 0.001 else f"p = {p:.3f}"


def _table(rows, header):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _robustness(acc, corrupted, held_out, baseline):
    """The robustness tables: each corruption for our model (and the baseline's beside it)."""
    header = ["corruption", "accuracy", "change vs clean (points)"]
    if baseline:
        header += [f"baseline ({baseline['name']})", "ours vs baseline (points)"]

    def rows(ours, theirs):
        out = []
        for k, v in ours.items():
            row = [k, f"{v:.2%}", f"{(v - acc) * 100:+.1f}"]
            if baseline:
                row += [f"{theirs[k]:.2%}", f"**{(v - theirs[k]) * 100:+.1f}**"]
            out.append(row)
        return out

    clean = [["none (clean)", f"{acc:.2%}", ""] + ([f"{baseline['clean']:.2%}", f"{(acc - baseline['clean']) * 100:+.2f}"]
                                                   if baseline else [])]
    main = _table(clean + rows(corrupted, baseline and baseline["corrupted"]), header)
    held = _table(rows(held_out, baseline and baseline["held_out"]), header) if held_out else ""
    return main, held


def build_vs_buy(out_dir, *, labels, preds, classes, corrupted, run, timing, prefix="cifar10", held_out=None,
                 baseline=None, examples=None):
    """Write `<prefix>_build_vs_buy.md` and its figures into out_dir; return (path, summary lines).

    `held_out`: accuracy under HELD_OUT corruptions; `baseline`: another model's figures (name, clean,
    corrupted, held_out) to compare with and choose by CHOICE_RULE; `examples`: a few uint8 test images
    to show under every corruption."""
    out_dir = Path(out_dir)
    held_out = held_out or {}
    n, correct = len(labels), int((labels == preds).sum())
    acc = correct / n
    low, high = wilson_interval(correct, n)
    p = beats_claim_pvalue(correct, n, VENDOR[1])
    corrupted_mean = float(np.mean(list(corrupted.values()))) if corrupted else acc
    verdict = recommend(acc, p, corrupted_mean)
    matrix = confusion(labels, preds, len(classes))
    per_class = np.diag(matrix) / matrix.sum(1).clip(min=1)
    weakest = np.argsort(per_class)[:3]

    figs = {k: f"{prefix}_{k}.png" for k in ("comparison", "confusion", "per_class", "curves")}
    plot_comparison(acc, low, high, corrupted, out_dir / figs["comparison"])
    plot_confusion(matrix, classes, out_dir / figs["confusion"])
    plot_per_class(per_class, classes, acc, out_dir / figs["per_class"])
    plot_curves(run["log"], out_dir / figs["curves"], f"{run['model']} training run")
    if examples is not None:
        figs["examples"] = f"{prefix}_corruptions.png"
        plot_examples(examples, out_dir / figs["examples"])
    held_mean = float(np.mean(list(held_out.values()))) if held_out else None
    choice = b_mean = clean_diff = None
    if baseline:
        b_mean = float(np.mean(list(baseline["corrupted"].values())))
        clean_diff = f"{(acc - baseline['clean']) * 100:+.2f}"  # points, as the report prints it everywhere
        choice = choose(dict(clean=acc, corrupted=corrupted_mean), dict(clean=baseline["clean"], corrupted=b_mean))

    weak = ", ".join(f"{classes[i]} ({per_class[i]:.1%})" for i in weakest)
    worst = min(corrupted, key=corrupted.get)
    sig = "significantly" if p < ALPHA else "not significantly"
    headline = _table([
        ["Our test accuracy", f"**{acc:.2%}** ({correct:,} / {n:,})"],
        ["95% confidence interval (Wilson)", f"{low:.2%} – {high:.2%}"],
        [f"vs {VENDOR[0]} {VENDOR[1]:.0%}", f"{(acc - VENDOR[1]) * 100:+.1f} points, {sig} better "
                                             f"(exact one-sided binomial test, {fmt_p(p)})"],
        *[[f"vs {name} {v:.1%}", f"{(acc - v) * 100:+.1f} points"] for name, v in SOTA],
        [f"Mean accuracy under {len(corrupted)} corruptions", f"{corrupted_mean:.2%}"],
        *([[f"... under {len(held_out)} held-out corruptions", f"{held_mean:.2%}"]] if held_out else []),
        *([[f"vs baseline {baseline['name']}", f"{clean_diff} points clean; ship "
            f"{'ours' if choice[0] else 'the baseline'}"]] if baseline else []),
        ["Recommendation", f"**{verdict.decision}**"],
    ], ["", "CIFAR-10 test set"])
    log = run["log"]
    cost = _table([
        ["Model", f"{run['model']} ({run['params']:,} parameters)"],
        ["Checkpoint size on disk", f"{run['size_bytes'] / 1e6:.1f} MB"],
        ["Training", f"{len(log)} epochs, {log['train_seconds'].iloc[-1] / 60:.1f} min of training on "
                     f"{'the CPU' if run['device'] == 'cpu' else run['device']} (from the run's log)"],
        ["Best validation accuracy", best_val(log)],
    ], ["", "our model"])
    robust, held_table = _robustness(acc, corrupted, held_out, baseline)
    example_fig = (f"\n![One image per corruption: what each severity looks like]({figs['examples']})\n"
                   if "examples" in figs else "")
    held_text = (f"""
Held out: degradations that no cifarkit training recipe uses (`--aug crop_flip_robust` trains with noise, blur, JPEG,
brightness and contrast only), so they show whether robustness carries over to kinds never seen in training.
Mean {held_mean:.2%}.

{held_table}
""" if held_out else "")
    choice_text = ""
    if baseline:
        rows = [["clean test accuracy", f"{acc:.2%}", f"{baseline['clean']:.2%}", clean_diff],
                [f"mean under {len(corrupted)} corruptions", f"{corrupted_mean:.2%}", f"{b_mean:.2%}",
                 f"{(corrupted_mean - b_mean) * 100:+.1f}"]]
        if held_out:
            bh = float(np.mean(list(baseline["held_out"].values())))
            rows.append([f"mean under {len(held_out)} held-out corruptions", f"{held_mean:.2%}", f"{bh:.2%}",
                         f"{(held_mean - bh) * 100:+.1f}"])
        choice_text = f"""
## Ours vs the baseline: which model to ship

{_table(rows, ["", f"ours ({run['model']})", f"baseline ({baseline['name']})", "ours minus baseline (points)"])}

The rule:

{CHOICE_RULE}

Outcome: **ship {'ours' if choice[0] else 'the baseline'}**, because {choice[1]}. The build-or-buy verdict above is
about our model; where the rule ships the baseline, read the baseline's own report for its verdict.
"""
    per_cls = _table([[classes[i], f"{per_class[i]:.1%}", int(matrix[i].sum()),
                       classes[int(np.argsort(matrix[i])[-2])] if matrix[i].sum() else ""]
                      for i in range(len(classes))], ["class", "accuracy", "test images", "most confused with"])
    gap = SOTA[-1][1] - acc
    text = f"""# CIFAR-10: build or buy?

**Recommendation: {verdict.decision}.** {verdict.reason[0].upper() + verdict.reason[1:]}.

{headline}

![Our accuracy vs the vendor and published results]({figs['comparison']})

## What the numbers mean

- On the official CIFAR-10 test set ({n:,} images our model never trained on), our model labels {acc:.1%}
  correctly. With 95% confidence the true rate lies between {low:.1%} and {high:.1%}.
- The vendor claims {VENDOR[1]:.0%}. Our result is {sig} above that claim: if our model were really no better than
  {VENDOR[1]:.0%}, a result this high would have probability {fmt_p(p).removeprefix('p = ').replace('p < ', 'below ')}
  (exact one-sided binomial test; we call it significant below {ALPHA}). The vendor's figure is a claim we have not measured; we have not seen their test set.
- State of the art: GPipe reported 99.0% in 2018 with a 557-million-parameter network; ViT-H/14 reports 99.5%.
  We are {(SOTA[0][1] - acc) * 100:.1f} and {gap * 100:.1f} points below them. Those networks are built for
  large accelerators and pre-trained on far larger data; they are a ceiling, not a product on offer.
- Weakest classes: {weak}.
- Degraded images: the model loses the most under {worst}, where it scores {corrupted[worst]:.1%}. We do not
  know how the vendor's model behaves there: ask them for the same test.

## The rule behind the recommendation

{RULE}

Outcome here: {verdict.decision}, because {verdict.reason}.
{choice_text}
## Cost

{cost}

## Robustness

Accuracy when the test images are degraded (each corruption applied to all {n:,} images at a fixed, moderate
severity, stated in plain units: pixel levels of 0-255, pixels, JPEG quality):

{robust}
{held_text}{example_fig}
## Accuracy per class

![Per-class accuracy]({figs['per_class']})

{per_cls}

![Confusion matrix]({figs['confusion']})

## Training curves

![Training curves]({figs['curves']})

{curves_text(log)}

## Measured on this machine (timings; these change from run to run)

{_table([["Inference throughput", f"{timing['images_per_s']:,.0f} images/s on {timing['device']} "
          f"(batch {timing['batch']}, {timing['tta'] or 'no'} TTA, best of 3 passes over the test set)"]], ["", "measured"])}
"""
    path = out_dir / f"{prefix}_build_vs_buy.md"
    write_text(path, text)
    summary = [f"test accuracy {acc:.2%} (95% CI {low:.2%}-{high:.2%}); vs vendor {VENDOR[1]:.0%}: "
               f"{sig} better (exact one-sided binomial test, {fmt_p(p)})",
               f"gap to GPipe 99.0%: {(0.99 - acc) * 100:.1f} points; to ViT-H/14 99.5%: {gap * 100:.1f} points",
               f"weakest classes: {weak}; mean accuracy under corruptions {corrupted_mean:.2%}",
               f"inference {timing['images_per_s']:,.0f} images/s on {timing['device']}",
               f"recommendation: {verdict.decision}"]
    if baseline:
        summary.insert(-1, f"vs baseline {baseline['name']}: {clean_diff} points clean, "
                           f"{(corrupted_mean - b_mean) * 100:+.1f} "
                           f"under corruptions; ship {'ours' if choice[0] else 'the baseline'}")
    return path, summary
