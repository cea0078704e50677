"""The plain-torch orthogonalization: what every faster torch backend is tested against.

``TorchOps`` supplies the matrix operations of ``fastmuon.iteration`` with plain torch calls
(cuBLAS on CUDA, MKL/oneDNN on CPUs); the Triton driver subclasses it.
"""

from __future__ import annotations

import math

import torch

from ..iteration import orthogonalize_with
from ..plan import Plan


def as_batch(t: torch.Tensor) -> torch.Tensor:
    """(..., m, n) -> (batch, m, n); also for empty tensors, where reshape(-1, m, n) is ambiguous."""
    return t.reshape(math.prod(t.shape[:-2]), *t.shape[-2:])


def frobenius_norm(X: torch.Tensor) -> torch.Tensor:
    """||X||_F per matrix (keepdim), without overflow: squares of fp32 and 16-bit entries are
    summed in float64 (no fp32 square overflows there); float64 entries are scaled by their
    largest magnitude first."""
    if X.dtype != torch.float64:
        return torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True, dtype=torch.float64)
    peak = X.abs().amax(dim=(-2, -1), keepdim=True)
    peak = torch.where(peak > 0, peak, 1.0)
    return peak * torch.linalg.vector_norm(X / peak, dim=(-2, -1), keepdim=True)


class TorchOps:
    """Plain-torch matrix operations on (batch, m, n) tensors."""

    @staticmethod
    def xxt(X):
        if X.shape[0] == 1:  # 2-D: oneDNN's bf16 X X^T ran 1.4x faster as mm than as bmm
            return (X[0] @ X[0].mT).unsqueeze(0)
        return X @ X.mT

    @staticmethod
    def ba_plus_caa(A, alpha, beta):
        return torch.baddbmm(A, A, A, alpha=alpha, beta=beta)

    @staticmethod
    def addmm(C, A, B, alpha, beta):
        return torch.baddbmm(C, A, B, alpha=alpha, beta=beta)

    @staticmethod
    def matmul(A, B):
        return A @ B

    @staticmethod
    def add_identity(Z, a):
        return Z + a * torch.eye(Z.shape[-1], dtype=Z.dtype, device=Z.device)

    @staticmethod
    def to_batch(G, dtype):
        return as_batch(G).to(dtype)

    @staticmethod
    def transpose(X):
        return X.mT

    @staticmethod
    def normalize(X, scale, eps):
        # The norm and the division in at least fp32, rounded once into X's dtype, with no
        # wide copy of X: the reduction and the division convert element by element.
        norm_dtype = torch.promote_types(X.dtype, torch.float32)
        norm = frobenius_norm(X).to(norm_dtype)
        if X.requires_grad and torch.is_grad_enabled():  # out= has no autograd
            return (X.to(norm_dtype) / (norm * scale + eps)).to(X.dtype)
        return torch.div(X, norm * scale + eps, out=torch.empty_like(X))

    @staticmethod
    def restore(X, G):
        return X.reshape(G.shape).to(G.dtype)


def orthogonalize(G: torch.Tensor, plan: Plan, compute_dtype: torch.dtype) -> torch.Tensor:
    """The plan's iteration on G (..., m, n) with plain torch ops, in ``compute_dtype``."""
    return orthogonalize_with(G, plan, TorchOps(), compute_dtype)
