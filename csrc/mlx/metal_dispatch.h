// fastmuon/csrc/mlx/metal_dispatch.h: encoding fastmuon's Metal kernels
// (metal/*.metal, built into fastmuon.metallib beside the extension module)
// from the primitives' eval_gpu. Only Metal builds of MLX (_METAL_) have it.
//
// Every function encodes one kernel on the stream's command encoder; MLX's
// encoder inserts the memory barriers between dependent dispatches from the
// arrays registered as inputs and outputs.
#pragma once

#ifdef _METAL_

#include <cstdint>
#include <string>
#include <vector>

#include "mlx/array.h"
#include "mlx/backend/metal/device.h"
#include "mlx/stream.h"

namespace fastmuon::gpu {

namespace mx = mlx::core;

// Must match metal/fastmuon_tiles.h and metal/orthogonalize.metal.
inline constexpr int kTile = 32;            // FASTMUON_TILE
inline constexpr int kTileThreads = 128;    // FASTMUON_THREADS
inline constexpr int kReduceThreads = 256;  // FASTMUON_REDUCE_THREADS
// fastmuon_upper_tile evaluates (j + 1) (j + 2) / 2 in 32-bit unsigned ints:
// at most 32768 tiles a side (fastmuon._tiles.MAX_SYMMETRIC_DIM).
inline constexpr int64_t kMaxSymmetricDim = int64_t{kTile} * 32768;

// T (T + 1) / 2 with T = ceil(m / kTile): threadgroups of a symmetric
// product (fastmuon._tiles.upper_tile_count).
int64_t upper_tile_count(int64_t m);

// "float32", "float16" or "bfloat16": the suffix of the kernel instantiations.
const char* dtype_suffix(mx::Dtype dtype);

// The kernels of one eval_gpu call on one Metal stream. Temporaries made here
// are handed to the command encoder when the Launcher goes out of scope, which
// keeps them alive until the GPU is done with them.
class Launcher {
 public:
  explicit Launcher(const mx::Stream& stream);
  ~Launcher();
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  // A new dense row-major array with no contents yet.
  mx::array temporary(const mx::Shape& shape, mx::Dtype dtype);

  // x itself when dense and row-major, else a gathered dense copy.
  mx::array row_contiguous(const mx::array& x);

  // out (..., m, m) = x x^T (axpby false) or alpha x x + beta x (x symmetric
  // square), for dense x (..., m, k); both of x's dtype.
  void symmetric(
      const mx::array& x,
      mx::array& out,
      bool axpby,
      float alpha,
      float beta);

  // out = alpha a b + beta c, batched (batch of M x K, K x N, M x N), dense;
  // c may be null (beta ignored), must not alias out.
  void gemm(
      const mx::array& a,
      const mx::array& b,
      const mx::array* c,
      mx::array& out,
      int64_t batch,
      int64_t M,
      int64_t N,
      int64_t K,
      float alpha,
      float beta);

  // sumsq[b] = sum of squares of matrix b of x (any layout), float32.
  void sumsq(const mx::array& x, mx::array& sumsq);

  // w (batch, m, n) float32 = the wide orientation of x / (sqrt(sumsq) *
  // norm_scale + eps); x any layout.
  void load_wide(
      const mx::array& x,
      const mx::array& sumsq,
      mx::array& w,
      float norm_scale,
      float eps);

  // out (x's shape, dense, out's dtype) = w transposed back when tall.
  void store_wide(const mx::array& w, mx::array& out);

  // out = z + a I, batched (m x m), float32.
  void add_identity(const mx::array& z, mx::array& out, float a);

 private:
  MTL::ComputePipelineState* kernel(const std::string& base, mx::Dtype dtype);

  mx::Stream stream_;
  mx::metal::Device& device_;
  mx::metal::CommandEncoder& encoder_;
  std::vector<mx::array> temporaries_;
};

} // namespace fastmuon::gpu

#endif // _METAL_
