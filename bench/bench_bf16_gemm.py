"""Which bf16 GEMM a CPU bf16 path could build on: MKL's ``cblas_gemm_bf16bf16f32`` (the
``mkl`` wheel from PyPI, loaded from --mkl-dir) against torch's bf16 matmul (oneDNN) and the
fp32 GEMMs of both, on X X^T-shaped products (m x k times its transpose). Rates are dense flops
over the median of --repeats. Appends to bench/results/bf16_gemm.jsonl.

MKL is not a dependency of fastmuon; fetch it beside it, e.g.

    pip download --no-deps mkl intel-openmp -d /tmp/mkl && (cd /tmp/mkl && for w in *.whl; do python -m zipfile -e $w x; done)
    python bench/bench_bf16_gemm.py --mkl-dir /tmp/mkl/x
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os

import torch

from fastmuon import bench, cpu

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bf16_gemm.jsonl")
SHAPES = ((768, 3072), (768, 768), (2048, 2048))
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def load_mkl(root: str):
    """MKL's runtime library (after Intel's OpenMP, which it needs) from unpacked wheels."""
    for omp in glob.glob(os.path.join(root, "*.data", "data", "lib", "libiomp5.so")):
        ctypes.CDLL(omp, mode=ctypes.RTLD_GLOBAL)
    found = glob.glob(os.path.join(root, "mkl-*.data", "data", "lib", "libmkl_rt.so*"))
    if not found:
        raise SystemExit(f"no libmkl_rt.so under {root} (see the docstring)")
    mkl = ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)
    mkl.MKL_Set_Num_Threads(torch.get_num_threads())
    gemm_args = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                      ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    for name in ("cblas_gemm_bf16bf16f32", "cblas_sgemm"):
        getattr(mkl, name).argtypes = gemm_args
    return mkl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mkl-dir", required=True, help="folder with the unpacked mkl and intel-openmp wheels")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    mkl = load_mkl(args.mkl_dir)
    rows = []
    for m, k in SHAPES:
        X = torch.randn(m, k)
        X16 = X.to(torch.bfloat16).contiguous()
        C = torch.empty(m, m)

        def mkl_gemm(name, A):
            return lambda: getattr(mkl, name)(ROW_MAJOR, NO_TRANS, TRANS, m, m, k, 1.0, A.data_ptr(), k,
                                              A.data_ptr(), k, 0.0, C.data_ptr(), m)

        cases = {
            "mkl bf16 (cblas_gemm_bf16bf16f32)": mkl_gemm("cblas_gemm_bf16bf16f32", X16),
            "mkl fp32 (cblas_sgemm)": mkl_gemm("cblas_sgemm", X),
            "torch bf16 (oneDNN)": lambda: torch.mm(X16, X16.T),
            "torch fp32": lambda: torch.mm(X, X.T),
        }
        for provider, fn in cases.items():
            seconds = bench.median_time(fn, args.repeats)[0]
            gflops = 2.0 * m * m * k / seconds / 1e9
            rows.append(dict(provider=provider, m=m, k=k, seconds=seconds, gflops=gflops))
            print(f"{m}x{m}x{k}  {provider:36s} {gflops:7.0f} GFLOP/s", flush=True)
    print(cpu.describe())
    bench.append_results(args.out, rows, bench.environment())
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
