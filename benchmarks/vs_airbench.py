#!/usr/bin/env python
"""Our CIFAR-10 recipe beside the speed-record recipe (airbench94_muon), same machine, one sitting.

Runs the peer script for its epochs (its path is an argument: it is not part of cifarkit), then ours
with a training budget of the peer's seconds times each --fractions (1: equal time; 0.8: the
time-to-94% target) and --time-budget (the 10-minute budget). Ours is scored from the CSV that
predict.py writes, against the official test labels. Prints both accuracies, both times and the ratios.
On a CPU without native bf16 (no AVX512-BF16 or AMX) the peer runs with its CPU autocast turned off, as ours
then does: emulated bf16 trained its network 15x slower than fp32 on such a CPU (--peer-autocast on to keep it).
The peer trains on all 50,000 training images, and so does ours (train.py --train-on-val) unless --hold-out-val
keeps the split's 5,000 validation images out of its training.

    python benchmarks/vs_airbench.py --peer ../shared/peers/airbench94_muon_cpu.py --data-dir ../shared/data
    python benchmarks/vs_airbench.py --peer PEER --data-dir ../shared/data --hold-out-val   # ours on 45,000 images
    python benchmarks/vs_airbench.py --peer airbench94_muon.py --peer-kind original --peer-time-limit 600 \\
        --data-dir ../shared/data --fractions 1 1.5 2 --time-budget 0          # on a GPU: the published one

On a GPU, --peer-kind original runs the published airbench94_muon.py (github.com/KellerJordan/cifar10-airbench)
unchanged: it compiles for minutes in a warm-up run that its seconds leave out, as its own figures do, then runs 200
times (TORCHDYNAMO_DISABLE=1 in the environment runs it uncompiled).

Every CPU run of ours tells malloc to keep freed memory (cifarkit.runtime.keep_freed_memory: 0.7 x the seconds an
epoch on a 2-core AMD EPYC); --peer-malloc keep gives the peer the same, to compare the recipes alone.

The peer's output is kept in --output/peer-<time>.log. Its epochs take minutes to hours on a CPU, so to try more of
ours against it later on the same machine, pass its figures from that log with --peer-result ACCURACY SECONDS.
"""

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import predict as predict_cli  # noqa: E402
from time_to_accuracy import check_flags, train_and_score  # noqa: E402
from cifarkit import models, predict, read, runtime  # noqa: E402
from cifarkit.atomic import atomic_path  # noqa: E402
from cifarkit.errors import HelpFormatter, UserError, cli  # noqa: E402

RESULT = re.compile(r"TTA test accuracy ([0-9.]+), ([0-9.]+) s of training\+eval")

# What runs before the peer's file, in its process, for --peer-autocast off and --peer-malloc keep: the file stays
# as it is. The first turns every CPU autocast region off (fp32) by swapping torch.autocast before the peer imports
# it; the second gives malloc the setting every CPU run of ours has (runtime.keep_freed_memory).
WITHOUT_CPU_AUTOCAST = """
import torch
class Autocast(torch.autocast):
    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        super().__init__(device_type, dtype, enabled and device_type != "cpu", cache_enabled)
torch.autocast = Autocast
"""
KEEP_FREED_MEMORY = """
from cifarkit import runtime
assert runtime.keep_freed_memory(), "--peer-malloc keep: this C library has no mallopt"
"""
RUN_PEER = """
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_peer(peer, data_dir, epochs, autocast=True, log=None, cwd=None, time_limit=None, keep_memory=False):
    """The peer's own (accuracy, seconds of training + its final TTA evaluation, runs), from its output (see
    peer_figures); its output is passed through as it comes, since it runs for minutes, and kept in `log` once it
    has given its figures. After `time_limit` seconds the peer is stopped and the runs it finished count."""
    prelude = ("" if autocast else WITHOUT_CPU_AUTOCAST) + (KEEP_FREED_MEMORY if keep_memory else "")
    launch = ["-c", prelude + RUN_PEER] if prelude else []
    data_arg = Path(data_dir).resolve() if cwd else data_dir  # the original GPU script runs in a folder of its own
    proc = subprocess.Popen([sys.executable, *launch, str(Path(peer).resolve()), str(data_arg), f"{epochs:g}"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    stopped = threading.Event()
    timer = threading.Timer(time_limit, lambda: (stopped.set(), proc.terminate())) if time_limit else None
    if timer:
        timer.start()
    lines = []
    try:
        for line in proc.stdout:
            print(f"peer | {line}", end="", flush=True)
            lines.append(line.rstrip())
    except BaseException:  # Ctrl-C here: the peer must not train on in the background
        proc.kill()
        raise
    finally:
        if timer:
            timer.cancel()
    if proc.wait() != 0 and not stopped.is_set():
        raise UserError(f"the peer {peer} exited with {proc.returncode}: {lines[-1] if lines else 'no output'}")
    figures = peer_figures(lines)
    if figures is None:
        raise UserError(f"the peer {peer} printed no result: neither a line 'TTA test accuracy A, S s of "
                        f"training+eval' nor a table row of a finished run after its warm-up"
                        + (f" in the {time_limit:g} s of --peer-time-limit" if stopped.is_set() else ""))
    if log is not None:
        with atomic_path(log) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in lines))
    return figures


def peer_figures(lines):
    """(accuracy, seconds, runs): the CPU port's result line, or else the original GPU script's table, the mean
    of the 'eval' rows of its runs (its first run, 'warmup', compiles and trains on random labels: left out).
    None when there is neither."""
    found = [m for m in map(RESULT.search, lines) if m]
    if found:
        return float(found[-1][1]), float(found[-1][2]), 1
    runs, run = [], None
    for line in lines:  # |  run  |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) != 6:
            continue
        run = cells[0] or run  # a run's number is printed on its first row only
        if cells[1] == "eval" and run != "warmup":
            try:
                runs.append((float(cells[4]), float(cells[5])))
            except ValueError:
                continue
    if not runs:
        return None
    acc, seconds = np.mean(runs, axis=0)
    return float(acc), float(seconds), len(runs)


def airbench_data(data_dir, folder):
    """cifar10/train.pt and test.pt under `folder`, in the original GPU script's own layout (NHWC uint8 images,
    int64 labels, class names), from --data-dir: without them it downloads CIFAR-10 itself."""
    cifar = read.load(data_dir, "cifar10", download=False)
    for name, x, y in [("train", cifar.train_x, cifar.train_y), ("test", cifar.test_x, cifar.test_y)]:
        with atomic_path(Path(folder) / "cifar10" / f"{name}.pt") as tmp:
            torch.save({"images": torch.from_numpy(x), "labels": torch.from_numpy(y).long(),
                        "classes": list(cifar.classes)}, tmp)


def secs(s):
    """Seconds as a table shows them: whole on a CPU (minutes to hours), to a hundredth on a GPU (seconds)."""
    return f"{s:.0f}" if s >= 100 else f"{s:.1f}" if s >= 10 else f"{s:.2f}"


def predict_costs(run):
    """(TTA, seconds of predict.py's path in this process on the 10,000 test images, accuracy) for each TTA
    choice, with the checkpoint of `run`: what TTA costs and buys."""
    solution = Path(pd.read_json(run / "config.json", typ="series")["split_dir"]) / "solution.csv"
    rows = []
    for tta in ["none", *predict.TTA]:
        sub = run / f"submission-tta-{tta}.csv"
        t0 = time.perf_counter()
        labels = predict.run(predict_cli.parser().parse_args(
            ["--checkpoint", str(run / "best.pt"), "--submission", str(sub)] + ([] if tta == "none" else ["--tta", tta])))
        seconds = time.perf_counter() - t0
        rows.append((tta, seconds, predict.score(labels, solution)))
    return rows


@cli
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--peer", required=True, help="the peer script (airbench94_muon_cpu.py, or on a GPU the original "
                                                 "airbench94_muon.py with --peer-kind original)")
    p.add_argument("--peer-kind", choices=["cpu-port", "original"], default="cpu-port",
                   help="cpu-port: run as PEER DATA EPOCHS, one result line; original: the published GPU script, run "
                        "without arguments in --output/peer-original/ beside the cifar10/train.pt and test.pt it "
                        "reads (written there from --data-dir), the mean of the runs it prints after its warm-up")
    p.add_argument("--peer-time-limit", type=float, metavar="SECONDS",
                   help="stop the peer after this long and take the runs it finished (the original runs 200 times)")
    p.add_argument("--data-dir", required=True, help="folder with cifar-10-batches-py/ (the real CIFAR-10)")
    p.add_argument("--peer-epochs", type=float, default=8, help="the peer's epochs (its own default)")
    p.add_argument("--peer-autocast", choices=["auto", "on", "off"], default="auto",
                   help="the peer's bf16 CPU autocast: auto turns it off where the CPU has no native bf16")
    p.add_argument("--peer-malloc", choices=["as-is", "keep"], default="as-is",
                   help="keep: run the peer with the malloc setting of our CPU runs (freed memory kept, see "
                        "cifarkit.runtime.keep_freed_memory), to compare the recipes without it; as-is: the peer "
                        "as published")
    p.add_argument("--peer-result", type=float, nargs=2, metavar=("ACCURACY", "SECONDS"),
                   help="the peer's figures from an earlier run on this machine (its result line, e.g. 0.9388 4466): "
                        "the peer is not run again")
    p.add_argument("--model", default="fast_cnn_muon",
                   help="our model (see train.py --list-models): by default fast_cnn_muon, the record's recipe at its "
                        "widths, ahead of fast_cnn_s_muon at the peer's time on both CPUs measured (README, 'The "
                        "speed recipe')")
    p.add_argument("--hold-out-val", action="store_true",
                   help="train ours on the split's 45,000 training images alone (by default on train + val, the "
                        "peer's 50,000)")
    p.add_argument("--fractions", type=float, nargs="*", default=[1.0, 0.8],
                   help="our training budgets as fractions of the peer's seconds")
    p.add_argument("--time-budget", type=float, default=600, help="one more budget in seconds for ours (0: none)")
    p.add_argument("--tta", default="flip_shift_unsure", choices=["none", *predict.TTA],
                   help="our test-time augmentation (the peer's own is flip_shift; flip_shift_unsure is as accurate "
                        "on our checkpoints at a third of its cost)")
    p.add_argument("--output", default="runs/bench_vs_airbench", help="folder for our runs")
    p.add_argument("extra", nargs="*", help="more train.py flags for ours, after --")
    a = p.parse_args()
    peer, data = Path(a.peer), Path(a.data_dir)
    if not peer.is_file():
        raise UserError(f"--peer {peer}: no such file")
    if not (data / "cifar-10-batches-py").is_dir():
        raise UserError(f"--data-dir {data}: no cifar-10-batches-py/ folder in it")
    if a.peer_result and not (0 <= a.peer_result[0] <= 1 and a.peer_result[1] > 0):
        raise UserError("--peer-result ACCURACY SECONDS: an accuracy from 0 to 1 and seconds above 0, "
                        "as the peer's result line prints them")
    if (a.peer_epochs <= 0 or any(f <= 0 for f in a.fractions) or a.time_budget < 0
            or (a.peer_time_limit is not None and a.peer_time_limit <= 0)):
        raise UserError("--peer-epochs, --fractions and --peer-time-limit must be positive, --time-budget 0 or more")
    if a.peer_malloc == "keep" and a.peer_result:
        raise UserError("--peer-malloc keep sets how the peer runs, and --peer-result does not run it: give one")
    if a.peer_kind == "original" and not a.peer_result and not torch.cuda.is_available():
        raise UserError("--peer-kind original: the published script needs a CUDA GPU; on a CPU run its CPU port")
    if any(f == "--experiment" or f.startswith("--experiment=") for f in a.extra):
        raise UserError("--experiment: this benchmark names its runs itself (a dated folder each, under --output)")
    if not a.fractions and not a.time_budget:
        raise UserError("nothing of ours to run: give --fractions or a --time-budget above 0")
    train_args = check_flags(a.extra, "the flags after --")  # an unknown flag fails now, not after the peer's minutes
    if a.hold_out_val and train_args.train_on_val:
        raise UserError("--hold-out-val keeps val out of our training, and --train-on-val after -- trains on it: "
                        "give one")
    models.entry(a.model)
    if not a.hold_out_val and not train_args.train_on_val:
        a.extra.append("--train-on-val")

    original = a.peer_kind == "original"  # a GPU script: no CPU autocast to turn off
    autocast = original or a.peer_autocast == "on" or (a.peer_autocast == "auto" and runtime.cpu_has_native_bf16())
    if a.peer_result:
        (peer_acc, peer_s), peer_runs = a.peer_result, 1
    else:
        cwd = Path(a.output) / "peer-original" if original else None
        if original:
            airbench_data(data, cwd)
        log = Path(a.output) / f"peer-{time.strftime('%Y%m%d-%H%M%S')}.log"
        peer_acc, peer_s, peer_runs = run_peer(peer, data, a.peer_epochs, autocast, log, cwd, a.peer_time_limit,
                                               keep_memory=a.peer_malloc == "keep")
        print(f"kept the peer's output in {log}")
    budgets = [(f"{f:g} x the peer's time", f * peer_s) for f in a.fractions]
    budgets += [(f"{a.time_budget:g} s budget", a.time_budget)] if a.time_budget else []
    rows = []
    for name, seconds in budgets:
        r = train_and_score(str(data), a.model, f"{seconds:.1f}", a.output, a.tta, a.extra)  # a dated run folder each
        rows.append(dict(r, name=name, total=r["train_seconds"] + r["predict_seconds"]))

    ours = " ".join([a.model, *a.extra])
    machine = runtime.device_name(torch.device(rows[0]["device"]))  # the CPU's model, for the note
    print(f"\nCIFAR-10 test accuracy (the official test set) on {machine}; "
          f"the peer's seconds are its training + final TTA evaluation, ours training + predict.py (TTA {a.tta}):")
    print("| who | epochs | seconds | x the peer's time | test accuracy | vs the peer |\n|" + " --- |" * 6)
    setting = "" if autocast else ", CPU autocast off (fp32)"
    setting += ", malloc keeping freed memory" if a.peer_malloc == "keep" else ""
    given = ", an earlier run's figures (--peer-result)" if a.peer_result else ""
    given += f", the mean of {peer_runs} runs" if peer_runs > 1 else ""
    print(f"| peer: {peer.name}{setting}{given} | {a.peer_epochs:g} | {secs(peer_s)} | 1.00 | {peer_acc:.2%} | |")
    for r in rows:
        print(f"| ours: {ours}, {r['name']} | {r['epochs']} | {secs(r['total'])} "
              f"({secs(r['train_seconds'])} + {secs(r['predict_seconds'])}) | {r['total'] / peer_s:.2f} | "
              f"{r['acc']:.2%} | {(r['acc'] - peer_acc) * 100:+.2f} points |")
    reached = [r for r in rows if r["acc"] >= 0.94]
    first = min(reached, key=lambda r: r["total"]) if reached else None
    print("\nours to 94.0%: " + (f"{secs(first['total'])} s, {first['total'] / peer_s:.2f} x the peer's "
                               f"{secs(peer_s)} s" if first else "not reached in these budgets"))
    print(f"\npredict.py on the 10,000 test images with the last run's checkpoint ({rows[-1]['name']}): its path "
          f"in this process (checkpoint, model, inference, checked CSV; no Python start-up):")
    for tta, seconds, acc in predict_costs(rows[-1]["run"]):
        print(f"  TTA {tta:17s} {seconds:5.1f} s  {acc:.2%}")


if __name__ == "__main__":
    main()
