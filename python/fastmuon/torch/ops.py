"""The two symmetric building blocks of every iteration, as public ops on torch tensors."""

from __future__ import annotations

import torch

from .._plan import check_backend
from . import native
from .orthogonalize import BACKENDS, TorchOps, check_tensor, select_backend


def _kernel_backend(backend: str, t: torch.Tensor) -> str:
    check_backend(backend, BACKENDS)
    # The kernels compute in fp32: float64 input stays on the reference unless asked.
    compute = torch.float64 if t.dtype == torch.float64 else torch.float32
    if backend == "native" and t.dtype == torch.float64:
        raise ValueError('backend="native" computes in float32; float64 input needs backend="reference"')
    return select_backend(backend, t, compute)


def xxt(X: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """X X^T over the last two axes: (..., m, k) -> (..., m, m), exactly symmetric on the
    native backend (one syrk, mirrored). 16-bit inputs are computed in fp32 and rounded once."""
    check_tensor(X, "X")
    if _kernel_backend(backend, X) == "native":
        return native.xxt(X)
    m, k = X.shape[-2:]
    return TorchOps.xxt(X.reshape(-1, m, k)).reshape(*X.shape[:-1], m)


def ba_plus_caa(A: torch.Tensor, *, alpha: float, beta: float, backend: str = "auto") -> torch.Tensor:
    """alpha A A + beta A for symmetric A (..., m, m); the native backend reads only A's upper
    triangle and forms A A = A A^T with one syrk."""
    check_tensor(A, "A")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square in its last two axes, got shape {tuple(A.shape)}")
    if _kernel_backend(backend, A) == "native":
        return native.ba_plus_caa(A, alpha, beta)
    m = A.shape[-1]
    return TorchOps.ba_plus_caa(A.reshape(-1, m, m), alpha, beta).reshape(A.shape)
