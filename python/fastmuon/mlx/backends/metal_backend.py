"""The Metal backend for mlx arrays: the iteration with fastmuon's Metal kernels for the two
symmetric products (``metal_kernels.py``) and MLX's own GPU matmuls for the general ones."""

from __future__ import annotations

import mlx.core as mx

from ...iteration import orthogonalize_with
from ...plan import Plan
from . import metal_kernels
from .reference import MlxOps


class MetalOps(MlxOps):
    """MlxOps with the symmetric products on fastmuon's Metal kernels: half the tiles,
    mirrored, fp32 accumulation, in the arrays' own dtype."""

    @staticmethod
    def xxt(X):
        return metal_kernels.xxt(X)

    @staticmethod
    def ba_plus_caa(A, alpha, beta):
        return metal_kernels.ba_plus_caa(A, alpha, beta)

    # Metal has no float64: a float64 input is scaled and rounded to the compute dtype on the
    # CPU, and the result widened there.

    @staticmethod
    def normalize(X, scale, eps, dtype):
        with mx.stream(mx.cpu if X.dtype == mx.float64 else metal_kernels.device()):
            return MlxOps.normalize(X, scale, eps, dtype)

    @staticmethod
    def restore(X, G):
        with mx.stream(mx.cpu if G.dtype == mx.float64 else metal_kernels.device()):
            return MlxOps.restore(X, G)


def orthogonalize(G: mx.array, plan: Plan, compute_dtype: mx.Dtype) -> mx.array:
    """The plan's iteration on G (..., m, n) on the GPU, in ``compute_dtype``."""
    with mx.stream(metal_kernels.device()):  # the general products run on the GPU too
        return orthogonalize_with(G, plan, MetalOps(), compute_dtype)
