"""Device, precision and process-group choices, made once so train and predict agree."""

import contextlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError


def pick_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available (use --device cpu)")
    return dev


def _cpuinfo():
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16():
    """bf16 autocast pays off on CPUs with AVX512-BF16 or AMX (measured 1.4-2.7x here); elsewhere it is emulated."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def keep_freed_memory():
    """glibc's malloc gives each buffer over 32 MB its own mmap and unmaps it when freed, so the kernel
    zeroes every page of a CPU batch's feature maps again at each step (16.5 M page faults where 0.7 M remain
    with this; fast_cnn_muon's CPU epoch 50-51 s against 63-69 s on a 2-core AMD EPYC). From now on every buffer
    comes from the heap and freed memory is kept for the next step (up to 2 GB idle). Returns False where the
    C library has no mallopt (not glibc): nothing changes there."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def device_name(device):
    """What a report should name: the GPU model, or the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                  if line.startswith("model name")), "")
    return f"CPU ({model + ', ' if model else ''}{os.cpu_count()} cores)"


def amp_dtype(device, amp=None, cpu_default=None):
    """The autocast dtype, or None for full precision. amp=None means: on where the hardware is native,
    unless the model says autocast slows it on CPUs (cpu_default=False)."""
    if amp is None and device.type == "cpu" and cpu_default is False:
        return None
    if amp is False:
        return None
    if device.type == "cuda":  # emulated bf16 (T4, V100) is slower than fp16 with a gradient scaler
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if amp or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun).

    `control` is a gloo group for small host-side agreements (the time-budget stop): on GPUs it
    lets ranks agree without a CUDA stream sync.
    """
    rank: int = 0
    world: int = 1
    control: object = None

    @property
    def main(self):
        return self.rank == 0

    def shard(self, n):
        """This rank's contiguous share of n items (the first ranks take one more when n % world)."""
        per, extra = divmod(n, self.world)
        lo = self.rank * per + min(self.rank, extra)
        return slice(lo, lo + per + (self.rank < extra))

    def max(self, value):
        """The largest `value` over all ranks (itself without torchrun)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t, torch.distributed.ReduceOp.MAX, group=self.control)
        return t.item()

    def sum(self, tensor):
        """Sum a tensor over all ranks, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def lowest(self, tensor):
        """The element-wise minimum of a tensor over all ranks, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, torch.distributed.ReduceOp.MIN)
        return tensor

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (a run name made from the clock, say)."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def first(self, make):
        """`make()` on rank 0 first (build the split, download weights), then on the others, which
        then find it done; a user error on rank 0 ends every rank with the same line."""
        if self.world == 1:
            return make()
        result, error = None, None
        if self.main:
            try:
                result = make()
            except UserError as e:
                error = str(e)
        error = self.broadcast(error)
        if error is not None:
            raise UserError(error)
        return result if self.main else make()


def init_distributed(device_name="auto"):
    """Join the torchrun job if there is one: NCCL on GPUs, gloo on CPUs. Returns (Dist, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return Dist(), device
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        procs, gpus = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), local + 1), torch.cuda.device_count()
        if procs > gpus:  # every rank says so, before any waits for the others; torch would end one in a traceback
            raise UserError(f"torchrun started {procs} processes on this machine, which has {gpus} GPU(s): one "
                            f"process per GPU (--nproc-per-node {gpus}), or --device cpu for CPU processes")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    control = dist.new_group(backend="gloo") if backend == "nccl" else None
    return Dist(rank, world, control), device


def stop_on_sigterm(run_dir):
    """torchrun ends the survivors of a failed rank with SIGTERM: say in one line how to go on."""
    def stopped(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once: a second SIGTERM while exiting just ends it
        raise UserError("stopped: another process of this distributed run failed or was stopped; "
                        f"continue with the same torchrun command and --resume {run_dir}")

    signal.signal(signal.SIGTERM, stopped)


def lost_peer(error, dist, run_dir):
    """A collective that failed because another rank died becomes one line saying how to go on;
    any other error is ours and stays as it is."""
    if dist.world == 1 or not isinstance(error, RuntimeError):
        return error
    text = str(error)
    if not isinstance(error, getattr(torch.distributed, "DistError", ())) and not any(
            w in text for w in ("gloo", "NCCL", "Connection closed", "Connection reset", "Broken pipe")):
        return error
    first = re.sub(r"^\[[^\]]*\] ", "", text.strip().splitlines()[0]).split(". ")[0] if text.strip() else type(error).__name__
    return UserError(f"rank {dist.rank}: lost contact with another process of this run ({first}); "
                     f"continue with the same torchrun command and --resume {run_dir}")


def end_distributed():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.distributed.destroy_process_group()
