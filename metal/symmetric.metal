// fastmuon/metal/symmetric.metal: the two symmetric products of every
// iteration step, for the eval_gpu of the Xxt and BaPlusCaa primitives
// (csrc/mlx/metal_dispatch.cpp encodes them).
//
//   fastmuon_xxt_<dtype>          out = x x^T                    (rows x cols -> rows x rows)
//   fastmuon_ba_plus_caa_<dtype>  out = alpha a a + beta a        (a symmetric, rows x rows,
//                                 read from its upper triangle only)
//
// Grid: (T (T + 1) / 2, batch, 1) threadgroups of (FASTMUON_THREADS, 1, 1),
// T = ceil(rows / FASTMUON_TILE); threadgroup (t, b) computes tile t of the
// schedule (fastmuon_upper_tile) of matrix b and its mirror. Inputs and
// outputs are dense row-major; accumulation is float32 for every dtype.
#include <metal_stdlib>

#include "fastmuon_tiles.h"

template <typename T, bool kAxpby>
[[kernel]] void fastmuon_symmetric(
    const device T* x [[buffer(0)]],
    device T* out [[buffer(1)]],
    constant const int& rows [[buffer(2)]],
    constant const int& cols [[buffer(3)]],
    constant const float& alpha [[buffer(4)]],
    constant const float& beta [[buffer(5)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float As[FASTMUON_TILE * FASTMUON_LDS];
  threadgroup float Bs[FASTMUON_TILE * FASTMUON_LDS];
  const ulong b = tg.y;
  fastmuon_symmetric_tile<T, kAxpby>(
      x + b * ulong(rows) * ulong(cols),
      out + b * ulong(rows) * ulong(rows),
      uint(rows),
      uint(cols),
      alpha,
      beta,
      tg.x,
      As,
      Bs,
      tid,
      sg);
}

#define instantiate_fastmuon_symmetric(name, axpby, tname, type)   \
  template [[host_name("fastmuon_" #name "_" #tname)]] [[kernel]] \
  void fastmuon_symmetric<type, axpby>(                           \
      const device type* x [[buffer(0)]],                         \
      device type* out [[buffer(1)]],                             \
      constant const int& rows [[buffer(2)]],                     \
      constant const int& cols [[buffer(3)]],                     \
      constant const float& alpha [[buffer(4)]],                  \
      constant const float& beta [[buffer(5)]],                   \
      uint3 tg [[threadgroup_position_in_grid]],                  \
      uint tid [[thread_index_in_threadgroup]],                   \
      uint sg [[simdgroup_index_in_threadgroup]]);

#define instantiate_fastmuon_symmetric_types(tname, type)           \
  instantiate_fastmuon_symmetric(xxt, false, tname, type)           \
  instantiate_fastmuon_symmetric(ba_plus_caa, true, tname, type)

instantiate_fastmuon_symmetric_types(float32, float)
instantiate_fastmuon_symmetric_types(float16, half)
instantiate_fastmuon_symmetric_types(bfloat16, bfloat)
