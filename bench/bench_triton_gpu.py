"""GPU microbenchmark of the Triton kernels against plain torch (cuBLAS), in one run:

* ``xxt``:          X X^T (m x k)             triton_xxt   vs  torch.bmm(X, X^T)
* ``ba_plus_caa``:  c A A + b A (m x m)       triton       vs  torch.baddbmm(A, A, A, beta=b, alpha=c)
* ``orthogonalize``: 5 Polar Express steps     backend="triton" vs backend="reference" (torch GEMMs)

    python bench/bench_triton_gpu.py [--dtype bfloat16] [--quick] [--out bench/results/triton_gpu.jsonl]

Without a CUDA device (or without triton) it prints why and exits 0. Rows, each with the
machine (GPU name, driver/CUDA), versions and date, are appended to ``--out`` as JSON lines.

Flop counts. ``tflops`` is the dense count divided by the time, the same for both providers, so
it compares time (the ratio is the speed-up): X X^T is 2 m^2 k, c A A + b A is 2 m^3 + 2 m^2, and
one orthogonalize step is 4 m^2 n + 2 m^3 (m <= n). The symmetric kernels compute only the tiles
on and above the diagonal: with T = ceil(m / BLOCK_M) tiles a side, T (T + 1) / 2 of T^2, i.e.
about m (m + BLOCK_M) k multiply-adds for X X^T instead of m^2 k, and a step 3 m^2 n + m^3 in the
limit (1.5x less work for square matrices, 1.39x for 768 x 3072). ``tflops_done`` divides the
work the symmetric kernels actually perform (that limit) by the time, for the triton rows.
"""

from __future__ import annotations

import argparse
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "triton_gpu.jsonl")
# (batch, m, n): Muon shapes (GPT-2 small/medium blocks, a 7B-class MLP, square) and a batch.
SHAPES = [(1, 768, 768), (1, 768, 3072), (1, 1024, 4096), (1, 2048, 8192), (1, 4096, 4096), (8, 768, 3072)]
QUICK_SHAPES = [(1, 768, 3072), (1, 4096, 4096)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)

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
    from fastmuon.torch import orthogonalize
    from fastmuon.torch import triton_backend as tb

    dtype = getattr(torch, args.dtype)
    c, b = 15.878769915207462, -22.48329292557795  # the first Polar Express step
    rows = []

    def record(op, shape, provider, ms, dense, done=None):
        row = dict(op=op, batch=shape[0], m=shape[1], n=shape[2], dtype=args.dtype, provider=provider, ms=ms)
        row["tflops"] = dense / (ms * 1e-3) / 1e12
        row["tflops_done"] = None if done is None else done / (ms * 1e-3) / 1e12
        rows.append(row)
        done_txt = "" if done is None else f"  ({row['tflops_done']:6.1f} TFLOP/s of work done)"
        print(f"{op:13s} {shape!s:18s} {provider:10s} {ms:8.3f} ms {row['tflops']:7.1f} TFLOP/s dense{done_txt}")

    for shape in QUICK_SHAPES if args.quick else SHAPES:
        B, m, n = shape
        X = torch.randn(B, m, n, device="cuda", dtype=dtype)
        A = torch.bmm(X, X.mT) / n  # symmetric, O(1) entries

        dense = 2.0 * B * m * m * n
        record("xxt", shape, "torch", do_bench(lambda: torch.bmm(X, X.mT)), dense)
        record("xxt", shape, "triton", do_bench(lambda: tb.xxt(X)), dense, B * m * (m + 1) * n)

        dense = B * (2.0 * m**3 + 2.0 * m * m)
        record("ba_plus_caa", shape, "torch", do_bench(lambda: torch.baddbmm(A, A, A, beta=b, alpha=c)), dense)
        done = B * (m * (m + 1) * m + 2.0 * m * m)
        record("ba_plus_caa", shape, "triton", do_bench(lambda: tb.ba_plus_caa(A, c, b)), dense, done)

        dense = 5 * B * (4.0 * m * m * n + 2.0 * m**3)
        done = 5 * B * (3.0 * m * m * n + m**3)
        for backend, work in (("reference", None), ("triton", done)):
            ms = do_bench(lambda: orthogonalize(X, backend=backend, dtype=dtype))
            record("orthogonalize", shape, backend, ms, dense, work)

    env = bench.environment()
    props = torch.cuda.get_device_properties(0)
    env.update(
        gpu=props.name,
        gpu_memory_gib=round(props.total_memory / 2**30, 1),
        cuda=torch.version.cuda,
        triton=triton.__version__,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
    )
    bench.append_results(args.out, rows, env)
    print(f"{len(rows)} rows appended to {args.out} ({env['gpu']}, torch {env['torch']}, triton {env['triton']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
