// fastmuon/metal/orthogonalize.metal: the element-wise and reduction kernels
// around the products of the fused orthogonalize, and the strided gather of
// the primitives (csrc/mlx/metal_dispatch.cpp encodes them).
//
//   fastmuon_gather_<dtype>        out[e] = x[loc(e)]           dense copy of a strided view
//   fastmuon_sumsq_<dtype>         sumsq[b] = sum x_b^2         one threadgroup per matrix
//   fastmuon_load_wide_<dtype>     w_b = (tall ? x_b^T : x_b) / (sqrt(sumsq[b]) scale + eps)
//   fastmuon_store_wide_<dtype>    out_b = tall ? w_b^T : w_b   (w float32, out dtype)
//   fastmuon_add_identity_<dtype>  out_b = z_b + a I
//
// x is read through its shape and strides (any layout, as MLX describes it);
// everything else is dense row-major. The working matrices w are float32
// (w_b: m x n with m = min(rows, cols), the wide orientation).
#include <metal_stdlib>

#define FASTMUON_REDUCE_THREADS 256

// Offset (in elements) of the elem-th element, in row-major order, of an
// array with the given shape and strides.
template <typename Shape, typename Strides>
inline long fastmuon_elem_to_loc(
    ulong elem,
    Shape shape,
    Strides strides,
    int ndim) {
  long loc = 0;
  for (int i = ndim - 1; i >= 0; --i) {
    const ulong extent = ulong(shape[i]);
    loc += long(elem % extent) * long(strides[i]);
    elem /= extent;
  }
  return loc;
}

template <typename T>
[[kernel]] void fastmuon_gather(
    const device T* x [[buffer(0)]],
    device T* out [[buffer(1)]],
    constant const int* shape [[buffer(2)]],
    constant const int64_t* strides [[buffer(3)]],
    constant const int& ndim [[buffer(4)]],
    constant const int64_t& size [[buffer(5)]],
    uint3 pos [[thread_position_in_grid]],
    uint3 grid [[threads_per_grid]]) {
  const ulong e = ulong(pos.y) * grid.x + pos.x;
  if (e < ulong(size)) {
    out[e] = x[fastmuon_elem_to_loc(e, shape, strides, ndim)];
  }
}

template <typename T>
[[kernel]] void fastmuon_sumsq(
    const device T* x [[buffer(0)]],
    device float* sumsq [[buffer(1)]],
    constant const int* shape [[buffer(2)]],
    constant const int64_t* strides [[buffer(3)]],
    constant const int& ndim [[buffer(4)]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint tid [[thread_index_in_threadgroup]],
    uint lane [[thread_index_in_simdgroup]],
    uint sg [[simdgroup_index_in_threadgroup]]) {
  threadgroup float partial[FASTMUON_REDUCE_THREADS / 32];
  const ulong per = ulong(shape[ndim - 2]) * ulong(shape[ndim - 1]);
  const ulong base = ulong(tg.x) * per;
  float s = 0.0f;
  for (ulong e = tid; e < per; e += FASTMUON_REDUCE_THREADS) {
    const float v =
        static_cast<float>(x[fastmuon_elem_to_loc(base + e, shape, strides, ndim)]);
    s = metal::fma(v, v, s);
  }
  s = metal::simd_sum(s);
  if (lane == 0) {
    partial[sg] = s;
  }
  metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
  if (sg == 0) {
    float t = lane < FASTMUON_REDUCE_THREADS / 32 ? partial[lane] : 0.0f;
    t = metal::simd_sum(t);
    if (lane == 0) {
      sumsq[tg.x] = t;
    }
  }
}

// Grid: (n, m, batch) threads, (n, m) the wide orientation.
template <typename T>
[[kernel]] void fastmuon_load_wide(
    const device T* x [[buffer(0)]],
    const device float* sumsq [[buffer(1)]],
    device float* w [[buffer(2)]],
    constant const int* shape [[buffer(3)]],
    constant const int64_t* strides [[buffer(4)]],
    constant const int& ndim [[buffer(5)]],
    constant const float& norm_scale [[buffer(6)]],
    constant const float& eps [[buffer(7)]],
    uint3 pos [[thread_position_in_grid]]) {
  const uint rows = uint(shape[ndim - 2]);
  const uint cols = uint(shape[ndim - 1]);
  const bool tall = rows > cols;
  const uint m = tall ? cols : rows;
  const uint n = tall ? rows : cols;
  const uint i = pos.y;
  const uint j = pos.x;
  if (i >= m || j >= n) {
    return;
  }
  const ulong b = pos.z;
  const uint r = tall ? j : i;
  const uint c = tall ? i : j;
  const ulong elem = (b * rows + r) * ulong(cols) + c;
  const float v = static_cast<float>(x[fastmuon_elem_to_loc(elem, shape, strides, ndim)]);
  const float denom = metal::sqrt(sumsq[b]) * norm_scale + eps;
  w[(b * m + i) * ulong(n) + j] = v / denom;
}

// Grid: (cols, rows, batch) threads.
template <typename T>
[[kernel]] void fastmuon_store_wide(
    const device float* w [[buffer(0)]],
    device T* out [[buffer(1)]],
    constant const int& rows [[buffer(2)]],
    constant const int& cols [[buffer(3)]],
    uint3 pos [[thread_position_in_grid]]) {
  const uint r = pos.y;
  const uint c = pos.x;
  if (r >= uint(rows) || c >= uint(cols)) {
    return;
  }
  const bool tall = rows > cols;
  const ulong n = ulong(tall ? rows : cols);
  const ulong m = ulong(tall ? cols : rows);
  const ulong b = pos.z;
  const ulong i = tall ? c : r;
  const ulong j = tall ? r : c;
  out[(b * ulong(rows) + r) * ulong(cols) + c] = static_cast<T>(w[(b * m + i) * n + j]);
}

// Grid: (m, m, batch) threads.
template <typename T>
[[kernel]] void fastmuon_add_identity(
    const device T* z [[buffer(0)]],
    device T* out [[buffer(1)]],
    constant const int& m [[buffer(2)]],
    constant const float& a [[buffer(3)]],
    uint3 pos [[thread_position_in_grid]]) {
  if (pos.x >= uint(m) || pos.y >= uint(m)) {
    return;
  }
  const ulong at = (ulong(pos.z) * ulong(m) + pos.y) * ulong(m) + pos.x;
  const float d = pos.x == pos.y ? a : 0.0f;
  out[at] = static_cast<T>(static_cast<float>(z[at]) + d);
}

#define instantiate_fastmuon_elementwise(tname, type)                         \
  template [[host_name("fastmuon_gather_" #tname)]] [[kernel]]                \
  void fastmuon_gather<type>(                                                 \
      const device type* x [[buffer(0)]],                                     \
      device type* out [[buffer(1)]],                                         \
      constant const int* shape [[buffer(2)]],                                \
      constant const int64_t* strides [[buffer(3)]],                          \
      constant const int& ndim [[buffer(4)]],                                 \
      constant const int64_t& size [[buffer(5)]],                             \
      uint3 pos [[thread_position_in_grid]],                                  \
      uint3 grid [[threads_per_grid]]);                                       \
  template [[host_name("fastmuon_sumsq_" #tname)]] [[kernel]]                 \
  void fastmuon_sumsq<type>(                                                  \
      const device type* x [[buffer(0)]],                                     \
      device float* sumsq [[buffer(1)]],                                      \
      constant const int* shape [[buffer(2)]],                                \
      constant const int64_t* strides [[buffer(3)]],                          \
      constant const int& ndim [[buffer(4)]],                                 \
      uint3 tg [[threadgroup_position_in_grid]],                              \
      uint tid [[thread_index_in_threadgroup]],                               \
      uint lane [[thread_index_in_simdgroup]],                                \
      uint sg [[simdgroup_index_in_threadgroup]]);                            \
  template [[host_name("fastmuon_load_wide_" #tname)]] [[kernel]]             \
  void fastmuon_load_wide<type>(                                              \
      const device type* x [[buffer(0)]],                                     \
      const device float* sumsq [[buffer(1)]],                                \
      device float* w [[buffer(2)]],                                          \
      constant const int* shape [[buffer(3)]],                                \
      constant const int64_t* strides [[buffer(4)]],                          \
      constant const int& ndim [[buffer(5)]],                                 \
      constant const float& norm_scale [[buffer(6)]],                         \
      constant const float& eps [[buffer(7)]],                                \
      uint3 pos [[thread_position_in_grid]]);                                 \
  template [[host_name("fastmuon_store_wide_" #tname)]] [[kernel]]            \
  void fastmuon_store_wide<type>(                                             \
      const device float* w [[buffer(0)]],                                    \
      device type* out [[buffer(1)]],                                         \
      constant const int& rows [[buffer(2)]],                                 \
      constant const int& cols [[buffer(3)]],                                 \
      uint3 pos [[thread_position_in_grid]]);                                 \
  template [[host_name("fastmuon_add_identity_" #tname)]] [[kernel]]          \
  void fastmuon_add_identity<type>(                                           \
      const device type* z [[buffer(0)]],                                     \
      device type* out [[buffer(1)]],                                         \
      constant const int& m [[buffer(2)]],                                    \
      constant const float& a [[buffer(3)]],                                  \
      uint3 pos [[thread_position_in_grid]]);

instantiate_fastmuon_elementwise(float32, float)
instantiate_fastmuon_elementwise(float16, half)
instantiate_fastmuon_elementwise(bfloat16, bfloat)
