"""The native CPU backend for torch tensors: fastmuon._blas (OpenBLAS syrk/gemm).

The kernels compute in fp32 on C-contiguous CPU buffers, which they receive through DLPack
without a copy; other dtypes or layouts are converted once on the way in and out.

Threads. OpenBLAS keeps a thread pool of its own beside torch's OpenMP pool, and idle threads of
each pool spin while the other works. Calls whose work is below ``SINGLE_THREAD_WORK`` run
OpenBLAS on one thread (splitting them costs more than it gains, and never fights torch's
threads); larger ones use ``torch.get_num_threads()`` threads, never more than torch is allowed
(``bench/bench_native_threads.py`` measured both).
"""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from ..native import blas_module
from ..plan import GRAM_RESTART_EVERY, Plan
from .reference import as_batch, through_operators


def check_native_input(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(
            f'backend="native" runs on CPU tensors; {name} is on {t.device} '
            '(use backend="auto" or "reference")'
        )


def _fp32_copy(t: torch.Tensor) -> torch.Tensor:
    """A fresh C-contiguous fp32 copy, in one pass whatever t's dtype and layout."""
    return torch.empty(t.shape, dtype=torch.float32).copy_(t.detach())


def _fp32_view(t: torch.Tensor) -> torch.Tensor:
    """t itself when it already is C-contiguous fp32 (kernels read it in place), else a copy."""
    t = t.detach()
    return t if t.dtype == torch.float32 and t.is_contiguous() else _fp32_copy(t)


# m * m * n (per call, summed over the batch) below which OpenBLAS runs on one thread: on 2 cores
# (AMD EPYC, 2026-11-30) two threads were 1.6-5x slower than one at 128x512 and 256x1024
# (m*m*n <= 6.7e7) and faster from 768x768 (4.5e8) up.
SINGLE_THREAD_WORK = 1e8

_threads_set = [0]  # what OpenBLAS was last told; set only when it changes


def use_threads(work: float) -> int:
    """Give OpenBLAS the thread count for a call of ``work`` = m * m * n; returns it."""
    threads = 1 if work < SINGLE_THREAD_WORK else max(1, torch.get_num_threads())
    if threads != _threads_set[0]:
        blas_module().set_num_threads(threads)
        _threads_set[0] = threads
    return threads


def _work(shape) -> float:
    m, n = sorted(shape[-2:])
    batch = 1
    for size in shape[:-2]:
        batch *= size
    return float(batch) * m * m * n


def xxt(X: torch.Tensor) -> torch.Tensor:
    m = X.shape[-2]
    if X.numel() == 0:
        return X.new_zeros((*X.shape[:-1], m))
    src = as_batch(_fp32_view(X))
    out = torch.empty((src.shape[0], m, m), dtype=torch.float32)
    use_threads(_work(X.shape))
    blas_module().xxt(src, out)
    return out.reshape(*X.shape[:-1], m).to(X.dtype)


def ba_plus_caa(A: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    out = _fp32_copy(A)
    if out.numel() == 0:
        return out.to(A.dtype)
    batch = as_batch(out)
    use_threads(_work(A.shape))
    blas_module().ba_plus_caa(batch, batch, float(alpha), float(beta))
    return out.to(A.dtype)


def _orthogonalize_fused(G: torch.Tensor, coefficients: List[float], norm_scale: float, eps: float, gram: bool,
                        restart_every: int) -> torch.Tensor:
    X = _fp32_copy(G)  # the kernel works in place on this copy
    use_threads(_work(G.shape))
    blas_module().orthogonalize(as_batch(X), np.asarray(coefficients, dtype=np.float64).reshape(-1, 3), norm_scale,
                                eps, gram, restart_every)
    return X.to(G.dtype)


# The fused iteration as a torch operator with a fake (shape-only) implementation, so that
# torch.compile(fullgraph=True) keeps an optimizer step that calls it in one graph.
_orthogonalize_op = torch.library.custom_op("fastmuon::native_orthogonalize", mutates_args=())(_orthogonalize_fused)


@_orthogonalize_op.register_fake
def _(G, coefficients, norm_scale, eps, gram, restart_every):
    return torch.empty_like(G, memory_format=torch.contiguous_format)


def orthogonalize(G: torch.Tensor, plan: Plan) -> torch.Tensor:
    coefficients = [float(c) for step in plan.coefficients for c in step]
    fused = _orthogonalize_op if through_operators(G) else _orthogonalize_fused
    return fused(G, coefficients, plan.norm_scale, plan.eps, plan.uses_gram, GRAM_RESTART_EVERY)
