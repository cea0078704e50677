"""How the benchmarks time things: what a provider is, interleaved medians, this machine's
sgemm rate (the yardstick of the 'vs sgemm' columns)."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .flops import PRESET_STEPS

FRAMEWORKS = ("torch", "mlx")


@dataclass
class Provider:
    name: str  # "framework/backend"
    method: str
    make_input: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]  # returns an evaluated result
    to_numpy: Callable[[Any], np.ndarray]
    slow: bool = False  # --quick runs it on square shapes only, after the others
    compute_dtype: Optional[Callable[[tuple], str]] = None  # its dtype ('fp32', 'bf16') for a shape

    @property
    def steps(self) -> int:
        return PRESET_STEPS.get(self.method, 5)


def median_time(fn: Callable[[], Any], repeats: int):
    """(median seconds over ``repeats`` runs, the warm-up's result): ``interleaved_times`` of one
    function."""
    medians, results = interleaved_times({0: fn}, repeats)
    return medians[0], results[0]


def interleaved_times(fns: Dict[Any, Callable[[], Any]], repeats: int) -> Tuple[Dict[Any, float], Dict[Any, Any]]:
    """(median seconds of each function over ``repeats`` runs, its warm-up call's result), the
    functions taking turns in every repeat after one warm-up call each. Timed one after another,
    a burst of machine noise, or threads another function left spinning, would fall on one of
    them only, and the ratios between them with it. Kept by hand for that reason:
    ``torch.utils.benchmark.Timer`` times one statement at a time, and an MLX-only install has
    no torch."""
    results = {key: fn() for key, fn in fns.items()}  # warm-up: allocations, lazy imports, state
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(t)) for key, t in times.items()}, results


def installed_frameworks() -> List[str]:
    return [name for name in FRAMEWORKS if importlib.util.find_spec(name) is not None]


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> Optional[float]:
    """This machine's fp32 GEMM rate through torch (MKL/OpenBLAS), the yardstick of the 'vs
    sgemm' column: the best of ``repeats`` runs, so that a busy moment does not shrink it."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9
