"""The polynomial iterations, written once for every framework and backend.

Each backend supplies the few matrix operations below (plain framework ops for the reference,
symmetric kernels for the fast paths); the order of operations, and the wrapper around it (batch,
cast, wide orientation, normalization), live only here. The native CPU path runs the same order
in C++ (``csrc/``), where it is tested against this one.
"""

from __future__ import annotations

from typing import Any, Protocol

from .plan import Plan


class MatrixOps(Protocol):
    """Batched (batch, m, n) matrix operations one backend provides."""

    def xxt(self, X: Any) -> Any:
        """X X^T."""

    def ba_plus_caa(self, A: Any, alpha: float, beta: float) -> Any:
        """alpha A A + beta A for symmetric A."""

    def addmm(self, C: Any, A: Any, B: Any, alpha: float, beta: float) -> Any:
        """alpha A B + beta C."""

    def symmetric_addmm(self, C: Any, A: Any, B: Any, alpha: float, beta: float) -> Any:
        """alpha A B + beta C for (batch, m, m) A and B that are polynomials in one symmetric
        matrix, and C symmetric: A B = B A, so the result is symmetric and a backend may form one
        triangle (the Gram-space iteration's products)."""

    def matmul(self, A: Any, B: Any) -> Any:
        """A B."""

    def add_identity(self, Z: Any, a: float) -> Any:
        """Z + a I."""

    def aol_scale(self, X: Any, A: Any) -> Any:
        """(D X, D A D) for A = X X^T, d_i = 1 / sqrt(sum_j |A_ij|) (row sums in at least fp32,
        floored at the smallest normal number of A's dtype: a zero row stays zero, and a row whose
        products underflowed is scaled less, never more, than AOL would); D A D exactly
        symmetric."""

    def to_batch(self, G: Any) -> Any:
        """G (..., m, n) as a (batch, m, n) array in G's own dtype."""

    def transpose(self, X: Any) -> Any:
        """X^T of every matrix of the batch."""

    def normalize(self, X: Any, scale: float, eps: float, dtype: Any) -> Any:
        """X / (||X||_F * scale + eps) per matrix, written in the compute ``dtype``: X is scaled
        by a power of two in its own dtype before it is rounded to ``dtype`` (so that no finite
        input overflows there), and the norm is taken in at least fp32."""

    def restore(self, X: Any, G: Any) -> Any:
        """X (batch, m, n) back to G's shape and dtype."""


def orthogonalize_with(G: Any, plan: Plan, ops: MatrixOps, compute_dtype: Any) -> Any:
    """The plan's orthogonalization of G (..., m, n) with ``ops``, computed in ``compute_dtype``.

    Tall matrices are iterated in their wide orientation, where the Gram matrix is the smaller
    one; the result has G's shape and dtype. G is rounded to the compute dtype only inside the
    normalization, after its scaling: a float64 input of 1e300 or a float32 one near 3e38 stays
    finite.
    """
    m, n = G.shape[-2], G.shape[-1]
    X = ops.to_batch(G)
    tall = m > n
    if tall:
        X = ops.transpose(X)
    plan = plan.for_shape(m, n)
    X = ops.normalize(X, plan.norm_scale, plan.eps, compute_dtype)
    A = None
    if plan.uses_aol:
        X, A = ops.aol_scale(X, ops.xxt(X))
    X = iterate(X, plan, ops, A)
    if tall:
        X = ops.transpose(X)
    return ops.restore(X, G)


def iterate(X: Any, plan: Plan, ops: MatrixOps, A: Any = None) -> Any:
    """Apply the plan's polynomials to a normalized wide batch X (batch, m, n), m <= n; ``plan``
    is the one for X's shape (``Plan.for_shape``, as ``orthogonalize_with`` resolves it); ``A``,
    when given, is X X^T already (AOL's), used by the first step."""
    if plan.gram_form(X.shape[-2], X.shape[-1]):
        return _gram_iterations(X, plan, ops, A)
    for a, b, c in plan.coefficients:
        A = ops.xxt(X) if A is None else A
        B = ops.ba_plus_caa(A, alpha=c, beta=b)  # b A + c A^2
        X = ops.addmm(X, B, X, alpha=1.0, beta=a)  # a X + B X
        A = None
    return X


def _gram_iterations(X: Any, plan: Plan, ops: MatrixOps, R: Any = None) -> Any:
    """Every X_k equals Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T (``R`` when given), so
    the steps run on m x m matrices and X is touched once at the start and once at the end (plus
    restarts)."""
    R = ops.xxt(X) if R is None else R
    Q = None  # the identity, kept implicit until the first step needs it
    last = len(plan.coefficients)
    for step, (a, b, c) in enumerate(plan.coefficients, start=1):
        Z = ops.ba_plus_caa(R, alpha=c, beta=b)  # b R + c R^2
        Q = ops.add_identity(Z, a) if Q is None else ops.symmetric_addmm(Q, Q, Z, alpha=1.0, beta=a)
        if step == last:
            break
        if plan.restart_after(step):  # R is formed afresh from X: no update of R first
            X = ops.matmul(Q, X)
            R = ops.xxt(X)
            Q = None
            continue
        RZ = ops.symmetric_addmm(R, R, Z, alpha=1.0, beta=a)  # R (a I + Z)
        R = ops.symmetric_addmm(RZ, Z, RZ, alpha=1.0, beta=a)  # (a I + Z) R (a I + Z) = X_k X_k^T
    return X if Q is None else ops.matmul(Q, X)
