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

    @classmethod
    def symmetric_addmm(cls, C, A, B, alpha, beta):
        return cls.addmm(C, A, B, alpha, beta)

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
    def aol_scale(X, A):
        wide = mx.float64 if A.dtype == mx.float64 else mx.float32
        row_sums = mx.sum(mx.abs(A.astype(wide)), axis=-1, keepdims=True)
        # floored at the smallest normal of A's dtype, as in the torch reference
        floor = mx.array(mx.finfo(A.dtype).smallest_normal, dtype=wide)
        d = mx.rsqrt(mx.maximum(row_sums, floor))  # (batch, m, 1)
        return (X * d).astype(X.dtype), (A * (d * d.swapaxes(-1, -2))).astype(A.dtype)

    @staticmethod
    def to_batch(G):
        m, n = G.shape[-2], G.shape[-1]
        return G.reshape(math.prod(G.shape[:-2]), m, n)

    @staticmethod
    def transpose(X):
        return X.swapaxes(-1, -2)

    @staticmethod
    def normalize(X, scale, eps, dtype):
        # Y / (||Y||_F * scale + eps / p) with Y = X / p rounded to the compute dtype and p a power
        # of two near max |X| (as in the torch reference): no finite X overflows on the way, and
        # the norm is that of the rounded matrix, taken in fp32 (float64 where X or dtype is).
        wide = mx.float64 if mx.float64 in (X.dtype, dtype) else mx.float32
        top = 1023 if wide == mx.float64 else 127  # 2^k stays a normal number for k in [1 - top, top]
        X_wide = X.astype(wide)
        peak = mx.max(mx.abs(X_wide), axis=(-2, -1), keepdims=True)
        p = mx.power(mx.array(2.0, dtype=wide), mx.clip(mx.floor(mx.log2(peak)), 1 - top, top))
        Y = (X_wide / p).astype(dtype).astype(wide)
        # row sums first: one pass over m * n entries rounds in long serial chains (8649 equal
        # fp32 entries: the result of Polar Express 6e-3 off; in two passes 1e-4, as the native
        # kernels' double sum)
        norm = mx.sqrt(mx.sum(mx.sum(Y * Y, axis=-1, keepdims=True), axis=-2, keepdims=True))
        return (Y / (norm * scale + eps / p)).astype(dtype)

    @staticmethod
    def restore(X, G):
        return X.reshape(G.shape).astype(G.dtype)


def orthogonalize(G: mx.array, plan: Plan, compute_dtype: mx.Dtype) -> mx.array:
    """The plan's iteration on G (..., m, n) with plain mlx ops, in ``compute_dtype``."""
    return orthogonalize_with(G, plan, MlxOps(), compute_dtype)
