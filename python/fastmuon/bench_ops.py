"""Single ops against the plain matmul users would write instead: ``xxt`` (X X^T) and
``ba_plus_caa`` (beta A + alpha A A) on every installed backend (bench/bench_xxt.py,
bench/bench_ba_plus_caa.py)."""

from __future__ import annotations

import argparse
import importlib.util
import platform
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .bench_report import append_results, environment, format_op_table
from .bench_timing import Provider, median_time, sgemm_gflops


def op_flops(op: str, shape: Sequence[int]) -> float:
    """Dense flop count of one op on an (m, k) input (xxt) or (m, m) input (ba_plus_caa):
    what a plain matmul does; the symmetric kernels do about half of it."""
    m, k = shape[-2:]
    return 2.0 * m * m * k if op == "xxt" else 2.0 * m**3 + m * m


def op_providers(op: str) -> List[Provider]:
    """The op on every installed backend, and the plain matmul users would write instead."""
    from .native import blas_available, mlx_ext_available

    out: List[Provider] = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        from . import torch as fm_torch

        to_np = lambda O: O.double().numpy()  # noqa: E731
        plain = (lambda X: X @ X.T) if op == "xxt" else (lambda A: torch.addmm(A, A, A, beta=-4.775, alpha=2.0315))
        out.append(Provider("torch/matmul", op, torch.from_numpy, plain, to_np))
        for backend in ["reference"] + (["native"] if blas_available() else []):
            fn = (
                (lambda X, b=backend: fm_torch.xxt(X, backend=b))
                if op == "xxt"
                else (lambda A, b=backend: fm_torch.ba_plus_caa(A, alpha=2.0315, beta=-4.775, backend=b))
            )
            out.append(Provider(f"torch/{backend}", op, torch.from_numpy, fn, to_np))
    if importlib.util.find_spec("mlx") is not None:
        import mlx.core as mx

        from . import mlx as fm_mlx

        def evaluated(fn):
            def run(a):
                r = fn(a)
                mx.eval(r)
                return r

            return run

        for backend in ["reference"] + (["native"] if mlx_ext_available() else []):
            fn = (
                (lambda X, b=backend: fm_mlx.xxt(X, backend=b))
                if op == "xxt"
                else (lambda A, b=backend: fm_mlx.ba_plus_caa(A, alpha=2.0315, beta=-4.775, backend=b))
            )
            out.append(
                Provider(
                    f"mlx/{backend}",
                    op,
                    mx.array,
                    evaluated(fn),
                    lambda O: np.array(O, dtype=np.float64),
                    slow=platform.system() == "Linux" and backend == "reference",
                )
            )
    return out


def measure_op(op: str, shapes: Sequence[tuple], *, repeats: int = 5, seed: int = 0) -> List[Dict[str, Any]]:
    """Time and max relative error (vs float64) of ``op`` for every provider and shape."""
    rng = np.random.default_rng(seed)
    rows = []
    for shape in shapes:
        X = rng.standard_normal(shape).astype(np.float32)
        if op == "ba_plus_caa":
            X = ((X + X.T) / 2).astype(np.float32)
        X64 = X.astype(np.float64)
        ref = X64 @ X64.T if op == "xxt" else 2.0315 * X64 @ X64 - 4.775 * X64
        for prov in op_providers(op):
            data = prov.make_input(X)
            seconds, out = median_time(lambda: prov.run(data), repeats)
            err = float(np.max(np.abs(prov.to_numpy(out) - ref)) / np.max(np.abs(ref)))
            rows.append(
                {
                    "op": op,
                    "provider": prov.name,
                    "shape": list(shape),
                    "seconds": seconds,
                    "gflops": op_flops(op, shape) / seconds / 1e9,
                    "rel_err": err,
                }
            )
    base = {tuple(r["shape"]): r["seconds"] for r in rows if r["provider"] == "torch/matmul"}
    for r in rows:
        b = base.get(tuple(r["shape"]))
        r["vs_matmul"] = r["seconds"] / b if b else None
    return rows


def op_main(op: str, shapes: Sequence[tuple], results_path: str, argv=None) -> None:
    """Command line of bench/bench_<op>.py: measure, print, append to ``results_path``."""
    parser = argparse.ArgumentParser(description=f"{op} on every backend against the plain matmul.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=results_path)
    args = parser.parse_args(argv)
    rows = measure_op(op, shapes, repeats=args.repeats)
    peak = sgemm_gflops()
    env = environment()
    env["sgemm_gflops"] = peak
    print(f"{env['processor']}, {env['cores']} cores, {env['date']}; fp32 sgemm {peak:.0f} GFLOP/s")
    print(format_op_table(rows, peak))
    append_results(args.out, rows, env)
    print(f"appended {len(rows)} rows to {args.out}")
