"""What this CPU can do fast, read once per process: whether it multiplies bf16 matrices in
hardware (Intel AMX-BF16, or AVX512-BF16 on Intel and AMD).

On such CPUs torch's bf16 matmul (oneDNN) ran about 2x faster than its fp32 matmul
(AVX512-BF16, AMD EPYC: bench/bench_bf16_gemm.py; about 3x was reported for an Intel Xeon with
AMX); on CPUs without bf16 units it ran ~100x slower. So the CPU default compute dtype of the
orthogonalization is bf16 exactly where these instructions exist.
``FASTMUON_CPU_BF16=0`` or ``=1`` overrides the detection (e.g. to compare both on one machine).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
from typing import Optional

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> str:
    """Linux's ``/proc/cpuinfo``, read once; "" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _cpuinfo_field(key: str) -> Optional[str]:
    """The value of the first ``key : value`` line of ``/proc/cpuinfo``, or None."""
    match = re.search(rf"^{key}\s*:(.*)$", _cpuinfo(), re.M)
    return match.group(1).strip() if match else None


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU feature flags the kernel reports (Linux ``/proc/cpuinfo``); empty elsewhere."""
    return frozenset((_cpuinfo_field("flags") or "").split())


VECTOR_FLAGS = ("avx512f", "avx2", "avx", "asimd", "sse4_2")


@functools.lru_cache(maxsize=None)
def cpu_identity() -> str:
    """Vendor, family and model, and the widest vector unit the kernel reports, e.g.
    "AuthenticAMD family 23 model 49, avx2" (Linux; "" elsewhere): benchmark rows of the same
    processor name ("AMD EPYC") can come from CPUs generations apart."""
    if not _cpuinfo():
        return ""
    vendor, family, model = (_cpuinfo_field(key) or "?" for key in ("vendor_id", "cpu family", "model"))
    widest = next((flag for flag in VECTOR_FLAGS if flag in cpu_flags()), "none")
    return f"{vendor} family {family} model {model}, {widest}"


def has_fast_bf16_matmul() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16), or what
    ``FASTMUON_CPU_BF16`` says. torch's own detection (cpuinfo, on every OS) answers when torch
    is loaded, the only framework whose CPU path computes in bf16; the kernel's flags (Linux)
    otherwise, e.g. for a benchmark header."""
    forced = os.environ.get("FASTMUON_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    torch_cpu = getattr(sys.modules.get("torch"), "cpu", None)
    if hasattr(torch_cpu, "_is_avx512_bf16_supported") and hasattr(torch_cpu, "_is_amx_tile_supported"):
        return bool(torch_cpu._is_avx512_bf16_supported() or torch_cpu._is_amx_tile_supported())
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def describe() -> str:
    """One line for benchmark headers: the processor and the CPU compute dtype it gets."""
    found = [flag for flag in BF16_FLAGS if flag in cpu_flags()]
    dtype = "bf16" if has_fast_bf16_matmul() else "fp32"
    return (f"{platform.processor() or platform.machine()}; bf16 units: {', '.join(found) or 'none'}; "
            f"CPU compute dtype: {dtype}")
