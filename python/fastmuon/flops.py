"""Work per orthogonalization: the flops of a method's iteration, counted by running the shared
iteration (``fastmuon.iteration``) on shapes instead of arrays."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

# Steps each method runs in the benchmarks: its own default, 4 for AOL (its design point)
PRESET_STEPS = {"aol": 4}


def dense_flops(shape: Sequence[int], steps: int = 5) -> float:
    m, n = sorted(shape[-2:])
    return steps * (4.0 * m * m * n + 2.0 * m**3)


class _Shape(tuple):
    """A shape standing in for an array: what ``orthogonalize_with`` reads of its input."""

    shape = property(tuple)


class _FlopCounter:
    """``fastmuon.iteration.MatrixOps`` on shapes only, counting the flops of each product: as
    dense products (``dense``) and as issued with the symmetric kernels (``issued``: X X^T,
    b A + c A A and the Gram-space iteration's products of commuting matrices form one triangle,
    half the products)."""

    def __init__(self):
        self.dense = self.issued = 0.0

    def _count(self, flops: float, symmetric: bool = False) -> None:
        self.dense += flops
        self.issued += flops / 2 if symmetric else flops

    def xxt(self, X):
        b, m, n = X
        self._count(2.0 * b * m * m * n, symmetric=True)
        return (b, m, m)

    def ba_plus_caa(self, A, alpha, beta):
        b, m, _ = A
        self._count(2.0 * b * m**3, symmetric=True)
        return A

    def addmm(self, C, A, B, alpha, beta):
        self._count(2.0 * A[0] * A[1] * A[2] * B[2])
        return C

    def symmetric_addmm(self, C, A, B, alpha, beta):
        self._count(2.0 * A[0] * A[1] * A[2] * B[2], symmetric=True)
        return C

    def matmul(self, A, B):
        self._count(2.0 * A[0] * A[1] * A[2] * B[2])
        return (A[0], A[1], B[2])

    def add_identity(self, Z, a):
        return Z

    def aol_scale(self, X, A):
        return X, A

    def to_batch(self, G):
        return _Shape((int(np.prod(G[:-2])), *G[-2:]))

    def transpose(self, X):
        return _Shape((X[0], X[2], X[1]))

    def normalize(self, X, scale, eps, dtype):
        return X

    def restore(self, X, G):
        return G


def iteration_flops(method: str, steps: int, shape: Sequence[int]) -> Tuple[float, float]:
    """(dense, issued) flops of one orthogonalization of ``shape`` with ``method`` and ``steps``:
    every product of its iteration counted in full, and as issued with the symmetric kernels."""
    from .iteration import orthogonalize_with
    from .plan import make_plan

    counter = _FlopCounter()
    orthogonalize_with(_Shape(shape), make_plan(method, steps, None), counter, None)
    return counter.dense, counter.issued
