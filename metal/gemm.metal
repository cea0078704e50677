// fastmuon/metal/gemm.metal: the general product of the fused orthogonalize
// (csrc/mlx/metal_dispatch.cpp), batched over dense row-major matrices:
//
//   fastmuon_gemm_<dtype>  out = alpha a b + beta c     a: M x K, b: K x N, c/out: M x N
//
// c is read only when has_c != 0 (it must not alias out). Grid:
// (ceil(N / FASTMUON_TILE), ceil(M / FASTMUON_TILE), batch) threadgroups of
// (FASTMUON_THREADS, 1, 1); the same 2 x 2 simdgroup layout and float32
// accumulation as fastmuon_symmetric_tile.
#include <metal_stdlib>

#include "fastmuon_tiles.h"

// The B panel (FASTMUON_BK x FASTMUON_TILE) reuses fastmuon_load_block.
static_assert(FASTMUON_TILE == FASTMUON_BK, "square panels assumed");

template <typename T>
[[kernel]] void fastmuon_gemm(
    const device T* a [[buffer(0)]],
    const device T* b [[buffer(1)]],
    const device T* c [[buffer(2)]],
    device T* out [[buffer(3)]],
    constant const int& M [[buffer(4)]],
    constant const int& N [[buffer(5)]],
    constant const int& K [[buffer(6)]],
    constant const float& alpha [[buffer(7)]],
    constant const float& beta [[buffer(8)]],
    constant const int& has_c [[buffer(9)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float As[FASTMUON_TILE * FASTMUON_LDS];
  threadgroup float Bs[FASTMUON_BK * FASTMUON_LDS];
  const uint m = uint(M);
  const uint n = uint(N);
  const uint k = uint(K);
  const ulong batch = tg.z;
  const device T* ab = a + batch * ulong(m) * ulong(k);
  const device T* bb = b + batch * ulong(k) * ulong(n);
  const device T* cb = c + batch * ulong(m) * ulong(n);
  device T* ob = out + batch * ulong(m) * ulong(n);
  const uint row0 = tg.y * FASTMUON_TILE;
  const uint col0 = tg.x * FASTMUON_TILE;
  const uint sr = (sg / 2) * 16;
  const uint sc = (sg % 2) * 16;

  metal::simdgroup_matrix<float, 8, 8> acc[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      acc[i][j] = metal::make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    }
  }
  for (uint k0 = 0; k0 < k; k0 += FASTMUON_BK) {
    fastmuon_load_block<false>(ab, m, k, row0, k0, As, tid);  // a[row0.., k0..]
    fastmuon_load_block<false>(bb, k, n, k0, col0, Bs, tid);  // b[k0.., col0..]
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
    for (uint kk = 0; kk < FASTMUON_BK; kk += 8) {
      metal::simdgroup_matrix<float, 8, 8> fa[2];
      metal::simdgroup_matrix<float, 8, 8> fb[2];
      for (int i = 0; i < 2; ++i) {
        metal::simdgroup_load(
            fa[i], As + (sr + 8 * i) * FASTMUON_LDS + kk, FASTMUON_LDS);
      }
      for (int j = 0; j < 2; ++j) {
        metal::simdgroup_load(
            fb[j], Bs + kk * FASTMUON_LDS + sc + 8 * j, FASTMUON_LDS);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          metal::simdgroup_multiply_accumulate(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
      }
    }
    metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
  }

  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      metal::simdgroup_store(
          acc[i][j], As + (sr + 8 * i) * FASTMUON_LDS + sc + 8 * j, FASTMUON_LDS);
    }
  }
  metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
  for (uint e = tid; e < FASTMUON_TILE * FASTMUON_TILE; e += FASTMUON_THREADS) {
    const uint r = e / FASTMUON_TILE;
    const uint cc = e % FASTMUON_TILE;
    const uint gr = row0 + r;
    const uint gc = col0 + cc;
    if (gr < m && gc < n) {
      const ulong at = ulong(gr) * n + gc;
      float v = alpha * As[r * FASTMUON_LDS + cc];
      if (has_c != 0) {
        v += beta * static_cast<float>(cb[at]);
      }
      ob[at] = static_cast<T>(v);
    }
  }
}

#define instantiate_fastmuon_gemm(tname, type)                 \
  template [[host_name("fastmuon_gemm_" #tname)]] [[kernel]]   \
  void fastmuon_gemm<type>(                                    \
      const device type* a [[buffer(0)]],                      \
      const device type* b [[buffer(1)]],                      \
      const device type* c [[buffer(2)]],                      \
      device type* out [[buffer(3)]],                          \
      constant const int& M [[buffer(4)]],                     \
      constant const int& N [[buffer(5)]],                     \
      constant const int& K [[buffer(6)]],                     \
      constant const float& alpha [[buffer(7)]],               \
      constant const float& beta [[buffer(8)]],                \
      constant const int& has_c [[buffer(9)]],                 \
      uint3 tg [[threadgroup_position_in_grid]],               \
      uint tid [[thread_index_in_threadgroup]],                \
      uint sg [[simdgroup_index_in_threadgroup]]);

instantiate_fastmuon_gemm(float32, float)
instantiate_fastmuon_gemm(float16, half)
instantiate_fastmuon_gemm(bfloat16, bfloat)
