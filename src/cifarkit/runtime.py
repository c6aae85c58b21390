"""Device and precision choices, made once so train and predict agree."""

import contextlib
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


def device_name(device):
    """What a report should name: the GPU model, or the CPU model and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                  if line.startswith("model name")), "")
    return f"CPU ({model + ', ' if model else ''}{os.cpu_count()} cores)"


def amp_dtype(device, amp=None):
    """The autocast dtype, or None for full precision. amp=None means: on where the hardware is native."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp or cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
