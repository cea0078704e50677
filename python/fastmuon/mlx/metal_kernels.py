"""The Metal backend for mlx arrays: the two symmetric products of every step as
``mx.fast.metal_kernel`` kernels (JIT-compiled by MLX on first use, then cached by it).

* ``xxt(X)``: X X^T over the last two axes.
* ``ba_plus_caa(A, alpha, beta)``: alpha A A + beta A for symmetric A.

Both compute only the upper-triangle tiles of the (m x m) result (``fastmuon._tiles``), each
with simdgroup 8x8 matrix instructions accumulating in float32, and write every value to both
triangles, so the result is exactly symmetric. Inputs and outputs stay in their dtype
(float32, float16 or bfloat16); 16-bit values are rounded once, at the end. Leading axes are a
batch (one launch for all of it).

The tile routine is ``SHARED_CORE``, the same text as the marked block of
``metal/fastmuon_tiles.h`` that the compiled extension's kernels include (a test keeps the two
identical). Kernels need an Apple GPU (``mx.metal.is_available()``); elsewhere the functions
raise ``RuntimeError`` saying so. Not yet run on Apple hardware: see the README's status table.
"""

from __future__ import annotations

import functools
from typing import Optional

import mlx.core as mx

from .._tiles import MAX_SYMMETRIC_DIM, symmetric_grid

DTYPES = (mx.float32, mx.float16, mx.bfloat16)

# Verbatim copy of the block between "BEGIN/END fastmuon shared core" in metal/fastmuon_tiles.h.
SHARED_CORE = r"""// BEGIN fastmuon shared core
// Output tiles are FASTMUON_TILE x FASTMUON_TILE; the reduction advances
// FASTMUON_BK columns per stage. One threadgroup of FASTMUON_THREADS threads
// (four simdgroups of 32) computes one tile, each simdgroup a 16 x 16 quarter
// as 2 x 2 simdgroup 8x8 matrices accumulated in float32. Panels are staged
// in threadgroup memory as float32 with a padded row of FASTMUON_LDS floats.
#define FASTMUON_TILE 32
#define FASTMUON_BK 32
#define FASTMUON_LDS 36
#define FASTMUON_THREADS 128

// The tile schedule of a symmetric (m x m) output: only the T (T + 1) / 2
// tiles (i, j) with i <= j, T = ceil(m / FASTMUON_TILE), are launched, one
// threadgroup each, enumerated column by column:
//   t = j (j + 1) / 2 + i,  0 <= i <= j < T.
// The inverse takes j from a float square root, then corrects it, so a
// rounded or approximate sqrt cannot pick the wrong column.
// fastmuon._tiles.upper_tile is the same function in Python.
inline uint2 fastmuon_upper_tile(uint t) {
  uint j = uint((metal::sqrt(8.0f * float(t) + 1.0f) - 1.0f) * 0.5f);
  while ((j + 1) * (j + 2) / 2 <= t) {
    j += 1;
  }
  while (j * (j + 1) / 2 > t) {
    j -= 1;
  }
  return uint2(t - j * (j + 1) / 2, j);
}

// Copy the FASTMUON_TILE x FASTMUON_BK block at (row0, col0) of a row-major
// (rows x cols) matrix into dst (row stride FASTMUON_LDS) as float32, with
// zeros outside the matrix. With kUpper the matrix is symmetric (rows ==
// cols) and only its upper triangle is read: entry (r, c) below the diagonal
// comes from (c, r). A block wholly below the diagonal is walked transposed,
// so that consecutive threads still read consecutive addresses. src and dst
// are template parameters so that any address space fits (MLX passes inputs
// of < 8 elements as `constant`).
template <bool kUpper, typename Src, typename Dst>
inline void fastmuon_load_block(
    Src src,
    uint rows,
    uint cols,
    uint row0,
    uint col0,
    Dst dst,
    uint tid) {
  const bool lower = kUpper && col0 + FASTMUON_BK <= row0;
  for (uint e = tid; e < FASTMUON_TILE * FASTMUON_BK; e += FASTMUON_THREADS) {
    const uint r = lower ? e % FASTMUON_TILE : e / FASTMUON_BK;
    const uint c = lower ? e / FASTMUON_TILE : e % FASTMUON_BK;
    const uint gr = row0 + r;
    const uint gc = col0 + c;
    float v = 0.0f;
    if (gr < rows && gc < cols) {
      v = static_cast<float>(
          kUpper && gc < gr ? src[ulong(gc) * cols + gr]
                            : src[ulong(gr) * cols + gc]);
    }
    dst[r * FASTMUON_LDS + c] = v;
  }
}

// One tile of a symmetric product, mirrored:
//   kAxpby == false: out = x x^T          (x is rows x cols)
//   kAxpby == true:  out = alpha x x + beta x for a symmetric square x
//                    (rows == cols), read from its upper triangle only
//                    (x x = x x^T): the step's b A + c A A.
// `tile` indexes the schedule above; tile (i, j) also writes its mirror
// (j, i). Each value is rounded to T once and written to both places, so the
// output is exactly symmetric.
// As and Bs are threadgroup arrays of FASTMUON_TILE * FASTMUON_LDS floats
// declared by the calling kernel (threadgroup memory lives at kernel scope).
// tid: thread_index_in_threadgroup, sg: simdgroup_index_in_threadgroup.
// Every thread of the threadgroup must call this (it has barriers).
template <typename T, bool kAxpby, typename Src, typename Dst, typename Tg>
inline void fastmuon_symmetric_tile(
    Src x,
    Dst out,
    uint rows,
    uint cols,
    float alpha,
    float beta,
    uint tile,
    Tg As,
    Tg Bs,
    uint tid,
    uint sg) {
  const uint2 ij = fastmuon_upper_tile(tile);
  const uint row0 = ij.x * FASTMUON_TILE;
  const uint col0 = ij.y * FASTMUON_TILE;
  const bool diag = ij.x == ij.y;
  const uint sr = (sg / 2) * 16;  // this simdgroup's quarter of the tile
  const uint sc = (sg % 2) * 16;

  metal::simdgroup_matrix<float, 8, 8> acc[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      acc[i][j] = metal::make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
  }

  // C(r, c) = sum_l x(row0 + r, l) x(col0 + c, l): rows of both panels are
  // rows of x; the right factor is read transposed. A diagonal tile needs
  // one panel only.
  for (uint k0 = 0; k0 < cols; k0 += FASTMUON_BK) {
    fastmuon_load_block<kAxpby>(x, rows, cols, row0, k0, As, tid);
    if (!diag) {
      fastmuon_load_block<kAxpby>(x, rows, cols, col0, k0, Bs, tid);
    }
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
    Tg Bp = diag ? As : Bs;
    for (uint kk = 0; kk < FASTMUON_BK; kk += 8) {
      metal::simdgroup_matrix<float, 8, 8> a[2];
      metal::simdgroup_matrix<float, 8, 8> b[2];
      for (int i = 0; i < 2; ++i) {
        metal::simdgroup_load(
            a[i], As + (sr + 8 * i) * FASTMUON_LDS + kk, FASTMUON_LDS);
      }
      for (int j = 0; j < 2; ++j) {
        metal::simdgroup_load(
            b[j],
            Bp + (sc + 8 * j) * FASTMUON_LDS + kk,
            FASTMUON_LDS,
            ulong2(0, 0),
            true);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          metal::simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
        }
      }
    }
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
  }

  // Stage the tile in As (FASTMUON_TILE rows of FASTMUON_LDS floats).
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      metal::simdgroup_store(
          acc[i][j], As + (sr + 8 * i) * FASTMUON_LDS + sc + 8 * j, FASTMUON_LDS);
    }
  }
  metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);

  if (kAxpby) {  // alpha C + beta x on the entries written below
    for (uint e = tid; e < FASTMUON_TILE * FASTMUON_TILE; e += FASTMUON_THREADS) {
      const uint r = e / FASTMUON_TILE;
      const uint c = e % FASTMUON_TILE;
      const uint gr = row0 + r;
      const uint gc = col0 + c;
      if (gr < rows && gc < rows && !(diag && r > c)) {
        const float xv = static_cast<float>(x[ulong(gr) * cols + gc]);
        As[r * FASTMUON_LDS + c] = alpha * As[r * FASTMUON_LDS + c] + beta * xv;
      }
    }
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
  }

  // The tile, row by row (on the diagonal its upper half)...
  for (uint e = tid; e < FASTMUON_TILE * FASTMUON_TILE; e += FASTMUON_THREADS) {
    const uint r = e / FASTMUON_TILE;
    const uint c = e % FASTMUON_TILE;
    const uint gr = row0 + r;
    const uint gc = col0 + c;
    if (gr < rows && gc < rows && !(diag && r > c)) {
      out[ulong(gr) * rows + gc] = static_cast<T>(As[r * FASTMUON_LDS + c]);
    }
  }
  // ...and its mirror, also row by row in the output (on the diagonal the
  // strictly lower half, from the upper values).
  for (uint e = tid; e < FASTMUON_TILE * FASTMUON_TILE; e += FASTMUON_THREADS) {
    const uint c = e / FASTMUON_TILE;
    const uint r = e % FASTMUON_TILE;
    const uint gr = col0 + c;
    const uint gc = row0 + r;
    if (gr < rows && gc < rows && !(diag && r >= c)) {
      out[ulong(gr) * rows + gc] = static_cast<T>(As[r * FASTMUON_LDS + c]);
    }
  }
}
// END fastmuon shared core
"""

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
        header=SHARED_CORE,
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
    require_metal("fastmuon.mlx.metal_kernels.xxt")
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
    require_metal("fastmuon.mlx.metal_kernels.ba_plus_caa")
    *lead, m, _ = A.shape
    if A.size == 0:
        return mx.zeros(A.shape, dtype=A.dtype)
    coef = mx.array([alpha, beta], dtype=mx.float32)
    out = _launch("fastmuon_ba_plus_caa", A.reshape(-1, m, m), (coef,), m, init_value)
    return out.reshape(A.shape)
