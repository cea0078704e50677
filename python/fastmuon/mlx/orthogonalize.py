"""Orthogonalization of MLX arrays: the public entry point and the plain-mlx reference.

Same signature, defaults and errors as ``fastmuon.torch.orthogonalize``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import mlx.core as mx

from .._iteration import iterate
from .._native import mlx_ext_available
from .._plan import DEFAULT_STEPS, Plan, check_backend, check_matrix_shape, make_plan
from . import native

BACKENDS = ("auto", "reference", "native")

def default_compute_dtype() -> mx.Dtype:
    """bf16 on an Apple GPU; fp32 on the CPU, where 16-bit matmul is far slower than fp32."""
    return mx.bfloat16 if mx.default_device().type == mx.DeviceType.gpu else mx.float32


def orthogonalize(
    G: mx.array,
    *,
    method: str = "polar_express",
    steps: int = DEFAULT_STEPS,
    coefficients: Optional[Sequence] = None,
    backend: str = "auto",
    dtype: Optional[mx.Dtype] = None,
) -> mx.array:
    """Approximate the polar factor U V^T of each matrix in ``G`` (shape ``(..., m, n)``).

    Args:
        G: a floating array with at least two dimensions; leading dimensions are a batch.
        method: ``"newton_schulz"`` (Jordan's quintic), ``"polar_express"`` (the 5-step table,
            safety factor 1.02) or ``"gram"`` (Polar Express iterated on the Gram matrix).
        steps: number of polynomial steps.
        coefficients: custom ``[(a, b, c), ...]``; replaces the method's polynomials and keeps
            its normalization.
        backend: ``"reference"`` is plain mlx; ``"native"`` the fused C++ iteration on the BLAS
            (CPU stream, fp32 compute); ``"auto"`` picks native where it applies.
        dtype: compute dtype; by default bf16 on an Apple GPU and fp32 on the CPU.

    Returns:
        An array of ``G``'s shape and dtype (lazy, as every mlx op). A zero matrix gives zeros.
    """
    plan = make_plan(method, steps, coefficients)
    check_backend(backend, BACKENDS)
    check_array(G, "G")
    compute_dtype = default_compute_dtype() if dtype is None else dtype
    if not (isinstance(compute_dtype, mx.Dtype) and mx.issubdtype(compute_dtype, mx.floating)):
        raise ValueError(f"dtype must be a floating mlx dtype, got {dtype!r}")
    if select_backend(backend, compute_dtype) == "native":
        return native.orthogonalize(G, plan)
    return orthogonalize_reference(G, plan, compute_dtype)


def check_array(a, name: str) -> None:
    if not isinstance(a, mx.array):
        raise TypeError(f"{name} must be an mlx.core.array, got {type(a).__name__}")
    check_matrix_shape(a.shape, name)
    if not mx.issubdtype(a.dtype, mx.floating):
        raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")


def select_backend(backend: str, compute_dtype: mx.Dtype) -> str:
    """The one place that decides which backend runs: "auto" takes the native kernels when the
    default device is the CPU, the compute dtype fp32 and the extension built; else the reference.
    """
    if backend == "auto":
        native_fits = mx.default_device().type == mx.DeviceType.cpu and compute_dtype == mx.float32
        return "native" if native_fits and mlx_ext_available() else "reference"
    if backend == "native" and compute_dtype != mx.float32:
        raise ValueError(
            f'backend="native" computes in float32; dtype={compute_dtype} needs backend="reference"'
        )
    return backend


def orthogonalize_reference(G: mx.array, plan: Plan, compute_dtype: mx.Dtype) -> mx.array:
    """Plain-mlx implementation; what every faster backend is tested against."""
    shape = G.shape
    m, n = shape[-2], shape[-1]
    X = G.reshape(-1, m, n).astype(compute_dtype)
    tall = m > n
    if tall:  # iterate on the wide orientation: the Gram matrix is then the smaller one
        X = X.swapaxes(-1, -2)
    X = normalize(X, plan)
    X = iterate(X, plan, MlxOps())
    if tall:
        X = X.swapaxes(-1, -2)
    return X.reshape(shape).astype(G.dtype)


def normalize(X: mx.array, plan: Plan) -> mx.array:
    """X / (||X||_F * scale + eps) per matrix, the norm taken in at least fp32."""
    wide = mx.float64 if X.dtype == mx.float64 else mx.float32
    Xw = X.astype(wide)
    norm = mx.sqrt(mx.sum(Xw * Xw, axis=(-2, -1), keepdims=True))
    return (Xw / (norm * plan.norm_scale + plan.eps)).astype(X.dtype)


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
