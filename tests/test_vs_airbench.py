"""benchmarks/vs_airbench.py end to end on tiny data, with a stand-in for the peer script: the peer's figures are
read from its own result line, ours are scored from the CSV we wrote, and a peer that fails is one line."""

import json
import pickle
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from cifarkit import predict
from cifarkit.errors import UserError
from conftest import FAULT_STEPS, ROOT, assert_pages_reused, fault_counts, run_script, write_cifar10

RESULT = "airbench94_muon (CPU port): 1 epochs, TTA test accuracy 0.5000, 4.0 s of training+eval"


def bench(tmp_path, peer_source, extra=(), options=(), model="simple_cnn", capsys=None):
    """The benchmark as a user runs it, in a fresh interpreter; with `capsys`, in this one, for the checks that end
    before ours trains (a fresh one costs 4 s of imports a check, and its exit code is cli()'s either way)."""
    data = tmp_path / "data"
    write_cifar10(data)
    peer = tmp_path / "peer.py"
    peer.write_text(peer_source)
    argv = [sys.executable, str(ROOT / "benchmarks" / "vs_airbench.py"), "--peer", str(peer), "--data-dir", str(data),
            "--peer-epochs", "1", *(["--model", model] if model else []), "--fractions", "1", "--time-budget", "0",
            "--tta", "none", "--output", "runs", *options,
            "--", "--train-per-class", "9", "--val-per-class", "3", "--device", "cpu", *extra]
    if capsys is None:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": str(tmp_path)})
    code, out, err = run_script(argv[1:], capsys)
    return subprocess.CompletedProcess(argv, code, out, err)


def test_both_sides_in_one_table(tmp_path):
    r = bench(tmp_path, f"import sys\nassert sys.argv[2] == '1'\nprint('epoch 1')\nprint({RESULT!r})\n")
    assert r.returncode == 0, r.stderr[-800:]
    assert "peer | epoch 1" in r.stdout  # the peer's own progress comes through
    (log,) = (tmp_path / "runs").glob("peer-*.log")  # and is kept, for --peer-result later
    assert log.read_text() == f"epoch 1\n{RESULT}\n" and f"kept the peer's output in runs/{log.name}" in r.stdout
    assert "(the official test set) on CPU (" in r.stdout  # the machine by name, not "cpu"
    assert re.search(r"\| peer: peer\.py(, CPU autocast off \(fp32\))? \| 1 \| 4\.00 \| 1\.00 \| 50\.00% \|", r.stdout)
    # ours on the peer's images, train + val, unless told otherwise
    row = re.search(r"\| ours: simple_cnn --train-per-class 9 --val-per-class 3 --device cpu --train-on-val, 1 x the "
                    r"peer's time \| "
                    r"\d+ \| ([0-9.]+) \([0-9.]+ \+ [0-9.]+\) \| ([0-9.]+) \| ([0-9.]+)% \| ([-+][0-9.]+) points \|",
                    r.stdout)
    assert row, r.stdout
    seconds, ratio, acc, delta = (float(g) for g in row.groups())
    assert ratio == pytest.approx(seconds / 4.0, abs=0.01)
    assert delta == pytest.approx(acc - 50.0, abs=0.006)
    # our accuracy is what the written CSV scores against the official test labels, read here on their own
    (sub,) = (tmp_path / "runs").glob("*/submission.csv")
    assert json.loads((sub.parent / "config.json").read_text())["train_on_val"] is True
    with open(tmp_path / "data" / "cifar-10-batches-py" / "test_batch", "rb") as f:
        truth = np.array(pickle.load(f, encoding="bytes")[b"labels"])
    labels = pd.read_csv(sub).sort_values("id")["label"].to_numpy()
    assert acc == pytest.approx(100 * np.mean(labels == truth), abs=0.006)
    assert ("ours to 94.0%: not reached" in r.stdout) == (acc < 94.0)
    costs = dict(re.findall(r"TTA (\w+) +[0-9.]+ s +([0-9.]+)%", r.stdout))
    assert set(costs) == {"none", *predict.TTA} and float(costs["none"]) == pytest.approx(acc, abs=0.006)


@pytest.mark.parametrize("source, message", [
    ("import sys\nprint('boom')\nsys.exit(3)\n", "exited with 3: boom"),
    ("print('trained, but said nothing we can read')\n", "printed no result: neither a line"),
])
def test_a_failing_peer_is_one_line_and_nothing_of_ours_runs(tmp_path, capsys, source, message):
    r = bench(tmp_path, source, capsys=capsys)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-800:]
    assert not (tmp_path / "runs").exists()


def test_an_earlier_peer_result_is_used_and_the_peer_not_run_again(tmp_path):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", options=["--peer-result", "0.25", "8"], model=None)
    assert r.returncode == 0, r.stderr[-800:]
    assert "| ours: fast_cnn_muon --train-per-class" in r.stdout  # without --model, the record's recipe
    assert not (tmp_path / "peer-ran").exists() and not list((tmp_path / "runs").glob("peer-*.log"))
    assert re.search(r"\| peer: peer\.py(, CPU autocast off \(fp32\))?, an earlier run's figures \(--peer-result\) \| "
                     r"1 \| 8\.00 \| 1\.00 \| 25\.00% \|", r.stdout), r.stdout
    row = re.search(r"1 x the peer's time \| \d+ \| ([0-9.]+) \([0-9.]+ \+ [0-9.]+\) \| ([0-9.]+) \|", r.stdout)
    assert float(row[2]) == pytest.approx(float(row[1]) / 8, abs=0.01)


def test_hold_out_val_trains_ours_on_the_train_part_alone(tmp_path):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", options=["--peer-result", "0.25", "2", "--hold-out-val"])
    assert r.returncode == 0, r.stderr[-800:]
    assert "| ours: simple_cnn --train-per-class 9 --val-per-class 3 --device cpu, 1 x the peer's time" in r.stdout
    (config,) = (tmp_path / "runs").glob("*/config.json")
    assert json.loads(config.read_text())["train_on_val"] is False


def test_hold_out_val_with_train_on_val_is_one_line(tmp_path, capsys):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", options=["--hold-out-val"], extra=["--train-on-val"],
              capsys=capsys)
    assert r.returncode == 2 and "--hold-out-val keeps val out" in r.stderr, r.stderr[-800:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "peer-ran").exists()


@pytest.mark.parametrize("given", [["1.5", "8"], ["0.9", "0"]])
def test_a_peer_result_out_of_range_is_one_line(tmp_path, capsys, given):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", options=["--peer-result", *given], capsys=capsys)
    assert r.returncode == 2 and "--peer-result ACCURACY SECONDS" in r.stderr, r.stderr[-800:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("option", [["--peer-time-limit", "0"], ["--fractions", "0"]])
def test_a_limit_that_is_not_positive_is_one_line(tmp_path, capsys, option):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", options=option, capsys=capsys)
    assert r.returncode == 2 and "must be positive" in r.stderr, r.stderr[-800:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "peer-ran").exists()


def test_a_flag_train_py_lacks_fails_before_the_peer_runs(tmp_path, capsys):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", extra=["--no-such-flag"], capsys=capsys)
    assert r.returncode == 2 and "train.py has no --no-such-flag" in r.stderr, r.stderr[-800:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "peer-ran").exists()


AUTOCAST_PEER = f"""
import sys, torch
open(sys.argv[0]).close()  # the real peer reads its own source from argv[0]
assert __name__ == "__main__" and sys.argv[1:] == ["DATA", "2"], sys.argv
with torch.autocast("cpu", dtype=torch.bfloat16):
    print("autocast", torch.is_autocast_enabled("cpu"), torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype)
print({RESULT!r})
"""


@pytest.mark.parametrize("autocast, seen", [(True, "autocast True torch.bfloat16"),
                                            (False, "autocast False torch.float32")])
def test_the_peer_runs_unchanged_with_its_cpu_autocast_on_or_off(tmp_path, capsys, autocast, seen):
    """Where bf16 is only emulated, the peer is run in fp32 (as ours then is), its file as it is."""
    peer = tmp_path / "peer.py"
    peer.write_text(AUTOCAST_PEER)
    assert load_bench().run_peer(peer, "DATA", 2, autocast) == (0.5, 4.0, 1)
    assert f"peer | {seen}\n" in capsys.readouterr().out


MALLOC_PEER = f"""
import torch
with torch.autocast("cpu", dtype=torch.bfloat16):
    print("autocast", torch.is_autocast_enabled("cpu"))
{FAULT_STEPS}
print({RESULT!r})
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("autocast", [True, False])
def test_peer_malloc_keep_gives_the_peer_our_malloc_setting(tmp_path, capsys, autocast):
    """--peer-malloc keep: the peer's freed feature maps are reused, not faulted in afresh each step, as in our
    runs; as-is: the peer as published. Either way with its CPU autocast as asked."""
    peer = tmp_path / "peer.py"
    peer.write_text(MALLOC_PEER)
    faults = {}
    for keep in (False, True):
        assert load_bench().run_peer(peer, "DATA", 2, autocast, keep_memory=keep) == (0.5, 4.0, 1)
        out = capsys.readouterr().out
        assert f"peer | autocast {autocast}\n" in out
        faults[keep] = fault_counts(out)
    assert_pages_reused(faults[False], faults[True])


def test_peer_malloc_with_an_earlier_peer_result_is_one_line(tmp_path, capsys):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", options=["--peer-malloc", "keep", "--peer-result", "0.94",
                                                                    "400"], capsys=capsys)
    assert r.returncode == 2 and "--peer-malloc keep sets how the peer runs" in r.stderr, r.stderr[-800:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vs_airbench", ROOT / "benchmarks" / "vs_airbench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The published airbench94_muon.py (GPU) as it printed on an H200, cut to its warm-up and two runs.
ORIGINAL_TABLE = """\
---------------------------------------------------------------------------------
|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
---------------------------------------------------------------------------------
|  warmup  |      0  |     0.1070  |   0.1167  |               |        3.0561  |
|          |   eval  |     0.1105  |   0.0921  |       0.0940  |        3.4067  |
---------------------------------------------------------------------------------
|       0  |      0  |     0.7020  |   0.7370  |               |        0.2120  |
|          |   eval  |     0.9810  |   0.9297  |       0.9397  |        1.7031  |
---------------------------------------------------------------------------------
|       1  |      0  |     0.7030  |   0.7302  |               |        0.2081  |
|          |   eval  |     0.9785  |   0.9328  |       0.9395  |        1.7382  |
---------------------------------------------------------------------------------
"""

ORIGINAL_PEER = f"""
import time, torch
train, test = (torch.load(f"cifar10/{{n}}.pt", weights_only=True) for n in ("train", "test"))  # from its own cwd
assert train["images"].shape == (120, 32, 32, 3) and train["images"].dtype == torch.uint8, train["images"].shape
assert test["labels"].dtype == torch.int64 and len(test["labels"]) == 40 and train["classes"][0] == "airplane"
print({ORIGINAL_TABLE!r}, flush=True)
time.sleep(120)  # 198 runs more: stopped by --peer-time-limit
"""


def test_the_original_gpu_script_reads_its_own_files_and_its_runs_are_averaged(cifar10_dir, tmp_path):
    """--peer-kind original: the published script, unchanged, in a folder with cifar10/*.pt written from --data-dir;
    its warm-up run (random labels) is left out, the runs it finished before --peer-time-limit are averaged."""
    bench_module = load_bench()
    peer, cwd = tmp_path / "airbench94_muon.py", tmp_path / "runs" / "peer-original"
    peer.write_text(ORIGINAL_PEER)
    bench_module.airbench_data(cifar10_dir, cwd)
    t0 = time.perf_counter()
    acc, seconds, runs = bench_module.run_peer(peer, cifar10_dir, 8, True, tmp_path / "peer.log", cwd, time_limit=5)
    assert time.perf_counter() - t0 < 60 and runs == 2
    assert acc == pytest.approx((0.9397 + 0.9395) / 2) and seconds == pytest.approx((1.7031 + 1.7382) / 2)
    assert "0.9397" in (tmp_path / "peer.log").read_text()


def test_a_peer_stopped_before_its_first_run_is_one_line(cifar10_dir, tmp_path):
    peer = tmp_path / "peer.py"
    peer.write_text("import time\nprint('compiling', flush=True)\ntime.sleep(120)\n")
    with pytest.raises(UserError, match=r"printed no result: .* in the 1 s of --peer-time-limit"):
        load_bench().run_peer(peer, cifar10_dir, 8, True, None, tmp_path, time_limit=1)


def test_the_original_needs_a_gpu(tmp_path, capsys):
    r = bench(tmp_path, "open('peer-ran', 'w').close()\n", options=["--peer-kind", "original"], capsys=capsys)
    assert r.returncode == 2 and "--peer-kind original: the published script needs a CUDA GPU" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "peer-ran").exists()
