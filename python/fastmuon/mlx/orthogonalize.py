"""Orthogonalization of MLX arrays: argument checks and the one choice of backend.

Same signature, defaults and errors as ``fastmuon.torch.orthogonalize``. The backends are
drivers of their own: ``reference.py`` (plain mlx), ``native.py`` (the C++ primitives on the
BLAS, CPU) and ``metal_backend.py`` (Apple GPU).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import mlx.core as mx

from ..native import mlx_ext_available
from ..plan import (
    DEFAULT_STEPS,
    METHODS_DOC,
    check_backend,
    check_compute_bits,
    check_matrix_shape,
    choose_backend,
    gram_needs_wider,
    make_plan,
)
from .backends import metal_backend, metal_kernels, native, reference

BACKENDS = ("auto", "reference", "native", "metal")


def default_compute_dtype() -> mx.Dtype:
    """bf16 on an Apple GPU; fp32 on the CPU, where 16-bit matmul is far slower than fp32."""
    return mx.bfloat16 if mx.default_device().type == mx.DeviceType.gpu else mx.float32


def resolve_compute_dtype(dtype: Optional[mx.Dtype], method: str = "auto") -> mx.Dtype:
    """The compute dtype of ``orthogonalize(G, dtype=dtype, method=method)``: ``dtype`` when
    given, else ``default_compute_dtype()`` widened to fp32 for the Gram-space iteration."""
    compute_dtype = default_compute_dtype() if dtype is None else dtype
    if not (isinstance(compute_dtype, mx.Dtype) and mx.issubdtype(compute_dtype, mx.floating)):
        raise ValueError(f"dtype must be a floating mlx dtype, got {dtype!r}")
    if dtype is None and gram_needs_wider(method, 8 * compute_dtype.size):
        compute_dtype = mx.float32
    return compute_dtype


def orthogonalize(
    G: mx.array,
    *,
    method: str = "auto",
    steps: int = DEFAULT_STEPS,
    coefficients: Optional[Sequence] = None,
    backend: str = "auto",
    eps: Optional[float] = None,
    dtype: Optional[mx.Dtype] = None,
) -> mx.array:
    """Approximate the polar factor U V^T of each matrix in ``G`` (shape ``(..., m, n)``).

    Args:
        G: a floating array with at least two dimensions; leading dimensions are a batch.
        method: {methods}
        steps: number of polynomial steps.
        coefficients: custom ``[(a, b, c), ...]``; replaces the method's polynomials and keeps
            its normalization (with ``"auto"``, Polar Express's, on every shape).
        eps: added to the scaled norm in the normalization X / (||X||_F * scale + eps); default
            the method's (1e-7 for newton_schulz, 1e-6 for the others).
        backend: ``"reference"`` is plain mlx; ``"native"`` the fused C++ iteration on the BLAS
            (CPU stream, fp32 compute); ``"metal"`` the iteration with fastmuon's Metal kernels
            for the symmetric products (Apple GPU; float32, float16 or bfloat16 compute);
            ``"auto"`` picks metal on an Apple GPU and native on the CPU where they apply.
        dtype: compute dtype; by default bf16 on an Apple GPU and fp32 on the CPU, and fp32 for
            ``method="gram"``, which refuses 16-bit floats (``fastmuon.plan.GRAM_MIN_BITS``).

    Returns:
        An array of ``G``'s shape and dtype (lazy, as every mlx op). A zero matrix gives zeros.
    """
    plan = make_plan(method, steps, coefficients, eps)
    check_backend(backend, BACKENDS)
    check_array(G, "G")
    compute_dtype = resolve_compute_dtype(dtype, plan.method)
    check_compute_bits(plan.method, 8 * compute_dtype.size, compute_dtype)
    if G.size == 0:  # the polar factor of an empty matrix is empty
        return mx.zeros(G.shape, dtype=G.dtype)
    chosen = select_backend(backend, compute_dtype)
    if chosen == "native":
        return native.orthogonalize(G, plan)
    if chosen == "metal":
        return metal_backend.orthogonalize(G, plan, compute_dtype)
    return reference.orthogonalize(G, plan, compute_dtype)


orthogonalize.__doc__ = orthogonalize.__doc__.replace("{methods}", METHODS_DOC)


def check_array(a, name: str) -> None:
    if not isinstance(a, mx.array):
        raise TypeError(f"{name} must be an mlx.core.array, got {type(a).__name__}")
    check_matrix_shape(a.shape, name)
    if not mx.issubdtype(a.dtype, mx.floating):
        raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")


def _metal_refusal(on_gpu: bool, compute_dtype: mx.Dtype) -> Optional[str]:
    if not on_gpu:
        return "metal runs on a GPU default device"
    if compute_dtype not in metal_kernels.DTYPES:
        return f"the Metal kernels take float32, float16 or bfloat16, not {compute_dtype}"
    if not metal_kernels.metal_available():
        return "Metal is not available"
    return None


def _native_refusal(on_gpu: bool, compute_dtype: mx.Dtype) -> Optional[str]:
    if on_gpu:
        return "native runs on the CPU"
    if compute_dtype != mx.float32:
        return f"native computes in float32, the compute dtype is {compute_dtype}"
    if not mlx_ext_available():
        return "fastmuon._mlx_ext is not built"
    return None


# The registry "auto" chooses from, in order: each backend's refusal (whether the default
# device is a GPU, and the compute dtype); the reference takes the rest.
AUTO_CANDIDATES = (("metal", _metal_refusal), ("native", _native_refusal))


def auto_backend(compute_dtype: mx.Dtype) -> Tuple[str, str]:
    """("metal" | "native" | "reference", why): what ``backend="auto"`` runs on the default
    device for ``compute_dtype``, and the reason."""
    on_gpu = mx.default_device().type == mx.DeviceType.gpu
    name, refusals = choose_backend(AUTO_CANDIDATES, on_gpu, compute_dtype)
    if name is not None:
        return name, f"{name} takes {dtype_name(compute_dtype)} on the {'GPU' if on_gpu else 'CPU'}"
    return "reference", "reference (mlx's own ops)" + (f": {refusals}" if refusals else "")


def dtype_name(dtype: mx.Dtype) -> str:
    """An mlx dtype's name without the module ("float32")."""
    return str(dtype).removeprefix("mlx.core.")


def select_backend(backend: str, compute_dtype: mx.Dtype) -> str:
    """The one place that decides which backend runs.

    "auto" asks ``auto_backend`` (the registry ``AUTO_CANDIDATES``): on a GPU default device,
    the Metal kernels when Metal is available and the compute dtype is one they take (float32,
    float16, bfloat16); on the CPU, the native kernels when the compute dtype is fp32 and the
    extension built; else the reference. An explicit backend that
    cannot run raises: "native" with a non-fp32 dtype (ValueError), "metal" without Metal
    (RuntimeError) or with float64 (ValueError).
    """
    if backend == "auto":
        return auto_backend(compute_dtype)[0]
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
