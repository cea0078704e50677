"""The plain-mlx orthogonalization: what every faster mlx backend is tested against.

``MlxOps`` supplies the matrix operations of ``fastmuon.iteration`` with plain mlx calls; the
Metal driver subclasses it.
"""

from __future__ import annotations

import math

import mlx.core as mx

from ...iteration import orthogonalize_with
from ...plan import Plan


class MlxOps:
    """Plain-mlx matrix operations on (batch, m, n) arrays."""

    @staticmethod
    def xxt(X):
        return X @ X.swapaxes(-1, -2)

    @classmethod
    def ba_plus_caa(cls, A, alpha, beta):
        return cls.addmm(A, A, A, alpha, beta)

    @staticmethod
    def addmm(C, A, B, alpha, beta):
        if C.dtype == mx.float64:  # mx.addmm takes alpha and beta as C++ floats
            return alpha * (A @ B) + beta * C
        return mx.addmm(C, A, B, alpha=alpha, beta=beta)

    @staticmethod
    def matmul(A, B):
        return A @ B

    @staticmethod
    def add_identity(Z, a):
        return Z + a * mx.eye(Z.shape[-1], dtype=Z.dtype)

    @staticmethod
    def to_batch(G, dtype):
        m, n = G.shape[-2], G.shape[-1]
        return G.reshape(math.prod(G.shape[:-2]), m, n).astype(dtype)

    @staticmethod
    def transpose(X):
        return X.swapaxes(-1, -2)

    @staticmethod
    def normalize(X, scale, eps):
        wide = mx.float64 if X.dtype == mx.float64 else mx.float32
        X_wide = X.astype(wide)
        # scaled by the largest magnitude before squaring, so that large entries cannot overflow
        peak = mx.max(mx.abs(X_wide), axis=(-2, -1), keepdims=True)
        peak = mx.where(peak > 0, peak, mx.array(1.0, dtype=wide))
        scaled = X_wide / peak
        norm = peak * mx.sqrt(mx.sum(scaled * scaled, axis=(-2, -1), keepdims=True))
        return (X_wide / (norm * scale + eps)).astype(X.dtype)

    @staticmethod
    def restore(X, G):
        return X.reshape(G.shape).astype(G.dtype)


def orthogonalize(G: mx.array, plan: Plan, compute_dtype: mx.Dtype) -> mx.array:
    """The plan's iteration on G (..., m, n) with plain mlx ops, in ``compute_dtype``."""
    return orthogonalize_with(G, plan, MlxOps(), compute_dtype)
