"""The two symmetric building blocks of every iteration, as public ops on torch tensors."""

from __future__ import annotations

import torch

from ..plan import check_backend
from .backends import native
from .orthogonalize import BACKENDS, check_tensor, select_backend, triton_backend
from .backends.reference import TorchOps, as_batch


def _kernel_backend(backend: str, t: torch.Tensor) -> str:
    check_backend(backend, BACKENDS)
    # The kernels accumulate in fp32: float64 input stays on the reference unless asked.
    compute = torch.float64 if t.dtype == torch.float64 else torch.float32
    if backend in ("native", "triton") and t.dtype == torch.float64:
        raise ValueError(f'backend="{backend}" computes in float32; float64 input needs backend="reference"')
    return select_backend(backend, t, compute)


def xxt(X: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """X X^T over the last two axes: (..., m, k) -> (..., m, m), exactly symmetric on the
    native backend (one syrk, mirrored) and the triton backend (upper tiles, mirrored). 16-bit
    inputs are computed in fp32 and rounded once."""
    check_tensor(X, "X")
    chosen = _kernel_backend(backend, X)
    if chosen == "native":
        return native.xxt(X)
    if chosen == "triton":
        return triton_backend().xxt(X)
    return TorchOps.xxt(as_batch(X)).reshape(*X.shape[:-1], X.shape[-2])


def ba_plus_caa(A: torch.Tensor, *, alpha: float, beta: float, backend: str = "auto") -> torch.Tensor:
    """alpha A A + beta A for symmetric A (..., m, m); the native backend reads only A's upper
    triangle and forms A A = A A^T with one syrk; the triton backend forms A A^T from A's rows
    and computes the upper tiles only, mirrored."""
    check_tensor(A, "A")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square in its last two axes, got shape {tuple(A.shape)}")
    chosen = _kernel_backend(backend, A)
    if chosen == "native":
        return native.ba_plus_caa(A, alpha, beta)
    if chosen == "triton":
        return triton_backend().ba_plus_caa(A, alpha, beta)
    return TorchOps.ba_plus_caa(as_batch(A), alpha, beta).reshape(A.shape)
