"""Build the Kaggle-style split once (prepare-once, as in nanoGPT); training and predict only read it.

From the official train set: a stratified train/val split chosen by a seed. Test: the official
test images in official order with labels hidden (stored as 0); the answer key lives apart in
solution.csv, which nothing reads unless asked to score.
"""

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import read
from .atomic import atomic_path, write_text
from .errors import UserError, cli

DEFAULT_PER_CLASS = {"cifar10": (4500, 500), "cifar100": (450, 50)}
ARRAYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def default_split_dir(dataset):
    return Path("data") / dataset


def per_class(dataset, train_per_class=None, val_per_class=None):
    """The per-class sizes asked for, falling back to the data set's defaults."""
    dtpc, dvpc = DEFAULT_PER_CLASS[dataset]
    return (dtpc if train_per_class is None else train_per_class,
            dvpc if val_per_class is None else val_per_class)


def _sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def choose(labels, num_classes, train_per_class, val_per_class, seed, classes):
    """Stratified choice of train and val indices; refuses a source with too few images per class."""
    if train_per_class < 1 or val_per_class < 0:
        raise UserError("--train-per-class must be at least 1 and --val-per-class at least 0")
    need = train_per_class + val_per_class
    counts = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(counts < need)
    if len(short):
        c = short[0]
        raise UserError(
            f"too few images per class: class {c} ({classes[c]}) has {counts[c]} training images "
            f"(fewest of all: {counts.min()}), but the split needs {train_per_class} train + "
            f"{val_per_class} val = {need}; lower --train-per-class / --val-per-class"
        )
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:train_per_class])
        val.append(idx[train_per_class:need])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def build(data, split_dir, train_per_class=None, val_per_class=None, seed=0):
    """Write the split arrays, sample_submission.csv, solution.csv and manifest.json into split_dir."""
    tpc, vpc = per_class(data.name, train_per_class, val_per_class)
    n_cls = len(data.classes)
    tr, va = choose(data.train_y, n_cls, tpc, vpc, seed, data.classes)
    arrays = {
        "train_images": data.train_x[tr], "train_labels": data.train_y[tr],
        "val_images": data.train_x[va], "val_labels": data.train_y[va],
        "test_images": data.test_x, "test_labels": np.zeros(len(data.test_y), dtype=np.int64),
    }
    split_dir = Path(split_dir)
    for name, a in arrays.items():
        with atomic_path(split_dir / f"{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, a)
    ids = np.arange(len(data.test_y))
    _write_csv(split_dir / "sample_submission.csv", pd.DataFrame({"id": ids, "label": 0}))
    _write_csv(split_dir / "solution.csv", pd.DataFrame({"id": ids, "label": data.test_y}))
    manifest = {
        "dataset": data.name,
        "source": str(data.folder),
        "seed": seed,
        "train_per_class": tpc,
        "val_per_class": vpc,
        "counts": {
            "train": len(tr), "val": len(va), "test": len(ids),
            "train_per_class": np.bincount(data.train_y[tr], minlength=n_cls).tolist(),
            "val_per_class": np.bincount(data.train_y[va], minlength=n_cls).tolist(),
        },
        "sha256": {name: _sha256(a) for name, a in arrays.items()},
        "classes": data.classes,
    }
    # The manifest goes last: its presence says the split is complete.
    write_text(split_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_csv(path, df):
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_manifest(split_dir):
    path = Path(split_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no split in {split_dir}/ (manifest.json missing): build it with python -m cifarkit.split") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def load(split_dir, parts=("train", "val", "test")):
    """Read split arrays and check them against the manifest's sha256, so a damaged split is never used."""
    split_dir = Path(split_dir)
    manifest = read_manifest(split_dir)
    out = {"manifest": manifest}
    for part in parts:
        for kind in ("images", "labels"):
            name = f"{part}_{kind}"
            try:
                a = np.load(split_dir / f"{name}.npy", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"{split_dir / name}.npy: cannot read ({e}); rebuild the split") from None
            if _sha256(a) != manifest["sha256"].get(name):
                raise UserError(f"{split_dir / name}.npy does not match manifest.json; rebuild the split")
            out[name] = a
    return out


def ensure(dataset, data_dir, split_dir=None, train_per_class=None, val_per_class=None, seed=0):
    """Return the split directory, building the split first if it is missing or was made differently."""
    split_dir = Path(split_dir or default_split_dir(dataset))
    tpc, vpc = per_class(dataset, train_per_class, val_per_class)
    want = {"dataset": dataset, "seed": seed, "train_per_class": tpc, "val_per_class": vpc}
    if (split_dir / "manifest.json").is_file():
        have = read_manifest(split_dir)
        if all(have.get(k) == v for k, v in want.items()):
            return split_dir
        print(f"split in {split_dir}/ was built with other settings; rebuilding")
    data = read.load(data_dir, dataset)
    m = build(data, split_dir, want["train_per_class"], want["val_per_class"], seed)
    print(f"built {dataset} split in {split_dir}/: {m['counts']['train']} train, "
          f"{m['counts']['val']} val, {m['counts']['test']} test (seed {seed})")
    return split_dir


def add_split_args(p):
    """The split flags, shared by this CLI and train.py."""
    p.add_argument("--dataset", choices=sorted(read.SOURCES), default="cifar100",
                   help="which CIFAR (default: cifar100)")
    p.add_argument("--data-dir", default="data",
                   help="folder holding the official cifar-*-python folder or .tar.gz; downloaded there if absent (default: data)")
    p.add_argument("--split-dir", default=None,
                   help="where the split arrays are written/read (default: data/<dataset>)")
    p.add_argument("--train-per-class", type=int, default=None,
                   help="training images per class (default: 450 for cifar100, 4500 for cifar10)")
    p.add_argument("--val-per-class", type=int, default=None,
                   help="validation images per class (default: 50 for cifar100, 500 for cifar10)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="chooses train/val membership (default: 0); runs that share it share one split")


@cli
def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m cifarkit.split",
        description="Build a stratified Kaggle-style train/val/test split from the official CIFAR files.",
    )
    add_split_args(p)
    args = p.parse_args(argv)
    split_dir = Path(args.split_dir or default_split_dir(args.dataset))
    data = read.load(args.data_dir, args.dataset)
    m = build(data, split_dir, args.train_per_class, args.val_per_class, args.split_seed)
    c = m["counts"]
    print(f"{args.dataset}: {c['train']} train ({m['train_per_class']}/class), {c['val']} val "
          f"({m['val_per_class']}/class), {c['test']} test (labels hidden) -> {split_dir}/")
    print(f"wrote {', '.join(a + '.npy' for a in ARRAYS)}, sample_submission.csv, solution.csv, manifest.json")


if __name__ == "__main__":
    main()
