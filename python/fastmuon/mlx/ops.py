"""The two symmetric building blocks of every iteration, as public ops on mlx arrays."""

from __future__ import annotations

import contextlib
import math

import mlx.core as mx

from ..plan import check_backend
from .backends import metal_kernels, native
from .orthogonalize import BACKENDS, check_array, select_backend
from .backends.reference import MlxOps


def _kernel_backend(backend: str, a: mx.array) -> str:
    check_backend(backend, BACKENDS)
    if a.dtype == mx.float64:  # the kernels compute in fp32
        if backend in ("native", "metal"):
            raise ValueError(
                f'backend="{backend}" computes in float32; float64 input needs backend="reference"'
            )
        return "reference"
    # native: fp32 compute whatever the input; metal: the input's dtype, fp32 accumulation
    return select_backend(backend, a.dtype if backend == "metal" else mx.float32)


def _on(stream):
    """Run mlx ops on ``stream`` (a Stream or Device) when one is given."""
    return mx.stream(stream) if stream is not None else contextlib.nullcontext()


def xxt(X: mx.array, *, backend: str = "auto", stream=None) -> mx.array:
    """X X^T over the last two axes: (..., m, k) -> (..., m, m), exactly symmetric on the
    native backend (one syrk, mirrored) and the metal backend (half the tiles, mirrored).
    16-bit inputs are computed in fp32 and rounded once. ``stream``: where to run (the native
    backend defaults to the CPU stream)."""
    check_array(X, "X")
    chosen = _kernel_backend(backend, X)
    if chosen == "native":
        return native.xxt(X, stream)
    with _on(stream):
        if chosen == "metal":
            return metal_kernels.xxt(X)
        m, k = X.shape[-2:]
        return MlxOps.xxt(X.reshape(math.prod(X.shape[:-2]), m, k)).reshape(*X.shape[:-1], m)


def ba_plus_caa(A: mx.array, *, alpha: float, beta: float, backend: str = "auto", stream=None) -> mx.array:
    """alpha A A + beta A for symmetric A (..., m, m); the native backend reads only A's upper
    triangle and forms A A = A A^T with one syrk, the metal backend computes the upper tiles
    (reading A's upper triangle for beta A) and mirrors them."""
    check_array(A, "A")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square in its last two axes, got shape {tuple(A.shape)}")
    chosen = _kernel_backend(backend, A)
    if chosen == "native":
        return native.ba_plus_caa(A, alpha, beta, stream)
    with _on(stream):
        if chosen == "metal":
            return metal_kernels.ba_plus_caa(A, alpha, beta)
        m = A.shape[-1]
        return MlxOps.ba_plus_caa(A.reshape(math.prod(A.shape[:-2]), m, m), alpha, beta).reshape(A.shape)
