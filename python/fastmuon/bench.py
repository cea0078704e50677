"""Measuring orthogonalization: providers side by side on the same inputs, in one run.

``python -m fastmuon bench [--quick]`` prints the summary table; ``bench/bench_orthogonalize.py``
runs the same measurement on more providers and shapes and appends the rows (with machine,
versions and date) to ``bench/results/``. The helpers live next door: ``bench_timing`` (providers,
medians), ``bench_report`` (tables, progress, JSON lines), ``bench_ops`` (single ops); they are
imported here too, so that ``from fastmuon import bench`` reaches them all.

Times are medians over a few runs after one warm-up. Errors are measured against the float64
SVD polar factor U V^T of the input: ``polar_err`` = ||O - U V^T||_2 and ``orth_err`` =
max |sigma_i(O) - 1|. GFLOP/s use the dense count of the standard iteration, steps * (4 m^2 n +
2 m^3) for an m x n matrix (m <= n), whatever the provider actually computes, so they compare
time, not work. This machine is noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import threads
from .bench_ops import op_flops, op_main  # noqa: F401
from .bench_report import (  # noqa: F401
    Progress,
    append_results,
    compute_dtype_line,
    dtype_name,
    environment,
    format_table,
    format_totals,
    machine_line,
    progress_bar,
    shape_name,
)
from .bench_timing import (  # noqa: F401
    FRAMEWORKS,
    Provider,
    installed_frameworks,
    interleaved_times,
    median_time,
    sgemm_gflops,
)
from .coefficients import JORDAN_NEWTON_SCHULZ
from .flops import PRESET_STEPS, dense_flops, iteration_flops
from .plan import METHODS

GPT2_SMALL_BLOCK = ((2304, 768), (768, 768), (3072, 768), (768, 3072))
BASELINE = "torch/ns_addmm_fp32"
QUICK_BUDGET = 60.0  # seconds, --quick's default


def torch_newton_schulz_addmm(G, steps: int = 5):
    """The baseline users write by hand: Keller Jordan's fp32 Newton-Schulz with torch.addmm
    (a fused GEMM with beta). Kept independent of fastmuon's own code on purpose."""
    import torch

    a, b, c = JORDAN_NEWTON_SCHULZ
    X = G.float()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if tall else X


def torch_all_bf16_iteration(G, plan):
    """A plan's iteration with every value in bf16, the norm included (wide orientation): the
    accuracy bound of fastmuon's bf16 default (tests/test_cpu_defaults.py,
    bench/bench_bf16_accuracy.py). Plain torch, independent of fastmuon's own code."""
    import torch

    X = G.to(torch.bfloat16)
    tall = X.shape[-2] > X.shape[-1]
    X = X.mT if tall else X
    X = X / (torch.linalg.matrix_norm(X) * plan.norm_scale + plan.eps)
    for a, b, c in plan.coefficients:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return (X.mT if tall else X).float()


def providers(methods: Sequence[str] = METHODS, backends: Optional[Sequence[str]] = None,
              frameworks: Optional[Sequence[str]] = None) -> List[Provider]:
    """Every framework (of ``frameworks``, default: the installed ones) x backend x method, plus
    the torch baseline, each with the compute dtype its framework chooses by default."""
    from .native import blas_available, mlx_ext_available

    frameworks = installed_frameworks() if frameworks is None else frameworks

    def framework_providers(framework, native_built, orthogonalize, make_input, to_numpy, evaluate, slow_reference,
                            default_dtype):
        for backend in ["reference"] + (["native"] if native_built else []):
            if backends is not None and backend not in backends:
                continue
            for method in methods:
                yield Provider(
                    f"{framework}/{backend}",
                    method,
                    make_input,
                    lambda G, m=method, b=backend: evaluate(orthogonalize(G, method=m, steps=PRESET_STEPS.get(m, 5),
                                                                          backend=b)),
                    to_numpy,
                    slow=slow_reference and backend == "reference",
                    compute_dtype=lambda shape, m=method, b=backend: dtype_name(default_dtype(b, m, shape)),
                )

    out: List[Provider] = []
    if "torch" in frameworks:
        import torch

        from .torch import orthogonalize as torch_orth
        from .torch.orthogonalize import resolve_compute_dtype as torch_dtype

        to_np = lambda O: O.double().numpy()  # noqa: E731
        out.append(Provider(BASELINE, "newton_schulz", torch.from_numpy, torch_newton_schulz_addmm, to_np,
                            compute_dtype=lambda shape: "fp32"))
        out += framework_providers("torch", blas_available(), torch_orth, torch.from_numpy, to_np,
                                   evaluate=lambda O: O, slow_reference=False,
                                   default_dtype=lambda b, m, shape: torch_dtype(None, b, "cpu", shape, m))
    if "mlx" in frameworks:
        import mlx.core as mx

        from .mlx import orthogonalize as mlx_orth
        from .mlx.orthogonalize import resolve_compute_dtype as mlx_dtype

        def evaluated(O):
            mx.eval(O)
            return O

        # The Linux mlx-cpu wheel multiplies with a reference BLAS (~4 GFLOP/s).
        out += framework_providers("mlx", mlx_ext_available(), mlx_orth, mx.array,
                                   lambda O: np.array(O.astype(mx.float32), dtype=np.float64),
                                   evaluate=evaluated, slow_reference=platform.system() == "Linux",
                                   default_dtype=lambda b, m, shape: mlx_dtype(None, m))
    return out


def polar_factor(G: np.ndarray) -> np.ndarray:
    """U V^T of G's float64 SVD: what every provider approximates."""
    U, _, Vt = np.linalg.svd(G.astype(np.float64), full_matrices=False)
    return U @ Vt


def singular_values(A: np.ndarray) -> np.ndarray:
    """A's singular values (ascending) from the eigenvalues of its smaller Gram matrix: 4-5x
    faster than an SVD at the block's shapes (each row of a bench needs two), and accurate to
    about eps * ||A||^2 / sigma, at worst 1e-8 * ||A|| for a zero one: far below the 4 decimals
    the tables show."""
    A = np.asarray(A, dtype=np.float64)
    A = A if A.shape[0] >= A.shape[1] else A.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(A.T @ A), 0.0, None))


def polar_errors(G: np.ndarray, O: np.ndarray, polar: Optional[np.ndarray] = None) -> Dict[str, float]:
    """``polar_err`` = ||O - U V^T||_2 and ``orth_err`` = max |sigma_i(O) - 1|; ``polar`` is
    ``polar_factor(G)`` when the caller already has it."""
    P = polar_factor(G) if polar is None else polar
    return {
        "polar_err": float(singular_values(O - P)[-1]),
        "orth_err": float(np.max(np.abs(singular_values(O) - 1.0))),
    }


def measure(
    provs: Sequence[Provider],
    shapes: Sequence[tuple] = GPT2_SMALL_BLOCK,
    *,
    repeats: int = 3,
    quick: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> List[Dict[str, Any]]:
    """One row per (provider, shape), in provider order: the median of ``repeats`` runs after a
    warm-up, the providers of a shape taking turns in every repeat (``interleaved_times``);
    ``measure_in_budget`` without a budget (``quick``: see there)."""
    return measure_in_budget(provs, shapes, None, repeats=repeats, quick=quick, seed=seed, progress=progress)[0]


def measure_in_budget(
    provs: Sequence[Provider],
    shapes: Sequence[tuple] = GPT2_SMALL_BLOCK,
    budget: Optional[float] = None,
    *,
    repeats: int = 3,
    quick: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> Tuple[List[Dict[str, Any]], List[str]]:
    """(the rows of ``measure``, one line for each thing the time budget left out).

    With ``budget`` (seconds), every shape is still measured, so that the block totals have all
    of them; whole methods are left out instead. The providers run one method at a time (the
    baseline with the first), each method on every shape, and a method starts only if its
    predicted time, the first method's time scaled by the work, fits in what is left of the
    budget; the first method always runs. With ``quick``, providers marked slow run on the
    square shapes only, after the others and one case at a time, so that each can be left out
    on its own: it runs only if ``predicted_seconds`` fits."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    inputs = {shape: rng.standard_normal(shape).astype(np.float32) for shape in shapes}
    polars = {shape: polar_factor(G) for shape, G in inputs.items()}  # once per shape, for all its rows
    fast = [p for p in provs if not (quick and p.slow)] or list(provs)  # none fast: the slow ones are the block
    slow = [p for p in provs if p not in fast]
    squares = [s for s in shapes if s[0] == s[1]]
    bar = Progress(len(fast) * len(shapes) + len(slow) * len(squares), progress, label="bench")
    rows: List[Dict[str, Any]] = []
    left_out: List[str] = []
    first = None  # (seconds, dense flops) of the first method: the yardstick of the predictions

    def fits(predicted: float, what: str, cases: int) -> bool:
        left = budget - (time.perf_counter() - start) if budget is not None else float("inf")
        if predicted <= left:
            return True
        left_out.append(f"{what} (predicted {predicted:.1f} s, {max(left, 0.0):.1f} s left)")
        bar.skip(cases)
        return False

    for group in [fast] if budget is None else method_rounds(fast):
        work = sum(dense_flops(s, steps=p.steps) for p in group for s in shapes)
        method = group[-1].method
        if first is not None and not fits(first[0] * work / first[1], method, len(group) * len(shapes)):
            continue
        group_start = time.perf_counter()
        for shape in shapes:
            bar.update(0, f"{method if budget is not None else 'all methods'} on {shape_name(shape)}")
            rows += _measure_shape(group, shape, inputs[shape], polars[shape], repeats, bar)
        first = first or (time.perf_counter() - group_start, work)
    for prov in slow:
        for shape in squares:
            what = f"{prov.name} {prov.method} on {shape_name(shape)}"
            if budget is not None and not fits(predicted_seconds(prov, shape, repeats), what, 1):
                continue
            bar.update(0, what)
            rows += _measure_shape([prov], shape, inputs[shape], polars[shape], repeats, bar)
    bar.close()
    rank = {(p.name, p.method): i for i, p in enumerate(provs)}
    return sorted(rows, key=lambda r: rank[(r["provider"], r["method"])]), left_out  # stable: shapes stay in order


def method_rounds(provs: Sequence[Provider]) -> List[List[Provider]]:
    """``provs`` grouped by method, in order of first appearance; the baseline joins the first
    group (every ratio needs it)."""
    baseline = [p for p in provs if p.name == BASELINE]
    others = [p for p in provs if p.name != BASELINE]
    rounds = [[p for p in others if p.method == m] for m in dict.fromkeys(p.method for p in others)] or [[]]
    rounds[0] = baseline + rounds[0]
    return [r for r in rounds if r]


def predicted_seconds(prov: Provider, shape: tuple, repeats: int) -> float:
    """The time of the warm-up and ``repeats`` calls of ``prov`` on ``shape``, from one call on a
    square matrix of a quarter of the smaller side, scaled by the work (for MLX's reference at
    768x768 on 2 cores: 4.2 s predicted, 4.3 s taken; the slow providers' rate per flop hardly
    depends on the size)."""
    side = max(2, min(shape) // 4)
    X = prov.make_input(np.random.default_rng(0).standard_normal((side, side)).astype(np.float32))
    start = time.perf_counter()
    prov.run(X)
    return (time.perf_counter() - start) * dense_flops(shape) / dense_flops((side, side)) * (1 + repeats)


def _measure_shape(group: Sequence[Provider], shape: tuple, G: np.ndarray, polar: np.ndarray, repeats: int,
                   bar: Progress) -> List[Dict[str, Any]]:
    """One row per provider of ``group`` on ``G``, the providers taking turns (``interleaved_times``)."""
    runs = {}
    for i, prov in enumerate(group):
        X = prov.make_input(G)
        runs[i] = lambda prov=prov, X=X: prov.run(X)
    medians, outputs = interleaved_times(runs, repeats)  # the warm-up outputs give the errors
    rows = []
    for i, prov in enumerate(group):
        seconds = medians[i]
        row = {"provider": prov.name, "method": prov.method, "steps": prov.steps, "shape": list(shape),
               "dtype": prov.compute_dtype(tuple(shape)) if prov.compute_dtype else None, "seconds": seconds,
               "gflops": dense_flops(shape) / seconds / 1e9}
        row["flops_dense"], row["flops_issued"] = iteration_flops(prov.method, prov.steps, shape)
        row.update(polar_errors(G, prov.to_numpy(outputs[i]), polar))
        rows.append(row)
        bar.update(1)
    return rows


def with_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Add ``vs_baseline`` (time / baseline time on the same shape) to each row."""
    base = {tuple(r["shape"]): r["seconds"] for r in rows if r["provider"] == BASELINE}
    for r in rows:
        b = base.get(tuple(r["shape"]))
        r["vs_baseline"] = r["seconds"] / b if b else None
    return rows


def block_totals(rows: List[Dict[str, Any]], shapes: Sequence[tuple]) -> List[Dict[str, Any]]:
    """Per provider and method: summed time over ``shapes`` when every shape was measured."""
    wanted = {tuple(s) for s in shapes}
    groups: Dict[tuple, Dict[tuple, Dict[str, Any]]] = {}
    for r in rows:
        if tuple(r["shape"]) in wanted:
            groups.setdefault((r["provider"], r["method"]), {})[tuple(r["shape"])] = r
    totals = []
    for (prov, method), by_shape in groups.items():
        if set(by_shape) == wanted:
            totals.append(
                {
                    "provider": prov,
                    "method": method,
                    "seconds": sum(r["seconds"] for r in by_shape.values()),
                    "polar_err": max(r["polar_err"] for r in by_shape.values()),
                }
            )
    base = next((t["seconds"] for t in totals if t["provider"] == BASELINE), None)
    for t in totals:
        t["vs_baseline"] = t["seconds"] / base if base else None
    return totals


def parse_shape(text: str) -> Tuple[int, int]:
    """'768x3072' -> (768, 3072)."""
    try:
        shape = tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape ROWSxCOLS such as 768x3072")
    return shape


def main(argv=None) -> int:
    started = time.perf_counter()  # the budget counts the whole command: imports, sgemm, printing
    parser = argparse.ArgumentParser(
        prog="python -m fastmuon bench",
        description="Time and error of every orthogonalization method and backend on one "
        "GPT-2-small block, against a fp32 Newton-Schulz with addmm.",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"one timed run per case, MLX's slow reference (Linux) on square shapes only, and a "
                        f"time budget of {QUICK_BUDGET:.0f} s")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="about how long the whole command may take: methods predicted not to fit are left "
                        "out, each on every shape, the first never (default: "
                        f"{QUICK_BUDGET:.0f} with --quick, none otherwise)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=None,
                        help="measure only these (default: every installed one)")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=list(GPT2_SMALL_BLOCK), metavar="ROWSxCOLS",
                        help="the matrices of the block (default: GPT-2 small's, "
                        f"{' '.join(shape_name(s) for s in GPT2_SMALL_BLOCK)})")
    parser.add_argument("--json", metavar="PATH", help="append the rows as JSON lines to PATH")
    args = parser.parse_args(argv)
    frameworks = args.frameworks or installed_frameworks()
    missing = [name for name in frameworks if name not in installed_frameworks()]
    if missing:
        parser.error(f"{missing[0]} is not installed: pip install 'fastmuon[{missing[0]}]'")
    provs = providers(args.methods, frameworks=frameworks)
    if not provs:
        print("no framework installed: pip install 'fastmuon[torch]' or 'fastmuon[mlx]'", file=sys.stderr)
        return 1
    budget = args.budget if args.budget is not None else (QUICK_BUDGET if args.quick else None)
    peak = sgemm_gflops(repeats=3 if args.quick else 5) if "torch" in frameworks else None
    rows, left_out = measure_in_budget(
        provs, args.shapes, None if budget is None else budget - (time.perf_counter() - started),
        repeats=1 if args.quick else 3, quick=args.quick, progress=True)
    with_ratios(rows)
    env = environment()
    print(machine_line(env, peak))
    print(compute_dtype_line(rows))
    print(threads.describe())
    print(format_table(rows, peak))
    print(f"\nwhole block (summed over its {len(args.shapes)} shapes):")
    print(format_totals(block_totals(rows, args.shapes)))
    partial = not_on_every_shape(rows, args.shapes)
    if partial:
        print("measured on some shapes only, so not in the block: "
              + "; ".join(f"{name} on {', '.join(shape_name(s) for s in shapes)}" for name, shapes in partial.items())
              + (" (--quick runs the slow ones on square shapes only)" if args.quick else ""))
    if left_out:
        print(f"left out to keep within the time budget of {budget:.0f} s (--budget to change it):")
        print("\n".join(f"  {what}" for what in left_out))
    if args.json:
        append_results(args.json, rows, env)
    print(f"took {time.perf_counter() - started:.0f} s" + (f" (budget {budget:.0f} s)" if budget is not None else ""))
    return 0


def not_on_every_shape(rows: List[Dict[str, Any]], shapes: Sequence[tuple]) -> Dict[str, List[tuple]]:
    """{provider: the shapes it ran on} for the providers that ran on only some of ``shapes``."""
    ran: Dict[str, List[tuple]] = {}
    for r in rows:
        ran.setdefault(r["provider"], [])
        if tuple(r["shape"]) not in ran[r["provider"]]:
            ran[r["provider"]].append(tuple(r["shape"]))
    return {name: got for name, got in ran.items() if set(got) != {tuple(s) for s in shapes}}
