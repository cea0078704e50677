// fastmuon/metal/fastmuon_tiles.h: the symmetric-product tile routine of the
// mx.fast.metal_kernel kernels (python/fastmuon/mlx/backends/metal_kernels.py).
//
// The build installs this file with the package; metal_kernels.py reads the
// block between the BEGIN/END markers from there as its kernels' header (MLX
// compiles it at run time: no metallib is built).
#pragma once

#include <metal_stdlib>

// BEGIN fastmuon shared core
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
// fastmuon.tiles.upper_tile is the same function in Python.
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

  // The tile, row by row (on the diagonal its upper half); with kAxpby the
  // value is alpha C + beta x, kept in As for the mirror...
  for (uint e = tid; e < FASTMUON_TILE * FASTMUON_TILE; e += FASTMUON_THREADS) {
    const uint r = e / FASTMUON_TILE;
    const uint c = e % FASTMUON_TILE;
    const uint gr = row0 + r;
    const uint gc = col0 + c;
    if (gr < rows && gc < rows && !(diag && r > c)) {
      float v = As[r * FASTMUON_LDS + c];
      if (kAxpby) {
        v = alpha * v + beta * static_cast<float>(x[ulong(gr) * cols + gc]);
        As[r * FASTMUON_LDS + c] = v;
      }
      out[ulong(gr) * rows + gc] = static_cast<T>(v);
    }
  }
  if (kAxpby) {  // the mirror reads values other threads just wrote
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
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
