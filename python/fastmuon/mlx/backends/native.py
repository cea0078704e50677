"""The native CPU backend for mlx arrays: MLX primitives in fastmuon._mlx_ext that run on the
BLAS (the Linux mlx-cpu wheel multiplies with a reference BLAS at ~4 GFLOP/s).

They compute in fp32 and run on the CPU stream; they compose inside mx graphs and mx.compile.
Threads: ``fastmuon.threads.plan_threads`` within ``fastmuon.threads.available_cpus()`` (MLX
has no thread count of its own to honour); a batch is shared out over OpenMP threads, as on the
torch side.
"""

from __future__ import annotations

import mlx.core as mx

from ... import threads
from ...native import kernel_plan, mlx_ext_module
from ...plan import Plan
from .reference import MlxOps


def xxt(X: mx.array, stream=None) -> mx.array:
    return mlx_ext_module().xxt(X, stream=mx.cpu if stream is None else stream)


def ba_plus_caa(A: mx.array, alpha: float, beta: float, stream=None) -> mx.array:
    return mlx_ext_module().ba_plus_caa(A, float(alpha), float(beta), stream=mx.cpu if stream is None else stream)


def orthogonalize(G: mx.array, plan: Plan) -> mx.array:
    """The plan's iteration in fp32 on the CPU (the kernels take float32, float16 and bfloat16).
    A float64 input, which could overflow float32, is normalized in float64 first (the
    reference's normalization), then rounded to fp32; the result is returned as float64."""
    plan = plan.for_shape(*G.shape[-2:])
    normalize = G.dtype != mx.float64
    if not normalize:
        m, n = G.shape[-2], G.shape[-1]
        with mx.stream(mx.cpu):
            G = MlxOps.normalize(MlxOps.to_batch(G), plan.norm_scale, plan.eps, mx.float32).reshape(
                G.shape[:-2] + (m, n))
    blas_threads, workers = threads.plan_threads([G.shape], threads.available_cpus())
    out = mlx_ext_module().orthogonalize(
        G,
        plan=kernel_plan(plan, normalize=normalize),
        workers=workers,
        blas_threads=blas_threads,
        stream=mx.cpu,
    )
    return out if normalize else out.astype(mx.float64, stream=mx.cpu)
