"""GPU benchmark of the Triton path against plain torch (cuBLAS) and other Muons, in one run:

* ``optimizer_step``: one Muon step on GPT-2-small's Muon weights (12 blocks of c_attn (2304, 768),
  attn c_proj (768, 768), c_fc (3072, 768), mlp c_proj (768, 3072); embeddings excluded; fp32
  weights): fastmuon.torch.Muon with backend "auto" and "triton", each also captured in a CUDA
  graph (and compiled with torch.compile when ``--compile``), torch.optim.Muon, and Keller
  Jordan's SingleDeviceMuon from ``bench/.anchors/muon.py`` (fetched by
  ``bench/fetch_gpu_anchors.sh``; "not available" when absent).
* ``xxt``:          X X^T (m x n)             triton  vs  torch.bmm(X, X^T)
* ``ba_plus_caa``:  c A A + b A (m x m)       triton  vs  torch.baddbmm(A, A, A, beta=b, alpha=c)
* ``orthogonalize``: 5 Polar Express steps     backend "triton", "reference" (torch GEMMs), "auto"

    python bench/bench_triton_gpu.py [--ops optimizer_step,xxt,ba_plus_caa,orthogonalize]
        [--dtype bfloat16] [--quick] [--budget SECONDS] [--autotune] [--compile]
        [--out bench/results/triton_gpu.jsonl] [--auto-table FILE]

Without a CUDA device (or without triton) it prints why and exits 0. Each measurement is appended
to ``--out`` as one JSON line as soon as it is taken (fields gpu, date, op, batch, m, n, dtype,
provider, ms, and the machine and versions), so a run stopped by its time budget keeps what it
measured; ``--budget`` stops starting new measurements once that many seconds have passed. Times
are medians of ``triton.testing.do_bench``. At the end the run prints the ``auto_table`` entries
its orthogonalize rows support (and writes them to ``--auto-table``).

Flop counts. ``tflops`` is the dense count divided by the time, the same for every provider, so
it compares time: X X^T is 2 m^2 n, c A A + b A is 2 m^3 + 2 m^2, and one orthogonalize step is
4 m^2 n + 2 m^3 (m <= n). The symmetric kernels compute only the tiles on and above the
diagonal, about m (m + BLOCK_M) n multiply-adds for X X^T instead of m^2 n, and a step
3 m^2 n + m^3 in the limit; ``tflops_done`` divides that work by the time, for the triton rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "triton_gpu.jsonl")
ANCHOR = os.path.join(HERE, ".anchors", "muon.py")
OPS = ("optimizer_step", "xxt", "ba_plus_caa", "orthogonalize")
# (batch, m, n): Muon shapes (GPT-2 small/medium blocks, a 7B-class MLP, square) and a batch.
SHAPES = [(1, 768, 768), (1, 768, 3072), (1, 1024, 4096), (1, 2048, 8192), (1, 4096, 4096), (8, 768, 3072)]
QUICK_SHAPES = [(1, 768, 3072), (1, 4096, 4096)]
# GPT-2 small (124M): 12 blocks, d_model 768; c_attn, attn c_proj, c_fc, mlp c_proj as (out, in).
GPT2_SMALL_BLOCK = ((2304, 768), (768, 768), (3072, 768), (768, 3072))
GPT2_SMALL_BLOCKS = 12
ROW_FIELDS = ("gpu", "date", "op", "batch", "m", "n", "dtype", "provider", "ms")
# Where tensors go; the tests run the step measurement on "cpu" (under the Triton interpreter).
DEVICE = "cuda"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, in order; of {', '.join(OPS)}")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--quick", action="store_true", help="two kernel shapes only")
    parser.add_argument("--budget", type=float, default=None, help="seconds after which no new measurement starts")
    parser.add_argument("--autotune", action="store_true",
                        help="also time the kernels autotuned (slow: compiles every candidate per shape)")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd fastmuon step")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--auto-table", default=None, help="file for the auto_table entries the run supports")
    args = parser.parse_args(argv)
    ops = [op for op in args.ops.split(",") if op]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"unknown op(s) {', '.join(unknown)}; valid: {', '.join(OPS)}")
    args.ops = ops
    return args


def make_row(env: dict, op: str, shape, dtype: str, provider: str, ms, **extra) -> dict:
    """One result row: the run's environment (gpu, date, versions) and the measurement."""
    batch, m, n = shape
    return {**env, "op": op, "batch": batch, "m": m, "n": n, "dtype": dtype, "provider": provider, "ms": ms, **extra}


class Budget:
    """Wall-clock budget of the run: ``left()`` is False once ``seconds`` have passed."""

    def __init__(self, seconds):
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> bool:
        return self.seconds is None or time.monotonic() - self.start < self.seconds


def load_keller_muon(path: str = ANCHOR):
    """Keller Jordan's ``SingleDeviceMuon`` from a fetched ``muon.py`` (None if absent)."""
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("keller_muon", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "SingleDeviceMuon", None)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to measure")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    try:
        import triton
        from triton.testing import do_bench
    except ImportError:
        print('triton is not installed (pip install "fastmuon[torch]"): nothing to measure')
        return 0

    from fastmuon import bench
    from fastmuon import auto_table

    env = bench.environment()
    props = torch.cuda.get_device_properties(0)
    env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
               triton=triton.__version__, float32_matmul_precision=torch.get_float32_matmul_precision())
    budget = Budget(args.budget)
    rows = []

    def record(op, shape, provider, ms, dense=None, done=None, **extra):
        row = make_row(env, op, shape, args.dtype, provider, ms, **extra)
        if ms is not None and dense is not None:
            row["tflops"] = dense / (ms * 1e-3) / 1e12
            row["tflops_done"] = None if done is None else done / (ms * 1e-3) / 1e12
        rows.append(row)
        bench.append_results(args.out, [row], {})
        shown = "not available" if ms is None else f"{ms:9.3f} ms"
        rate = f" {row['tflops']:7.1f} TFLOP/s dense" if row.get("tflops") is not None else ""
        print(f"{op:14s} {str(tuple(shape)):18s} {provider:28s} {shown}{rate}", flush=True)

    def timed(fn) -> float:
        return do_bench(fn, return_mode="median")

    def guarded(what, fn):
        """Run one measurement unless the budget is spent; a failure is printed, not fatal."""
        if not budget.left():
            print(f"budget of {args.budget:.0f} s spent: skipped {what}", flush=True)
            return
        try:
            fn()
        except Exception as exc:  # report and go on: one provider's failure must not cost the others
            print(f"FAILED {what}: {type(exc).__name__}: {exc}", flush=True)

    dtype = getattr(torch, args.dtype)
    for op in args.ops:
        if op == "optimizer_step":
            optimizer_step_rows(torch, timed, guarded, record)
        else:
            for shape in QUICK_SHAPES if args.quick else SHAPES:
                guarded(f"{op} {shape}", lambda: kernel_rows(torch, timed, record, op, shape, dtype, autotuned=False))
    # the slow extras last, so that a spent budget leaves them out rather than the plain rows
    if args.autotune:
        from fastmuon.torch.backends import triton_common

        triton_common.use_autotuning(True)
        for op in [op for op in args.ops if op != "optimizer_step"]:
            for shape in QUICK_SHAPES:
                guarded(f"{op} {shape} autotuned",
                        lambda: kernel_rows(torch, timed, record, op, shape, dtype, autotuned=True))
        print_autotuner_choices()
        triton_common.use_autotuning(False)
    if args.compile and "optimizer_step" in args.ops:
        guarded("optimizer_step fastmuon_auto (torch.compile)", lambda: compiled_step_row(torch, timed, record))

    print_step_speedups(rows)
    entries = auto_table.entries_from_rows(rows)
    text = auto_table.format_entries(entries)
    print(f"\nauto_table entries these rows support ({len(entries)}):\n{text}")
    if args.auto_table:
        with open(args.auto_table, "w") as f:
            f.write(text)
    print(f"{len(rows)} rows appended to {args.out} ({env['gpu']}, torch {env['torch']}, triton {env['triton']})")
    return 0


def print_step_speedups(rows) -> None:
    """How many times faster the fastest fastmuon step ran than each other Muon (the issue's
    target: at least 2x torch.optim.Muon)."""
    times = {r["provider"]: r["ms"] for r in rows if r["op"] == "optimizer_step" and r["ms"] is not None}
    ours = {name: ms for name, ms in times.items() if name.startswith("fastmuon")}
    if not ours:
        return
    best = min(ours, key=ours.get)
    print(f"\noptimizer_step: fastest fastmuon is {best}, {ours[best]:.3f} ms")
    for name, ms in times.items():
        if not name.startswith("fastmuon"):
            print(f"  {name:28s} {ms:9.3f} ms  -> fastmuon {ms / ours[best]:5.2f}x faster")


def kernel_rows(torch, timed, record, op, shape, dtype, autotuned: bool) -> None:
    """The rows of one kernel op (xxt, ba_plus_caa, orthogonalize) at one shape."""
    from fastmuon.torch import orthogonalize
    from fastmuon.torch.backends import triton_backend as tb

    B, m, n = shape
    suffix = "_autotuned" if autotuned else ""
    X = torch.randn(B, m, n, device=DEVICE, dtype=dtype)
    if op == "xxt":
        dense = 2.0 * B * m * m * n
        if not autotuned:
            record(op, shape, "torch", timed(lambda: torch.bmm(X, X.mT)), dense)
        record(op, shape, "triton" + suffix, timed(lambda: tb.xxt(X)), dense, B * m * (m + 1) * n)
    elif op == "ba_plus_caa":
        c, b = 15.878769915207462, -22.48329292557795  # the first Polar Express step
        A = torch.bmm(X, X.mT) / n  # symmetric, O(1) entries
        dense = B * (2.0 * m**3 + 2.0 * m * m)
        if not autotuned:
            record(op, shape, "torch", timed(lambda: torch.baddbmm(A, A, A, beta=b, alpha=c)), dense)
        done = B * (m * (m + 1) * m + 2.0 * m * m)
        record(op, shape, "triton" + suffix, timed(lambda: tb.ba_plus_caa(A, c, b)), dense, done)
    else:
        dense = 5 * B * (4.0 * m * m * n + 2.0 * m**3)
        done = 5 * B * (3.0 * m * m * n + m**3)
        backends = ["triton"] if autotuned else ["reference", "triton", "auto"]
        for backend in backends:
            ms = timed(lambda: orthogonalize(X, backend=backend, dtype=dtype))
            record(op, shape, backend + suffix, ms, dense, done if backend == "triton" else None)


def print_autotuner_choices() -> None:
    """The configuration the autotuner kept for each (kernel, key): what to compare the per-shape
    configurations with."""
    from fastmuon.torch.backends import triton_ba_plus_caa, triton_xtx, triton_xxt

    for name, tuned in (("xxt", triton_xxt.xxt_kernel_tuned), ("xtx", triton_xtx.xtx_kernel_tuned),
                        ("ba_plus_caa", triton_ba_plus_caa.ba_plus_caa_kernel_tuned)):
        for key, config in getattr(tuned, "cache", {}).items():
            print(f"autotuned {name} {key}: {config}", flush=True)


def gpt2_small_muon_params(torch, seed: int = 0) -> list:
    """GPT-2 small's Muon weights (fp32, on the GPU), each with a fixed random gradient."""
    generator = torch.Generator(DEVICE).manual_seed(seed)
    params = []
    for _ in range(GPT2_SMALL_BLOCKS):
        for shape in GPT2_SMALL_BLOCK:
            p = torch.nn.Parameter(0.02 * torch.randn(shape, device=DEVICE, generator=generator))
            p.grad = torch.randn(shape, device=DEVICE, generator=generator)
            params.append(p)
    return params


def captured_step(torch, opt):
    """``opt.step`` captured in a CUDA graph after one warm-up step (state creation and kernel
    compilation happen there, outside the capture); returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    return graph.replay


def graph_matches_eager(torch, make_opt) -> float:
    """Largest |difference| between weights after two eager steps and after a warm-up step plus
    one replay of the captured step, from the same start: 0 when the graph is faithful."""
    eager_params, graph_params = gpt2_small_muon_params(torch), gpt2_small_muon_params(torch)
    eager = make_opt(eager_params)
    eager.step()
    eager.step()
    replay = captured_step(torch, make_opt(graph_params))
    replay()
    return max(float((a - b).abs().max()) for a, b in zip(eager_params, graph_params))


def step_shape_and_fields():
    """The (batch, m, n) an optimizer_step row carries: the number of matrices and the widest
    matrix of a block (d_model x 4 d_model), and the model's name and Muon parameter count."""
    shapes = [s for _ in range(GPT2_SMALL_BLOCKS) for s in GPT2_SMALL_BLOCK]
    widest = min(GPT2_SMALL_BLOCK, key=lambda s: s[0] / s[1])
    return (len(shapes), *widest), dict(model="gpt2-small-124M", params=sum(r * c for r, c in shapes))


def optimizer_step_rows(torch, timed, guarded, record) -> None:
    """One Muon step on GPT-2 small's Muon weights, for every provider that is available, then
    fastmuon's steps captured in CUDA graphs."""
    from fastmuon.torch import Muon

    shape, extra = step_shape_and_fields()
    keller = load_keller_muon()
    providers = [
        ("fastmuon_auto", lambda ps: Muon(ps, lr=0.02)),
        ("fastmuon_triton", lambda ps: Muon(ps, lr=0.02, backend="triton")),
        ("torch.optim.Muon", lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0)),
    ]
    if keller is not None:
        providers.append(("keller_muon", lambda ps: keller(ps, lr=0.02, weight_decay=0.0)))
    else:
        record("optimizer_step", shape, "keller_muon", None, status="not available",
               note="bench/.anchors/muon.py is missing: run bench/fetch_gpu_anchors.sh before the GPU run", **extra)

    def eager(name, make):
        ms = timed(make(gpt2_small_muon_params(torch)).step)
        record("optimizer_step", shape, name, ms, **extra)

    def graphed(name, make):
        ms = timed(captured_step(torch, make(gpt2_small_muon_params(torch))))
        check = graph_matches_eager(torch, make)
        record("optimizer_step", shape, name + "_cuda_graph", ms, graph_vs_eager_max_abs=check, **extra)

    # AOL with 4 steps, and with 5 (the Gram form on GPT-2's wide matrices), and Polar Express 5 on
    # every matrix (method="auto" runs AOL 5 on the wide matrices and Polar Express 5 on the rest)
    aol = [(f"fastmuon_aol{steps}", lambda ps, steps=steps: Muon(ps, lr=0.02, method="aol", ns_steps=steps))
           for steps in (4, 5)]
    aol.append(("fastmuon_polar_express5", lambda ps: Muon(ps, lr=0.02, method="polar_express")))
    for name, make in [*providers, *aol]:
        guarded(f"optimizer_step {name}", lambda: eager(name, make))
    for name, make in [*providers[:2], *aol]:
        guarded(f"optimizer_step {name} (CUDA graph)", lambda: graphed(name, make))
    # fastmuon orthogonalizes same-shape matrices in chunks of at most STACK_BYTES (16 MiB: 3 of
    # GPT-2's 768 x 3072 in bf16, so 12 orthogonalize calls a step); one call per shape instead:
    with whole_stacks():
        name, make = providers[1]
        guarded(f"optimizer_step {name} (whole stacks)", lambda: eager(name + "_whole_stacks", make))
        guarded(f"optimizer_step {name} (whole stacks, CUDA graph)", lambda: graphed(name + "_whole_stacks", make))


class whole_stacks:
    """While active, fastmuon's Muon orthogonalizes each same-shape stack in one call."""

    def __enter__(self):
        from fastmuon.torch.optim import pipeline

        self.saved, pipeline.STACK_BYTES = pipeline.STACK_BYTES, 1 << 62

    def __exit__(self, *exc):
        from fastmuon.torch.optim import pipeline

        pipeline.STACK_BYTES = self.saved


def compiled_step_row(torch, timed, record) -> None:
    """fastmuon's step (auto, and AOL with 4 and 5 steps) under torch.compile; the compile time is
    recorded too."""
    from fastmuon.torch import Muon

    shape, extra = step_shape_and_fields()
    for name, options in (("fastmuon_auto_compiled", {}), ("fastmuon_aol4_compiled", dict(method="aol", ns_steps=4)),
                          ("fastmuon_aol5_compiled", dict(method="aol", ns_steps=5))):
        step = torch.compile(Muon(gpt2_small_muon_params(torch), lr=0.02, **options).step)
        started = time.monotonic()
        step()  # compiles
        compile_s = time.monotonic() - started
        record("optimizer_step", shape, name, timed(step), compile_s=compile_s, **extra)


if __name__ == "__main__":
    sys.exit(main())
