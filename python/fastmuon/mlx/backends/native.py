"""The native CPU backend for mlx arrays: MLX primitives in fastmuon._mlx_ext that run on the
BLAS (the Linux mlx-cpu wheel multiplies with a reference BLAS at ~4 GFLOP/s).

They compute in fp32 and run on the CPU stream; they compose inside mx graphs and mx.compile.
Threads: ``fastmuon.threads.plan_threads`` within ``fastmuon.threads.available_cpus()`` (MLX
has no thread count of its own to honour); a batch is shared out over OpenMP threads, as on the
torch side.
"""

from __future__ import annotations

from typing import List, Tuple

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


def muon_step(lr: mx.array, grads: List[mx.array], momenta: List[mx.array], weights: List[mx.array],
              skipped: List[mx.array], views: List[Tuple[int, int, int]], scales: List[float], plan: Plan, *,
              momentum: float, nesterov: bool, weight_decay: float,
              cautious: bool) -> Tuple[List[mx.array], List[mx.array], List[mx.array]]:
    """fastmuon.mlx's Muon step of float32 or bfloat16 parameters as one primitive
    (``_mlx_ext.muon_step``):
    the new weights, momenta and skipped counts, bitwise those of the eager step
    (``optim/local.step_per_parameter``). Each parameter is seen as its (batch, rows, cols)
    ``views`` entry; all matrices are shared out over the threads together."""
    blas_threads, workers = threads.plan_threads(views, threads.available_cpus())
    out = mlx_ext_module().muon_step(
        lr, grads, momenta, weights, skipped, views=views, scales=scales, plan=kernel_plan(plan),
        momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, cautious=cautious,
        workers=workers, blas_threads=blas_threads, stream=mx.cpu,
    )
    count = len(grads)
    return out[:count], out[count:2 * count], out[2 * count:]
