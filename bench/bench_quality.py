"""The quality panel (``fastmuon.quality``) on every backend and compute dtype that runs here:
how far each preset lands from the exact polar factor U V^T, against Jordan's 5-step
Newton-Schulz (``newton_schulz5``, what torch.optim.Muon runs), and how long it takes.

Every preset (``fastmuon.quality.PRESETS``) x panel input (``fastmuon.quality.panel_inputs``:
Gaussian, power-law spectra of condition 1e2 and 1e4, rank 8 plus noise at 768x768, 768x2304 and
768x3072, a 4x256x768 stack, and the momentum buffers of a small MLP, 3072x768 and 768x3072) x
configuration:

    torch/reference  bfloat16   (--repeats timed calls after a warm-up, the presets taking turns)
    torch/reference  float32    (one timed call after a warm-up)
    torch/native     float32    (the fused C++ kernels, fp32 only; timed as bf16)
    torch/reference  float64    (the exact iteration: the float64 column; the one call is timed)
    mlx/native       float32    (one timed call after a warm-up)
    mlx/reference    float32, bfloat16 (the one call is timed; the Linux mlx-cpu wheel multiplies
                     at ~4 GFLOP/s: only the Gaussian and condition-1e4 768x768 inputs and the
                     stack; all inputs with --quick)

``gram5`` refuses 16-bit compute dtypes and is left out of the bf16 rows. Inputs are handed over
in float32 (float64 for the float64 column); errors are measured against the polar factor of
the float64 input. Rows go to bench/results/quality.jsonl (with machine, versions and date; one
``run`` stamp per run), the plot of error against time at 768x3072, bf16, torch reference to
bench/results/quality.png, and the summary (worst ratio of each preset's error to
newton_schulz5's over the inputs, per configuration) to stdout.

    python bench/bench_quality.py [--quick] [--repeats 3] [--only torch/reference/bfloat16 ...]
    python bench/bench_quality.py --plot-only     # table and plot from the latest recorded run

The full run took about 4 minutes on the quiet 2-core machine (about 3 times that while another
process kept a core busy); --quick (the small panel) well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from fastmuon import bench, quality

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "quality.jsonl")
PLOT = os.path.join(HERE, "results", "quality.png")
PARETO_SHAPE = (768, 3072)  # the largest panel size (64x128 ... 96x192 with --quick: 96x192)
PARETO_CONFIG = ("torch", "reference", "bfloat16")


class Config:
    """One (framework, backend, compute dtype) and how to run it on numpy inputs."""

    def __init__(self, framework: str, backend: str, dtype: str, repeats: int,
                 run: Callable[..., Any], prepare: Callable[[np.ndarray], Any],
                 to_numpy: Callable[[Any], np.ndarray], inputs: Optional[Callable[[str], bool]] = None):
        self.framework, self.backend, self.dtype = framework, backend, dtype
        self.repeats, self.run, self.prepare, self.to_numpy = repeats, run, prepare, to_numpy
        self.takes = inputs or (lambda name: True)

    @property
    def key(self) -> str:
        return f"{self.framework}/{self.backend}/{self.dtype}"


def configs(repeats: int, quick: bool, sizes: Sequence) -> List[Config]:
    from fastmuon.native import blas_available, mlx_ext_available

    out: List[Config] = []
    import torch

    from fastmuon.torch import orthogonalize as torch_orth

    def torch_config(backend, dtype_name, reps):
        dtype = getattr(torch, dtype_name)
        in_dtype = np.float64 if dtype_name == "float64" else np.float32
        return Config("torch", backend, dtype_name, reps,
                      run=lambda X, **kw: torch_orth(X, backend=backend, dtype=dtype, **kw),
                      prepare=lambda G: torch.from_numpy(np.ascontiguousarray(G, dtype=in_dtype)),
                      to_numpy=lambda O: O.double().numpy())

    out.append(torch_config("reference", "bfloat16", repeats))
    out.append(torch_config("reference", "float32", min(repeats, 1)))
    if blas_available():  # what "auto" runs for fp32 CPU tensors: timed as carefully as bf16
        out.append(torch_config("native", "float32", repeats))
    out.append(torch_config("reference", "float64", 0))
    try:
        import mlx.core as mx

        from fastmuon.mlx import orthogonalize as mlx_orth
    except ImportError:
        return out

    def mlx_config(backend, dtype_name, reps, inputs=None):
        dtype = getattr(mx, dtype_name)

        def run(X, **kw):
            O = mlx_orth(X, backend=backend, dtype=dtype, **kw)
            mx.eval(O)
            return O

        return Config("mlx", backend, dtype_name, reps, run=run,
                      prepare=lambda G: mx.array(np.asarray(G, dtype=np.float32)),
                      to_numpy=lambda O: np.array(O.astype(mx.float32), dtype=np.float64), inputs=inputs)

    if mlx_ext_available():
        out.append(mlx_config("native", "float32", min(repeats, 1)))
    small = "x".join(map(str, sizes[0]))
    slow = {f"gaussian/{small}", f"powerlaw_1e4/{small}"}
    slow_inputs = None if quick else (lambda name: name in slow or quality.input_kind(name) == "stack")
    out.append(mlx_config("reference", "float32", 0, slow_inputs))
    out.append(mlx_config("reference", "bfloat16", 0, slow_inputs))
    return out


def one_thread(fn):
    """``fn`` through torch's LAPACK (MKL) on one thread. The error measurement is not timed, but
    on this 2-core machine, busy with another process, numpy's threaded eigvalsh of a 768x768
    matrix took 0.02 to 2 s; torch's on one thread stays at 0.03-0.08 s."""
    import torch

    def run(*args):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(torch, *args)
        finally:
            torch.set_num_threads(threads)

    return run


eigvalsh = one_thread(lambda torch, A: torch.linalg.eigvalsh(torch.from_numpy(np.ascontiguousarray(A))).numpy())


@one_thread
def polar_factor(torch, G: np.ndarray) -> np.ndarray:
    """``quality.polar_factor`` (U V^T from the float64 SVD) through torch's LAPACK on one thread."""
    U, _, Vh = torch.linalg.svd(torch.from_numpy(np.ascontiguousarray(G, dtype=np.float64)), full_matrices=False)
    return (U @ Vh).numpy()


def measure(cfgs: Sequence[Config], inputs: Dict[str, np.ndarray], polars: Dict[str, np.ndarray],
            presets: Sequence[str], progress: bool = True) -> List[Dict[str, Any]]:
    rows = []
    for cfg in cfgs:
        names = [p for p in presets
                 if not (cfg.dtype in ("bfloat16", "float16") and quality.PRESETS[p][0] == "gram")]
        start = time.perf_counter()
        for name, G in inputs.items():
            if not cfg.takes(name):
                continue
            got = quality.evaluate(cfg.run, names, {name: G}, repeats=cfg.repeats, prepare=cfg.prepare,
                                   to_numpy=cfg.to_numpy, polars=polars, eigvalsh=eigvalsh)
            for r in got:
                r.update(framework=cfg.framework, backend=cfg.backend, dtype=cfg.dtype, repeats=cfg.repeats)
            rows += got
        if progress:
            print(f"  {cfg.key}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return rows


GROUP = ("framework", "backend", "dtype")


def pareto_shape(rows: Sequence[Dict[str, Any]]) -> tuple:
    """The panel's largest size: the shape of its largest Gaussian input."""
    shapes = [tuple(r["shape"]) for r in rows if quality.input_kind(r["input"]) == "gaussian"]
    return max(shapes, key=lambda s: (s[0] * s[1], s)) if shapes else PARETO_SHAPE


def time_ratios(rows: Sequence[Dict[str, Any]], config=PARETO_CONFIG,
                shape: Optional[tuple] = None) -> Dict[str, Dict[str, float]]:
    """Per preset, on ``config`` at ``shape``: the median over the inputs of that shape of its
    seconds, and of its time relative to newton_schulz5's on the same input."""
    shape = tuple(shape or pareto_shape(rows))
    sel = [r for r in rows if tuple(r[g] for g in GROUP) == config and tuple(r["shape"]) == shape]
    anchor = {r["input"]: r["seconds"] for r in sel if r["preset"] == quality.ANCHOR}
    out: Dict[str, Dict[str, float]] = {}
    for preset in dict.fromkeys(r["preset"] for r in sel):
        mine = [r for r in sel if r["preset"] == preset]
        out[preset] = {
            "seconds": statistics.median(r["seconds"] for r in mine),
            "vs_anchor": statistics.median(r["seconds"] / anchor[r["input"]] for r in mine if r["input"] in anchor),
        }
    return out


NATIVE_CONFIG = ("torch", "native", "float32")


def summary(rows: Sequence[Dict[str, Any]]) -> str:
    ratios = quality.ratios_to_anchor(rows, group=GROUP)
    configs_seen = list(dict.fromkeys(tuple(r[g] for g in GROUP) for r in rows))
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    times = time_ratios(rows)
    native_times = time_ratios(rows, NATIVE_CONFIG)
    main = [c for c in (("torch", "reference", "bfloat16"), ("torch", "reference", "float32"),
                        ("torch", "reference", "float64")) if c in configs_seen]
    lines = ["worst ratio over the inputs of each preset's error to newton_schulz5's (same input, backend "
             "and dtype): relative Frobenius / spectral; 'ok' = no worse on every input in both metrics"]
    head = f"{'preset':16s}" + "".join(f" {c[2] + ' (torch ref)':>26s}" for c in main)
    head += f" {'bf16 time':>10s} {'ms':>6s} {'fp32 native':>12s}"
    lines.append(head)
    for p in presets:
        cells = []
        for c in main:
            e = ratios.get(c + (p,))
            verdict = "ok" if e and e["no_worse"] else "WORSE"
            cells.append(f" {'n/a (refused)':>26s}" if e is None else
                         f" {e['worst_rel_fro']:7.3f} / {e['worst_spectral']:6.3f} {verdict:>7s}")
        t, n = times.get(p), native_times.get(p)
        cells.append(f" {t['vs_anchor']:10.3f} {1e3 * t['seconds']:6.1f}" if t else f" {'-':>10s} {'-':>6s}")
        cells.append(f" {n['vs_anchor']:12.3f}" if n else f" {'-':>12s}")
        lines.append(f"{p:16s}" + "".join(cells))
    lines.append("(time: relative to newton_schulz5 on the same input, median over the "
                 f"{'x'.join(map(str, pareto_shape(rows)))} inputs; bf16: {'/'.join(PARETO_CONFIG)}, median of the "
                 f"repeats, presets taking turns; fp32 native: {'/'.join(NATIVE_CONFIG)}, likewise)")
    lines.append("")
    lines.append("every configuration: worst ratio rel_fro / spectral [input where the worst is], ok / WORSE")
    for c in configs_seen:
        lines.append("/".join(c) + ":")
        for p in presets:
            e = ratios.get(c + (p,))
            if e is None:
                continue
            lines.append(f"  {p:16s} {e['worst_rel_fro']:7.3f} [{e['worst_rel_fro_input']}] / "
                         f"{e['worst_spectral']:6.3f} [{e['worst_spectral_input']}]  "
                         f"{'ok' if e['no_worse'] else 'WORSE'}  ({e['inputs']} inputs)")
    return "\n".join(lines)


def plot(rows: Sequence[Dict[str, Any]], path: str) -> Optional[str]:
    """At the panel's largest size, bf16, torch reference: each metric against time per preset, one colour per
    input with its Pareto front dashed; and the worst ratio to newton_schulz5 over every input of
    the panel (all shapes) against the same time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = pareto_shape(rows)
    size = "x".join(map(str, shape))
    sel = [r for r in rows if tuple(r[g] for g in GROUP) == PARETO_CONFIG and tuple(r["shape"]) == shape]
    if not sel:
        return None
    times = time_ratios(rows)
    ms = {p: 1e3 * t["seconds"] for p, t in times.items()}
    inputs = list(dict.fromkeys(r["input"] for r in sel))
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def label_presets(ax):
        for i, preset in enumerate(sorted(ms, key=ms.get)):
            ax.axvline(ms[preset], color="0.85", lw=0.7, zorder=0)
            ax.annotate(preset, (ms[preset], 0.99 if i % 2 == 0 else 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=7, va="top" if i % 2 == 0 else "bottom", ha="right", color="0.3")

    for ax, metric, label in zip(axes, quality.METRICS, ("||O - UV^T||_F / ||UV^T||_F", "||O - UV^T||_2")):
        for i, name in enumerate(inputs):
            pts = sorted((ms[r["preset"]], r[metric]) for r in sel if r["input"] == name)
            color = colors[i % len(colors)]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, label=quality.input_kind(name), s=28)
            front, best = [], float("inf")
            for x, y in pts:
                if y < best:
                    front.append((x, y))
                    best = y
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=color, ls="--", lw=0.9)
        label_presets(ax)
        ax.set_yscale("log")
        ax.set_ylabel(label + f" at {size}")
    axes[0].legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.02, 0.08))
    ratios = quality.ratios_to_anchor([r for r in rows if tuple(r[g] for g in GROUP) == PARETO_CONFIG])
    ax = axes[2]
    for metric, marker in zip(quality.METRICS, ("o", "s")):
        pts = [(ms[p], ratios[(p,)][f"worst_{metric}"]) for p in ms if (p,) in ratios]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"worst {metric} ratio")
    ax.axhline(1.0, color="k", lw=0.8)
    label_presets(ax)
    ax.set_ylabel("worst ratio to newton_schulz5, all panel inputs")
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(0.98, 0.9))
    for ax in axes:
        ax.set_xlabel(f"ms per call at {size} ({'/'.join(PARETO_CONFIG)})")
        ax.grid(True, which="both", alpha=0.25)
    r0 = sel[0]
    fig.suptitle(f"quality panel, bf16 compute, torch reference: error vs time "
                 f"({r0.get('processor', '?')}, {r0.get('cores', '?')} cores, {r0.get('date', '?')[:10]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latest_run(path: str) -> List[Dict[str, Any]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    last = rows[-1]["run"]
    return [r for r in rows if r["run"] == last]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small panel (64x128, 96x192), every config")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls after a warm-up, torch/reference/bfloat16 and torch/native/float32 (default 3)")
    parser.add_argument("--only", nargs="+", metavar="FRAMEWORK/BACKEND/DTYPE", help="run only these configurations")
    parser.add_argument("--presets", nargs="+", choices=list(quality.PRESETS), default=list(quality.PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help=f"JSON lines to append to (default {RESULTS}; with --quick, none)")
    parser.add_argument("--plot", default=None, help=f"the plot (default {PLOT}; with --quick, none; '' for none)")
    parser.add_argument("--plot-only", action="store_true", help="summary and plot of the latest run in --out")
    args = parser.parse_args(argv)
    if args.plot_only:
        rows = latest_run(args.out or RESULTS)
    else:
        if quality.ANCHOR not in args.presets:
            args.presets.insert(0, quality.ANCHOR)
        sizes = quality.QUICK_SIZES if args.quick else quality.DEFAULT_SIZES
        start = time.perf_counter()
        inputs = quality.panel_inputs(seed=args.seed, sizes=sizes, quick=args.quick)
        polars = {name: polar_factor(G) for name, G in inputs.items()}
        print(f"inputs and polar factors: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        cfgs = configs(args.repeats, args.quick, sizes)
        if args.only:
            unknown = sorted(set(args.only) - {c.key for c in cfgs})
            if unknown:
                parser.error(f"--only: no configuration {', '.join(unknown)} here; "
                             f"these run: {', '.join(c.key for c in cfgs)}")
            cfgs = [c for c in cfgs if c.key in args.only]
        env = bench.environment()
        env["run"] = env["date"]
        env["panel"] = "quick" if args.quick else "full"
        env["seed"] = args.seed
        rows = measure(cfgs, inputs, polars, args.presets)
        out = args.out or (None if args.quick else RESULTS)
        if out:
            bench.append_results(out, rows, env)
        rows = [{**env, **r} for r in rows]
        print(f"{len(rows)} rows in {time.perf_counter() - start:.0f} s" + (f", appended to {out}" if out else ""),
              file=sys.stderr)
    print(summary(rows))
    path = args.plot if args.plot is not None else (None if args.quick and not args.plot_only else PLOT)
    if path:
        made = plot(rows, path)
        if made:
            print(f"plot: {made}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
