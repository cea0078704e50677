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
// at most 32768 tiles a side (fastmuon.tiles.MAX_SYMMETRIC_DIM).
inline constexpr int64_t kMaxSymmetricDim = int64_t{kTile} * 32768;

// T (T + 1) / 2 with T = ceil(m / kTile): threadgroups of a symmetric
// product (fastmuon.tiles.upper_tile_count).
int64_t upper_tile_count(int64_t m);

// "float32", "float16" or "bfloat16": the suffix of the kernel instantiations.
const char* dtype_suffix(mx::Dtype dtype);

// The kernels of one eval_gpu call on one Metal stream. Temporaries made here
// are handed to the command encoder when the Launcher goes out of scope, which
// keeps them alive until the GPU is done with them.
//
// Its xxt, ba_plus_caa, addmm, matmul and add_identity are the operations
// fastmuon::iterate (iteration.h) runs on, on dense batched arrays
// (batch, rows, cols) of one dtype; each `out` must not alias an operand.
class Launcher {
 public:
  using Wide = mx::array;
  using Square = mx::array;

  explicit Launcher(const mx::Stream& stream);
  ~Launcher();
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  // Gives out its buffer; false if out is empty (nothing to encode).
  bool allocate(mx::array& out);

  // A new dense row-major array with no contents yet.
  mx::array temporary(const mx::Shape& shape, mx::Dtype dtype);

  // x itself when dense and row-major, else a gathered dense copy.
  mx::array row_contiguous(const mx::array& x);

  // out (..., m, m) = x x^T for x (..., m, k).
  void xxt(const mx::array& x, mx::array& out);

  // out = alpha a a + beta a for symmetric square a (upper triangle read).
  void ba_plus_caa(const mx::array& a, mx::array& out, float alpha, float beta);

  // out = alpha a b + beta c.
  void addmm(const mx::array& c, const mx::array& a, const mx::array& b,
             mx::array& out, float alpha, float beta);

  // out = a b.
  void matmul(const mx::array& a, const mx::array& b, mx::array& out);

  // out = z + a I, batched (m x m), float32.
  void add_identity(const mx::array& z, mx::array& out, float a);

  // sumsq[b] = sum of squares of matrix b of x (any layout), float32.
  void sumsq(const mx::array& x, mx::array& sumsq);

  // w (batch, m, n) float32 = the wide orientation of x / (sqrt(sumsq) *
  // norm_scale + eps); x any layout.
  void load_wide(const mx::array& x, const mx::array& sumsq, mx::array& w,
                 float norm_scale, float eps);

  // out (x's shape, dense, out's dtype) = w transposed back when tall.
  void store_wide(const mx::array& w, mx::array& out);

 private:
  MTL::ComputePipelineState* kernel(const std::string& base, mx::Dtype dtype);
  // fastmuon_xxt (axpby false) or fastmuon_ba_plus_caa (see xxt, ba_plus_caa).
  void symmetric(const mx::array& x, mx::array& out, bool axpby, float alpha,
                 float beta);
  // out = alpha a b + beta c (c null: beta ignored); sizes from the shapes.
  void gemm(const mx::array& a, const mx::array& b, const mx::array* c,
            mx::array& out, float alpha, float beta);
  // Selects kernel `base` for `dtype` and binds in (buffer 0) and out (1).
  void start(const char* base, mx::Dtype dtype, const mx::array& in,
             mx::array& out);
  // Threads over (cols, rows, batch), for the element-wise kernels.
  void dispatch_elementwise(int64_t cols, int64_t rows, int64_t batch);
  // x's shape, strides and ndim at buffer indices index .. index + 2, as the
  // kernels that read any layout take them.
  void set_layout(const mx::array& x, int index);

  mx::Stream stream_;
  mx::metal::Device& device_;
  mx::metal::CommandEncoder& encoder_;
  std::vector<mx::array> temporaries_;
};

} // namespace fastmuon::gpu

#endif // _METAL_
