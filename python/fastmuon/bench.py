"""Measuring orthogonalization: providers side by side on the same inputs, in one run.

``python -m fastmuon bench [--quick]`` prints the summary table; ``bench/bench_orthogonalize.py``
runs the same measurement on more providers and shapes and appends the rows (with machine,
versions and date) to ``bench/results/``.

Times are medians over a few runs after one warm-up. Errors are measured against the float64
SVD polar factor U V^T of the input: ``polar_err`` = ||O - U V^T||_2 and ``orth_err`` =
max |sigma_i(O) - 1|. GFLOP/s use the dense count of the standard iteration, steps * (4 m^2 n +
2 m^3) for an m x n matrix (m <= n), whatever the provider actually computes, so they compare
time, not work. This machine is noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import cpu, threads
from .flops import PRESET_STEPS, dense_flops, iteration_flops
from .plan import METHODS
from .coefficients import JORDAN_NEWTON_SCHULZ

GPT2_SMALL_BLOCK = ((2304, 768), (768, 768), (3072, 768), (768, 3072))
BASELINE = "torch/ns_addmm_fp32"


@dataclass
class Provider:
    name: str  # "framework/backend"
    method: str
    make_input: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]  # returns an evaluated result
    to_numpy: Callable[[Any], np.ndarray]
    slow: bool = False  # skipped for all but the square shape in --quick runs

    @property
    def steps(self) -> int:
        return PRESET_STEPS.get(self.method, 5)


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


def providers(methods: Sequence[str] = METHODS, backends: Optional[Sequence[str]] = None) -> List[Provider]:
    """Every installed framework x backend x method, plus the torch baseline."""
    from .native import blas_available, mlx_ext_available

    def framework_providers(framework, native_built, orthogonalize, make_input, to_numpy, evaluate, slow_reference):
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
                )

    out: List[Provider] = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        from .torch import orthogonalize as torch_orth

        to_np = lambda O: O.double().numpy()  # noqa: E731
        out.append(Provider(BASELINE, "newton_schulz", torch.from_numpy, torch_newton_schulz_addmm, to_np))
        out += framework_providers("torch", blas_available(), torch_orth, torch.from_numpy, to_np,
                                   evaluate=lambda O: O, slow_reference=False)
    if importlib.util.find_spec("mlx") is not None:
        import mlx.core as mx

        from .mlx import orthogonalize as mlx_orth

        def evaluated(O):
            mx.eval(O)
            return O

        # The Linux mlx-cpu wheel multiplies with a reference BLAS (~4 GFLOP/s).
        out += framework_providers("mlx", mlx_ext_available(), mlx_orth, mx.array,
                                   lambda O: np.array(O.astype(mx.float32), dtype=np.float64),
                                   evaluate=evaluated, slow_reference=platform.system() == "Linux")
    return out


def polar_errors(G: np.ndarray, O: np.ndarray) -> Dict[str, float]:
    U, _, Vt = np.linalg.svd(G.astype(np.float64), full_matrices=False)
    sigma = np.linalg.svd(O, compute_uv=False)
    return {
        "polar_err": float(np.linalg.norm(O - U @ Vt, ord=2)),
        "orth_err": float(np.max(np.abs(sigma - 1.0))),
    }


def median_time(fn: Callable[[], Any], repeats: int):
    """(median seconds over ``repeats`` runs, the warm-up's result): ``interleaved_times`` of one
    function."""
    medians, results = interleaved_times({0: fn}, repeats)
    return medians[0], results[0]


def interleaved_times(fns: Dict[Any, Callable[[], Any]], repeats: int) -> Tuple[Dict[Any, float], Dict[Any, Any]]:
    """(median seconds of each function over ``repeats`` runs, its warm-up call's result), the
    functions taking turns in every repeat after one warm-up call each. Timed one after another,
    a burst of machine noise, or threads another function left spinning, would fall on one of
    them only, and the ratios between them with it."""
    results = {key: fn() for key, fn in fns.items()}  # warm-up: allocations, lazy imports, state
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(t)) for key, t in times.items()}, results


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


def measure(
    provs: Sequence[Provider],
    shapes: Sequence[tuple] = GPT2_SMALL_BLOCK,
    *,
    repeats: int = 3,
    quick: bool = False,
    seed: int = 0,
    progress: bool = False,
    budget: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """One row per (provider, shape), in provider order: the median of ``repeats`` runs after a
    warm-up, the providers of a shape taking turns in every repeat (``interleaved_times``). With ``budget`` (seconds), shapes that would start after it is spent are left out; the
    number of cases left out is in the last row's ``skipped_for_budget``."""
    rng = np.random.default_rng(seed)
    inputs = {shape: rng.standard_normal(shape).astype(np.float32) for shape in shapes}
    jobs = [[p for p in provs if not (quick and p.slow and s[0] != s[1])] for s in shapes]
    bar = progress_bar(sum(len(j) for j in jobs), progress)
    rows = []
    start = time.perf_counter()
    for index, (shape, shape_provs) in enumerate(zip(shapes, jobs)):
        if budget is not None and rows and time.perf_counter() - start > budget:  # at least one shape runs
            rows[-1]["skipped_for_budget"] = sum(len(j) for j in jobs[index:])
            break
        runs = {}
        for i, prov in enumerate(shape_provs):
            G = prov.make_input(inputs[shape])
            runs[i] = lambda prov=prov, G=G: prov.run(G)
        medians, outputs = interleaved_times(runs, repeats)  # the warm-up outputs give the errors
        for i, prov in enumerate(shape_provs):
            seconds, O = medians[i], outputs[i]
            row = {"provider": prov.name, "method": prov.method, "steps": prov.steps, "shape": list(shape),
                   "seconds": seconds}
            row["gflops"] = dense_flops(shape) / seconds / 1e9
            row["flops_dense"], row["flops_issued"] = iteration_flops(prov.method, prov.steps, shape)
            row.update(polar_errors(inputs[shape], prov.to_numpy(O)))
            rows.append(row)
            bar.update(1)
    bar.close()
    rank = {(p.name, p.method): i for i, p in enumerate(provs)}
    return sorted(rows, key=lambda r: rank[(r["provider"], r["method"])])  # stable: shapes stay in order


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, unit: str = "case"):
    """A tqdm bar on stderr when asked for and installed, else one that does nothing."""
    if enabled and importlib.util.find_spec("tqdm") is not None:
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, leave=False)
    return _NoBar()


def environment() -> Dict[str, Any]:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "system": platform.system(),
        "processor": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_bf16_units": cpu.has_fast_bf16_matmul(),
    }
    for package in ("fastmuon", "numpy", "torch", "mlx"):
        try:
            from importlib.metadata import version

            env[package] = version(package)
        except Exception:  # not installed
            env[package] = None
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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


def _common_cells(row: Dict[str, Any], peak: Optional[float], ratio_key: str, ratio_width: int):
    """The shape, 'vs sgemm' and ratio cells of a result row. 'vs sgemm' is the dense-equivalent
    rate over the fp32 sgemm rate: above 1 where a path does less work than a dense fp32
    product (symmetric kernels compute half of X X^T; bf16 runs faster than fp32)."""
    shape = "x".join(str(s) for s in row["shape"])
    pct = f"{row['gflops'] / peak:6.2f}" if peak else f"{'-':>6s}"
    ratio = f"{row[ratio_key]:{ratio_width}.2f}" if row.get(ratio_key) else "-".rjust(ratio_width)
    return shape, pct, ratio


def format_table(rows: List[Dict[str, Any]], peak: Optional[float] = None) -> str:
    """One line per row; 'GF dense' / 'GF issued' are the preset's own work (iteration_flops),
    in GFLOP per call: every product in full, and as issued with the symmetric kernels."""
    head = f"{'provider':20s} {'method':14s} {'shape':>10s} {'time s':>8s} {'GFLOP/s':>8s}"
    head += f" {'vs sgemm':>6s} {'vs base':>8s} {'GF dense':>8s} {'GF issued':>9s} {'polar_err':>9s} {'orth_err':>8s}"
    lines = [head]
    for r in rows:
        shape, pct, ratio = _common_cells(r, peak, "vs_baseline", 8)
        method = f"{r['method']} {r.get('steps', 5)}"
        dense, issued = r.get("flops_dense"), r.get("flops_issued")
        work = f"{dense / 1e9:8.2f} {issued / 1e9:9.2f}" if dense is not None else f"{'-':>8s} {'-':>9s}"
        lines.append(
            f"{r['provider']:20s} {method:14s} {shape:>10s} {r['seconds']:8.3f} "
            f"{r['gflops']:8.1f} {pct} {ratio} {work} {r['polar_err']:9.4f} {r['orth_err']:8.4f}"
        )
    return "\n".join(lines)


def format_totals(totals: List[Dict[str, Any]]) -> str:
    lines = [f"{'provider':20s} {'method':14s} {'block s':>8s} {'vs base':>8s} {'polar_err':>9s}"]
    for t in totals:
        ratio = f"{t['vs_baseline']:8.2f}" if t.get("vs_baseline") else f"{'-':>8s}"
        lines.append(f"{t['provider']:20s} {t['method']:14s} {t['seconds']:8.3f} {ratio} {t['polar_err']:9.4f}")
    return "\n".join(lines)


def append_results(path: str, rows: List[Dict[str, Any]], env: Dict[str, Any]) -> None:
    """Append one JSON line per row, each carrying the environment of the run."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**env, **r}) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastmuon bench",
        description="Time and error of every orthogonalization method and backend on one "
        "GPT-2-small block, against a fp32 Newton-Schulz with addmm.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="one timed run per case, MLX's slow reference on the square shape only, and a time "
                        "budget (about 1 minute on a quiet 2-core machine)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="start no case after this many seconds (default: 60 with --quick, none otherwise)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--json", metavar="PATH", help="append the rows as JSON lines to PATH")
    args = parser.parse_args(argv)
    provs = providers(args.methods)
    if not provs:
        print("no framework installed: pip install 'fastmuon[torch]' or 'fastmuon[mlx]'")
        return 1
    budget = args.budget if args.budget is not None else (60.0 if args.quick else None)
    rows = with_ratios(measure(provs, repeats=1 if args.quick else 3, quick=args.quick, progress=True,
                               budget=budget))
    skipped = sum(r.get("skipped_for_budget", 0) for r in rows)
    if skipped:
        print(f"time budget of {budget:.0f} s spent: {skipped} cases left out (--budget to change it)")
    peak = sgemm_gflops()
    env = environment()
    print(f"{env['processor']}, {env['cores']} cores; fp32 sgemm here: {peak:.0f} GFLOP/s" if peak else "")
    print(cpu.describe())
    print(threads.describe())
    print(format_table(rows, peak))
    print("\nwhole block (summed over the four shapes):")
    print(format_totals(block_totals(rows, GPT2_SMALL_BLOCK)))
    if args.json:
        append_results(args.json, rows, env)
    return 0


# ------------------------------------------------------------------ single ops
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


def format_op_table(rows: List[Dict[str, Any]], peak: Optional[float] = None) -> str:
    lines = [f"{'op':12s} {'provider':16s} {'shape':>10s} {'time ms':>9s} {'GFLOP/s':>8s} {'vs sgemm':>6s} {'vs matmul':>9s} {'rel err':>9s}"]
    for r in rows:
        shape, pct, ratio = _common_cells(r, peak, "vs_matmul", 9)
        lines.append(
            f"{r['op']:12s} {r['provider']:16s} {shape:>10s} {1e3 * r['seconds']:9.2f} {r['gflops']:8.1f} {pct} {ratio} {r['rel_err']:9.2e}"
        )
    return "\n".join(lines)


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
