"""The Metal backend for mlx arrays: the two symmetric products of every step as
``mx.fast.metal_kernel`` kernels (JIT-compiled by MLX on first use, then cached by it).

* ``xxt(X)``: X X^T over the last two axes.
* ``ba_plus_caa(A, alpha, beta)``: alpha A A + beta A for symmetric A.

Both compute only the upper-triangle tiles of the (m x m) result (``fastmuon.tiles``), each
with simdgroup 8x8 matrix instructions accumulating in float32, and write every value to both
triangles, so the result is exactly symmetric. Inputs and outputs stay in their dtype
(float32, float16 or bfloat16); 16-bit values are rounded once, at the end. Leading axes are a
batch (one launch for all of it).

The tile routine is ``shared_core()``: the marked block of ``metal/fastmuon_tiles.h``, installed
with the package and read from there. These are fastmuon's only Metal kernels (the compiled
extension ``fastmuon._mlx_ext`` runs on the CPU only), so no Metal compiler or metallib is needed
at build time. Kernels need an Apple GPU (``mx.metal.is_available()``); elsewhere the functions
raise ``RuntimeError`` saying so. Not yet run on Apple hardware: see the README's status table.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Optional

import mlx.core as mx

from ...tiles import MAX_SYMMETRIC_DIM, symmetric_grid

DTYPES = (mx.float32, mx.float16, mx.bfloat16)

# The tile routine lives once, in metal/fastmuon_tiles.h; the build installs that header with
# the package (CMakeLists.txt) and the metal_kernel path takes its marked block as its header.
_CORE_BEGIN = "// BEGIN fastmuon shared core"
_CORE_END = "// END fastmuon shared core\n"


def tiles_header_path():
    """The installed copy of metal/fastmuon_tiles.h."""
    return importlib.resources.files("fastmuon").joinpath("metal", "fastmuon_tiles.h")


@functools.lru_cache(maxsize=None)
def shared_core() -> str:
    """The block between the BEGIN/END markers of metal/fastmuon_tiles.h: the tile schedule,
    index math and tile routine, used as the header of the ``mx.fast.metal_kernel`` kernels."""
    path = tiles_header_path()
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise RuntimeError(
            f"fastmuon's Metal header {path} is missing; reinstall fastmuon (pip install .), whose "
            "build installs it from metal/fastmuon_tiles.h"
        ) from exc
    return text[text.index(_CORE_BEGIN): text.index(_CORE_END) + len(_CORE_END)]


# Kernel bodies; MLX wraps each in a generated signature: `x`, `dims` (int32 [rows, cols]) and
# `coef` (float32 [alpha, beta]) as inputs, `out` as output, T the dtype template parameter,
# and one argument per built-in attribute the body names.
_BODY = r"""
  threadgroup float As[FASTMUON_TILE * FASTMUON_LDS];
  threadgroup float Bs[FASTMUON_TILE * FASTMUON_LDS];
  const uint rows = uint(dims[0]);
  const uint cols = uint(dims[1]);
  const ulong batch = threadgroup_position_in_grid.y;
  fastmuon_symmetric_tile<T, {axpby}>(
      x + batch * ulong(rows) * ulong(cols),
      out + batch * ulong(rows) * ulong(rows),
      rows,
      cols,
      {alpha},
      {beta},
      threadgroup_position_in_grid.x,
      As,
      Bs,
      thread_index_in_threadgroup,
      simdgroup_index_in_threadgroup);
"""

XXT_SOURCE = _BODY.format(axpby="false", alpha="1.0f", beta="0.0f")
BA_PLUS_CAA_SOURCE = _BODY.format(axpby="true", alpha="coef[0]", beta="coef[1]")

# name -> (input names, body)
KERNELS = {
    "fastmuon_xxt": (("x", "dims"), XXT_SOURCE),
    "fastmuon_ba_plus_caa": (("x", "dims", "coef"), BA_PLUS_CAA_SOURCE),
}


def device():
    """Where the Metal path runs: the GPU (one place, so that the CPU emulation in the tests can
    redirect it)."""
    return mx.gpu


def metal_unavailable_reason() -> Optional[str]:
    """None when the Metal kernels can run here, else why not."""
    if not mx.metal.is_available():
        return (
            "mx.metal.is_available() is False: this MLX has no Metal back-end "
            "(Metal needs an Apple-silicon Mac and the macOS `mlx` wheel)"
        )
    return None


def metal_available() -> bool:
    return metal_unavailable_reason() is None


def require_metal(what: str = 'backend="metal"') -> None:
    """Raise RuntimeError naming ``what`` and the reason when Metal is unavailable."""
    reason = metal_unavailable_reason()
    if reason is not None:
        raise RuntimeError(
            f'{what} runs Metal kernels on an Apple GPU, but {reason}. '
            'Use backend="native" (CPU, BLAS) or backend="reference" instead.'
        )


@functools.lru_cache(maxsize=None)
def kernel(name: str):
    """The ``mx.fast.metal_kernel`` object ``name`` of ``KERNELS``, built once.

    Building one needs no GPU (MLX compiles the source on the first call, per dtype, and
    caches the library); calling it does.
    """
    inputs, body = KERNELS[name]
    return mx.fast.metal_kernel(
        name=name,
        input_names=list(inputs),
        output_names=["out"],
        source=body,
        header=shared_core(),
        ensure_row_contiguous=True,
    )


def _check(a: mx.array, name: str) -> None:
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (..., m, k), got shape {tuple(a.shape)}")
    if a.dtype not in DTYPES:
        raise ValueError(
            f"the Metal kernels take float32, float16 or bfloat16; {name} has dtype {a.dtype}"
        )
    if a.shape[-2] > MAX_SYMMETRIC_DIM or a.shape[-1] > 2**31 - 1:
        raise ValueError(
            f"the Metal kernels take up to {MAX_SYMMETRIC_DIM} rows and 2**31 - 1 columns; "
            f"{name} has shape {tuple(a.shape)}"
        )


def _launch(name: str, x: mx.array, extra, m: int, init_value: Optional[float]) -> mx.array:
    """Run the symmetric kernel ``name`` on the batch x (batch, m, k) -> (batch, m, m)."""
    batch, _, k = x.shape
    groups, threads = symmetric_grid(m, batch)
    dims = mx.array([m, k], dtype=mx.int32)
    return kernel(name)(
        inputs=[x, dims, *extra],
        template=[("T", x.dtype)],
        grid=(groups[0] * threads[0], groups[1] * threads[1], groups[2] * threads[2]),
        threadgroup=threads,
        output_shapes=[(batch, m, m)],
        output_dtypes=[x.dtype],
        init_value=init_value,
        stream=device(),
    )[0]


def xxt(X: mx.array, *, init_value: Optional[float] = None) -> mx.array:
    """X X^T over the last two axes, (..., m, k) -> (..., m, m), exactly symmetric.

    ``init_value`` pre-fills the output before the kernel runs (tests pass NaN to see that
    every entry gets written).
    """
    _check(X, "X")
    require_metal("fastmuon.mlx.backends.metal_kernels.xxt")
    *lead, m, k = X.shape
    if m == 0 or k == 0 or X.size == 0:
        return mx.zeros((*lead, m, m), dtype=X.dtype)
    out = _launch("fastmuon_xxt", X.reshape(-1, m, k), (), m, init_value)
    return out.reshape(*lead, m, m)


def ba_plus_caa(
    A: mx.array, alpha: float, beta: float, *, init_value: Optional[float] = None
) -> mx.array:
    """alpha A A + beta A for symmetric A (..., m, m): reads only A's upper triangle (as the
    native backend does) and returns an exactly symmetric result. alpha and beta are rounded
    to float32."""
    _check(A, "A")
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square in its last two axes, got shape {tuple(A.shape)}")
    require_metal("fastmuon.mlx.backends.metal_kernels.ba_plus_caa")
    *lead, m, _ = A.shape
    if A.size == 0:
        return mx.zeros(A.shape, dtype=A.dtype)
    coef = mx.array([alpha, beta], dtype=mx.float32)
    out = _launch("fastmuon_ba_plus_caa", A.reshape(-1, m, m), (coef,), m, init_value)
    return out.reshape(A.shape)
