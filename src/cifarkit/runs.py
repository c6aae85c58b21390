"""The local leaderboard: every run under runs/ in one table, to choose what to blend, refit and submit.

`python -m cifarkit.runs` (see --help). It reads each run's small text files (config.json, log.csv,
scores.json) and never a checkpoint, so a folder of many runs lists at once. predict records test
scores with record_score().
"""

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from .atomic import write_text
from .errors import HelpFormatter, UserError, cli

MARKERS = ("config.json", "log.csv", "best.pt", "last.pt")  # any of these makes a folder a run
COLUMNS = ["run", "dataset", "model", "epochs", "seconds", "params", "val_acc", "test_acc"]
# --sort key: (column, ascending, what the header says)
SORTS = {"val_acc": ("val_acc", False, "best val accuracy, highest first"),
         "test_acc": ("test_acc", False, "test accuracy, highest first"),
         "seconds": ("seconds", True, "training seconds, fewest first"),
         "params": ("params", True, "parameters, fewest first"),
         "name": ("run", True, "run name")}


def _read_json(path):
    """A JSON object from `path`, or None with the reason when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({type(e).__name__})"
    return (data, None) if isinstance(data, dict) else (None, "not a JSON object")


def record_score(run_dir, split, acc, **info):
    """Write or update `run_dir`/scores.json with {split: {"acc": acc, **info}} (other splits are kept).

    predict calls it after scoring, e.g. record_score(run, "test", 0.9104, checkpoint="best.pt", tta="flip").
    """
    path = Path(run_dir) / "scores.json"
    scores = _read_json(path)[0] or {}  # an unreadable old file is replaced, not kept half-trusted
    scores[split] = dict(acc=float(acc), **info)
    write_text(path, json.dumps(scores, indent=2, sort_keys=True) + "\n")


def _log_figures(path):
    """(epochs done, training seconds, best val accuracy) from a run's log.csv; raises on a bad file."""
    log = pd.read_csv(path)
    if len(log) == 0:
        return 0, math.nan, math.nan
    seconds = log["train_seconds"].iloc[-1] if "train_seconds" in log else log["seconds"].sum()
    val = log["val_acc"].max() if "val_acc" in log else math.nan  # a fit on train+val has no val figure
    return len(log), float(seconds), float(val)


def collect(output="runs"):
    """One row per run folder under `output`, and a warning line for each file that could not be read."""
    rows, warnings = [], []
    folders = sorted(p for p in Path(output).glob("*") if p.is_dir() and any((p / m).exists() for m in MARKERS))
    for run in folders:
        config, why = _read_json(run / "config.json")
        if config is None:
            warnings.append(f"{run / 'config.json'} {why}: model and data set unknown")
            config = {}
        row = dict(run=run.name, dataset=config.get("dataset"), model=config.get("model"), epochs=0,
                   seconds=math.nan, params=config.get("params", math.nan), val_acc=math.nan, test_acc=math.nan)
        if (run / "log.csv").exists():
            try:
                row["epochs"], row["seconds"], row["val_acc"] = _log_figures(run / "log.csv")
            except (OSError, UnicodeDecodeError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
                warnings.append(f"{run / 'log.csv'} unreadable ({type(e).__name__}): epochs, seconds and val "
                                "accuracy unknown")
                row["epochs"] = math.nan
        scores, why = _read_json(run / "scores.json")
        if scores is not None and isinstance(scores.get("test"), dict):
            row["test_acc"] = scores["test"].get("acc", math.nan)
        elif why not in (None, "missing"):
            warnings.append(f"{run / 'scores.json'} {why}: test accuracy unknown")
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS), warnings


def table(df, sort="val_acc", dataset=None):
    """Filter by data set and sort, unknown values last."""
    if dataset:
        df = df[df["dataset"] == dataset]
    column, ascending, _ = SORTS[sort]
    df = df.sort_values("run").sort_values(column, ascending=ascending, na_position="last", kind="stable")
    return df.reset_index(drop=True)


def _fmt(fmt):
    return lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(v)


TEXT = ("run", "dataset", "model")
FORMATS = dict(dataset=_fmt(str), model=_fmt(str), epochs=_fmt(lambda v: f"{int(v)}"),
               seconds=_fmt(lambda v: f"{v:.0f}"), params=_fmt(lambda v: f"{v / 1e6:.2f}M"),
               val_acc=_fmt(lambda v: f"{v:.4f}"), test_acc=_fmt(lambda v: f"{v:.4f}"))


def render(df):
    """Text columns left-aligned, figures right-aligned, '-' where unknown."""
    cells = pd.DataFrame({c: [FORMATS.get(c, str)(v) for v in df[c]] for c in df.columns})
    for c in cells:
        width = max([len(c), *cells[c].str.len()])
        cells[c] = cells[c].str.ljust(width) if c in TEXT else cells[c].str.rjust(width)
    cells.columns = [c.ljust(len(cells[c].iloc[0])) if c in TEXT else c for c in cells.columns]
    return cells.to_string(index=False)


def parser():
    p = argparse.ArgumentParser(
        prog="python -m cifarkit.runs",
        description="The local leaderboard: every run under --output with its model, data set, epochs done, "
                    "training seconds, parameters, best val accuracy and test accuracy (when predict.py --score "
                    "recorded one in the run's scores.json); '-' where a run does not say. Reads config.json, "
                    "log.csv and scores.json, never a checkpoint. No run to list is an error (exit code 2).",
        formatter_class=HelpFormatter)
    p.add_argument("--output", default="runs", help="folder holding the run folders")
    p.add_argument("--sort", choices=list(SORTS), default="val_acc",
                   help="; ".join(f"{k}: {v[2]}" for k, v in SORTS.items()) + "; unknown values last")
    p.add_argument("--dataset", choices=["cifar10", "cifar100"], default=None, help="only runs of this data set")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the table, unformatted, to this CSV")
    return p


@cli
def main(argv=None):
    args = parser().parse_args(argv)
    df, warnings = collect(args.output)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if df.empty:
        raise UserError(f"no runs under {args.output}/: train one first (python train.py) or pass --output")
    shown = table(df, args.sort, args.dataset)
    if shown.empty:
        raise UserError(f"no {args.dataset} run among the {len(df)} under {args.output}/")
    which = f" of {args.dataset}" if args.dataset else ""
    print(f"{len(shown)} run(s){which} under {args.output}/, sorted by {SORTS[args.sort][2]}:")
    print(render(shown))
    if args.csv:
        write_text(args.csv, shown.to_csv(index=False))
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
