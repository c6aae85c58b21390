"""Kaggle submission CSV (`id,label`): write atomically, and check it before anyone uploads it.

`python -m cifarkit.submission check FILE` runs the same check on its own.
"""

import argparse
import io
import re
from pathlib import Path

import pandas as pd

from .atomic import atomic_path
from .errors import UserError, cli

_INT = re.compile(r"0|[1-9][0-9]*")  # canonical non-negative integers, ASCII digits only


def write(path, labels, num_classes, classes=None):
    """Write `id,label` rows (integer labels, or class names when `classes` is given).

    The check runs on the temporary file, so an invalid submission never replaces a valid one.
    """
    labels = [classes[i] for i in labels] if classes else [int(i) for i in labels]
    with atomic_path(path) as tmp:
        pd.DataFrame({"id": range(len(labels)), "label": labels}).to_csv(tmp, index=False)
        check(tmp, len(labels), num_classes=num_classes, classes=classes)


def check(path, rows, num_classes=None, classes=None):
    """Raise UserError naming the first problem; return the parsed frame if the file is valid."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    # pandas forgives blank lines and stray carriage returns; an upload parser may not, so refuse them here
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines):
        if line == "" or "\r" in line:
            raise UserError(f"{path}: line {i + 1} is blank or holds a stray carriage return")
        if i == 0 and line != "id,label":
            raise UserError(f"{path}: header must be exactly 'id,label', found {line!r}")
        if line.count(",") != 1:  # pandas would make an extra field the index, silently
            raise UserError(f"{path}: line {i + 1} has {line.count(',') + 1} fields, expected 2 (id,label)")
    try:
        df = pd.read_csv(io.StringIO("\n".join(lines)), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a readable CSV ({type(e).__name__})") from None
    if len(df) != rows:
        raise UserError(f"{path}: {len(df)} rows, expected {rows}")
    bad = df.index[~df["id"].str.fullmatch(_INT)]
    if len(bad):
        raise UserError(f"{path}: id {df['id'][bad[0]]!r} on row {bad[0] + 1} is not a whole number (canonical, no sign or leading zeros)")
    ids = df["id"].astype(int)
    if ids.duplicated().any():
        raise UserError(f"{path}: id {ids[ids.duplicated()].iloc[0]} appears more than once")
    wrong = ids.index[ids.values != range(rows)]
    if len(wrong):
        raise UserError(f"{path}: row {wrong[0] + 1} has id {ids[wrong[0]]}, expected {wrong[0]} (ids 0..{rows - 1} in order)")
    labels = df["label"]
    if classes is not None:
        unknown = labels.index[~labels.isin(classes)]
        if len(unknown):
            raise UserError(f"{path}: label {labels[unknown[0]]!r} on row {unknown[0] + 1} is not a class name")
        return df
    bad = labels.index[~labels.str.fullmatch(_INT)]
    if len(bad):
        raise UserError(f"{path}: label {labels[bad[0]]!r} on row {bad[0] + 1} is not a whole number (canonical, no sign or leading zeros)")
    if num_classes is not None:
        out = labels.index[labels.astype(int) >= num_classes]
        if len(out):
            raise UserError(f"{path}: label {labels[out[0]]} on row {out[0] + 1} is out of range 0..{num_classes - 1}")
    return df


def add_expect_args(p):
    """The flags that say which split a submission answers (shared by `check` and `cifarkit.kaggle submit`)."""
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default="cifar100",
                   help="the split it answers (default: cifar100)")
    p.add_argument("--split-dir", default=None, help="split folder (default: data/<dataset>)")
    p.add_argument("--label-format", choices=["index", "name"], default="index",
                   help="labels as class indices (default) or class names")


def expected(args):
    """What a valid file must hold, from the split's manifest: check()'s rows, num_classes and classes."""
    from . import split

    m = split.read_manifest(args.split_dir or split.default_split_dir(args.dataset))
    return dict(rows=m["counts"]["test"], num_classes=len(m["classes"]),
                classes=m["classes"] if args.label_format == "name" else None)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cifarkit.submission",
                                description="Check a submission CSV against a split before uploading it.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="check FILE: header, one row per test id in order, labels in range")
    c.add_argument("file", help="the submission CSV to check")
    add_expect_args(c)
    args = p.parse_args(argv)
    want = expected(args)
    check(args.file, **want)
    print(f"{args.file}: valid ({want['rows']} rows, {want['num_classes']} classes)")


if __name__ == "__main__":
    main()
