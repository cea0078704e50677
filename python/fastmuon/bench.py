"""``python -m fastmuon bench``: time and orthogonality error of every method on every available
backend, on the weight shapes of one GPT-2-small block.

Times are medians of a few runs after one warm-up; the error is max |sigma_i(O) - 1| of the
output, from a float64 SVD. Compare times as ratios within one run: this machine is noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import time
from dataclasses import dataclass
from typing import Callable, List

import numpy as np

from ._plan import METHODS

GPT2_SMALL_BLOCK = ((2304, 768), (768, 768), (3072, 768), (768, 3072))


@dataclass
class Row:
    provider: str
    method: str
    shape: tuple
    seconds: float
    error: float


def _providers(quick: bool) -> List[tuple]:
    """(name, make_input, run, to_numpy, shape_filter) for every installed framework/backend."""
    from ._native import blas_available, mlx_ext_available

    out = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        from .torch import orthogonalize as torch_orth

        backends = ["reference"] + (["native"] if blas_available() else [])
        for backend in backends:
            out.append(
                (
                    f"torch/{backend}",
                    torch.from_numpy,
                    lambda G, method, b=backend: torch_orth(G, method=method, backend=b),
                    lambda O: O.double().numpy(),
                    lambda shape: True,
                )
            )
    if importlib.util.find_spec("mlx") is not None:
        import mlx.core as mx

        from .mlx import orthogonalize as mlx_orth

        def run_mlx(G, method, backend):
            O = mlx_orth(G, method=method, backend=backend)
            mx.eval(O)
            return O

        # mlx-cpu on Linux multiplies with a reference BLAS (~4 GFLOP/s): --quick times its
        # reference path on the square shape only.
        slow_reference = quick and platform.system() == "Linux"
        backends = ["reference"] + (["native"] if mlx_ext_available() else [])
        for backend in backends:
            only_square = slow_reference and backend == "reference"
            out.append(
                (
                    f"mlx/{backend}",
                    mx.array,
                    lambda G, method, b=backend: run_mlx(G, method, b),
                    lambda O: np.array(O.astype(mx.float32), dtype=np.float64),
                    (lambda shape: shape == (768, 768)) if only_square else (lambda shape: True),
                )
            )
    return out


def orthogonality_error(O: np.ndarray) -> float:
    sigma = np.linalg.svd(O, compute_uv=False)
    return float(np.max(np.abs(sigma - 1.0)))


def _median_time(fn: Callable[[], object], repeats: int) -> tuple:
    """(median seconds, the result of the warm-up call)."""
    result = fn()  # warm-up: allocations, lazy imports, compiled graphs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def run(shapes=GPT2_SMALL_BLOCK, methods=METHODS, quick: bool = False, seed: int = 0) -> List[Row]:
    rng = np.random.default_rng(seed)
    inputs = {shape: rng.standard_normal(shape).astype(np.float32) for shape in shapes}
    repeats = 1 if quick else 3
    rows = []
    for name, make_input, orth, to_numpy, wanted in _providers(quick):
        for shape in shapes:
            if not wanted(shape):
                continue
            G = make_input(inputs[shape])
            for method in methods:
                seconds, O = _median_time(lambda: orth(G, method), repeats)
                error = orthogonality_error(to_numpy(O))
                rows.append(Row(name, method, shape, seconds, error))
    return rows


def format_table(rows: List[Row]) -> str:
    lines = [f"{'provider':18s} {'method':14s} {'shape':>11s} {'time (s)':>9s} {'max|s-1|':>9s}"]
    for r in rows:
        shape = f"{r.shape[0]}x{r.shape[1]}"
        lines.append(f"{r.provider:18s} {r.method:14s} {shape:>11s} {r.seconds:9.3f} {r.error:9.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmuon bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one timed run per case (about a minute)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args(argv)
    rows = run(methods=args.methods, quick=args.quick)
    if not rows:
        print("no framework installed: pip install 'fastmuon[torch]' or 'fastmuon[mlx]'")
        return 1
    print(format_table(rows))
    return 0
