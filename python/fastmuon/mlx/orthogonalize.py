"""Orthogonalization of MLX arrays: the public entry point and the plain-mlx reference.

Same signature, defaults and errors as ``fastmuon.torch.orthogonalize``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import mlx.core as mx

from .._iteration import iterate
from .._native import mlx_ext_available
from .._plan import DEFAULT_STEPS, Plan, check_backend, check_matrix_shape, make_plan
from . import metal_kernels, native

BACKENDS = ("auto", "reference", "native", "metal")

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
            (CPU stream, fp32 compute); ``"metal"`` the iteration with fastmuon's Metal kernels
            for the symmetric products (Apple GPU; float32, float16 or bfloat16 compute);
            ``"auto"`` picks metal on an Apple GPU and native on the CPU where they apply.
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
    chosen = select_backend(backend, compute_dtype)
    if chosen == "native":
        return native.orthogonalize(G, plan)
    if chosen == "metal":
        with mx.stream(metal_kernels.device()):  # the other products run on the GPU too
            return orthogonalize_reference(G, plan, compute_dtype, MetalOps())
    return orthogonalize_reference(G, plan, compute_dtype)


def check_array(a, name: str) -> None:
    if not isinstance(a, mx.array):
        raise TypeError(f"{name} must be an mlx.core.array, got {type(a).__name__}")
    check_matrix_shape(a.shape, name)
    if not mx.issubdtype(a.dtype, mx.floating):
        raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")


def select_backend(backend: str, compute_dtype: mx.Dtype) -> str:
    """The one place that decides which backend runs.

    "auto": on a GPU default device, the Metal kernels when Metal is available and the compute
    dtype is one they take (float32, float16, bfloat16); on the CPU, the native kernels when the
    compute dtype is fp32 and the extension built; else the reference. An explicit backend that
    cannot run raises: "native" with a non-fp32 dtype (ValueError), "metal" without Metal
    (RuntimeError) or with float64 (ValueError).
    """
    if backend == "auto":
        if mx.default_device().type == mx.DeviceType.gpu:
            metal_fits = compute_dtype in metal_kernels.DTYPES
            return "metal" if metal_fits and metal_kernels.metal_available() else "reference"
        native_fits = compute_dtype == mx.float32
        return "native" if native_fits and mlx_ext_available() else "reference"
    if backend == "native" and compute_dtype != mx.float32:
        raise ValueError(
            f'backend="native" computes in float32; dtype={compute_dtype} needs backend="reference"'
        )
    if backend == "metal":
        if compute_dtype not in metal_kernels.DTYPES:
            raise ValueError(
                f'backend="metal" computes in float32, float16 or bfloat16 (Metal has no float64); '
                f'dtype={compute_dtype} needs backend="reference"'
            )
        metal_kernels.require_metal()
    return backend


def orthogonalize_reference(
    G: mx.array, plan: Plan, compute_dtype: mx.Dtype, ops: Optional["MlxOps"] = None
) -> mx.array:
    """Plain-mlx implementation (``ops`` None); what every faster backend is tested against.
    With ``ops=MetalOps()`` the same iteration runs the symmetric products on Metal kernels."""
    shape = G.shape
    m, n = shape[-2], shape[-1]
    X = G.reshape(-1, m, n).astype(compute_dtype)
    tall = m > n
    if tall:  # iterate on the wide orientation: the Gram matrix is then the smaller one
        X = X.swapaxes(-1, -2)
    X = normalize(X, plan)
    X = iterate(X, plan, MlxOps() if ops is None else ops)
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


class MetalOps(MlxOps):
    """MlxOps with the symmetric products on fastmuon's Metal kernels (``metal_kernels``): half
    the tiles, mirrored, fp32 accumulation, in the arrays' own dtype. The general products
    (``addmm``, ``matmul``) stay MLX's own GPU matmuls."""

    @staticmethod
    def xxt(X):
        return metal_kernels.xxt(X)

    @staticmethod
    def ba_plus_caa(A, alpha, beta):
        return metal_kernels.ba_plus_caa(A, alpha, beta)
