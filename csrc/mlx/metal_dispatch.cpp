// fastmuon/csrc/mlx/metal_dispatch.cpp: see metal_dispatch.h. Empty unless
// MLX was built with Metal (_METAL_, macOS).
#include "metal_dispatch.h"

#ifdef _METAL_

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "mlx/allocator.h"

#include "common.h"

namespace fastmuon::gpu {

namespace {

// fastmuon.metallib (CMakeLists.txt: mlx_build_metallib TITLE fastmuon),
// installed in the same folder as the extension module.
constexpr const char* kLibraryName = "fastmuon";

const std::string& module_dir() {
  static const std::string dir = [] {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&upper_tile_count), &info) == 0 ||
        info.dli_fname == nullptr) {
      throw std::runtime_error(
          "[fastmuon] cannot locate the extension module, so cannot load "
          "fastmuon.metallib from beside it");
    }
    return std::filesystem::path(info.dli_fname).parent_path().string();
  }();
  return dir;
}

// Matrix sizes reach the kernels as 32-bit ints.
int to_int(int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max()) {
    throw std::invalid_argument(
        std::string("[fastmuon] the Metal kernels take ") + what +
        " up to 2**31 - 1, got " + std::to_string(v));
  }
  return static_cast<int>(v);
}

MTL::Size size3(int64_t x, int64_t y, int64_t z) {
  return MTL::Size(
      static_cast<NS::UInteger>(x),
      static_cast<NS::UInteger>(y),
      static_cast<NS::UInteger>(z));
}

// Threadgroup of at most 256 threads for an element-wise grid (gx, gy, 1).
MTL::Size elementwise_group(int64_t gx, int64_t gy) {
  const int64_t tx = std::min<int64_t>(gx, 32);
  const int64_t ty = std::min<int64_t>(gy, 256 / tx);
  return size3(std::max<int64_t>(tx, 1), std::max<int64_t>(ty, 1), 1);
}

} // namespace

int64_t upper_tile_count(int64_t m) {
  const int64_t t = (m + kTile - 1) / kTile;
  return t * (t + 1) / 2;
}

const char* dtype_suffix(mx::Dtype dtype) {
  if (dtype == mx::float32) {
    return "float32";
  }
  if (dtype == mx::float16) {
    return "float16";
  }
  if (dtype == mx::bfloat16) {
    return "bfloat16";
  }
  throw std::invalid_argument(
      "[fastmuon] the Metal kernels take float32, float16 or bfloat16 arrays");
}

Launcher::Launcher(const mx::Stream& stream)
    : stream_(stream),
      device_(mx::metal::device(stream.device)),
      encoder_(mx::metal::get_command_encoder(stream)) {}

Launcher::~Launcher() {
  if (!temporaries_.empty()) {
    encoder_.add_temporaries(std::move(temporaries_));
  }
}

MTL::ComputePipelineState* Launcher::kernel(
    const std::string& base,
    mx::Dtype dtype) {
  MTL::Library* library = nullptr;
  try {
    library = device_.get_library(kLibraryName, module_dir());
  } catch (const std::exception& e) {
    throw std::runtime_error(
        std::string("[fastmuon] cannot load fastmuon.metallib from ") +
        module_dir() +
        " (it is built and installed with the extension on macOS when MLX "
        "has Metal): " + e.what());
  }
  return device_.get_kernel(base + "_" + dtype_suffix(dtype), library);
}

bool Launcher::allocate(mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  return out.size() != 0;
}

mx::array Launcher::temporary(const mx::Shape& shape, mx::Dtype dtype) {
  mx::array t(shape, dtype, nullptr, {});
  t.set_data(mx::allocator::malloc(t.nbytes()));
  temporaries_.push_back(t);
  return t;
}

void Launcher::start(const char* base, mx::Dtype dtype, const mx::array& in,
                     mx::array& out) {
  encoder_.set_compute_pipeline_state(kernel(base, dtype));
  encoder_.set_input_array(in, 0);
  encoder_.set_output_array(out, 1);
}

void Launcher::dispatch_elementwise(int64_t cols, int64_t rows, int64_t batch) {
  encoder_.dispatch_threads(
      size3(cols, rows, batch), elementwise_group(cols, rows));
}

void Launcher::set_layout(const mx::array& x, int index) {
  encoder_.set_vector_bytes(x.shape(), index);
  encoder_.set_vector_bytes(x.strides(), index + 1);
  encoder_.set_bytes(static_cast<int>(x.ndim()), index + 2);
}

mx::array Launcher::row_contiguous(const mx::array& x) {
  if (x.flags().row_contiguous && x.data_size() == x.size()) {
    return x;
  }
  mx::array out = temporary(x.shape(), x.dtype());
  const int64_t size = static_cast<int64_t>(x.size());
  if (size == 0) {
    return out;
  }
  start("fastmuon_gather", x.dtype(), x, out);
  set_layout(x, 2);
  encoder_.set_bytes(size, 5);
  const int64_t width = std::min<int64_t>(size, int64_t{1} << 30);
  const int64_t height = (size + width - 1) / width;
  encoder_.dispatch_threads(
      size3(width, height, 1), size3(std::min<int64_t>(width, 256), 1, 1));
  return out;
}

void Launcher::xxt(const mx::array& x, mx::array& out) {
  symmetric(x, out, /*axpby=*/false, 1.0f, 0.0f);
}

void Launcher::ba_plus_caa(const mx::array& a, mx::array& out, float alpha,
                           float beta) {
  symmetric(a, out, /*axpby=*/true, alpha, beta);
}

void Launcher::addmm(const mx::array& c, const mx::array& a,
                     const mx::array& b, mx::array& out, float alpha,
                     float beta) {
  gemm(a, b, &c, out, alpha, beta);
}

void Launcher::matmul(const mx::array& a, const mx::array& b, mx::array& out) {
  gemm(a, b, nullptr, out, 1.0f, 0.0f);
}

void Launcher::symmetric(const mx::array& x, mx::array& out, bool axpby,
                         float alpha, float beta) {
  if (out.size() == 0) {
    return;
  }
  const int64_t m = x.shape(-2);
  const int64_t k = x.shape(-1);
  if (m > kMaxSymmetricDim) {
    throw std::invalid_argument(
        "[fastmuon] the Metal symmetric kernels take up to " +
        std::to_string(kMaxSymmetricDim) + " rows, got " + std::to_string(m));
  }
  // With k == 0 the kernel reads nothing and writes zeros; any bound buffer
  // will do for x.
  start(axpby ? "fastmuon_ba_plus_caa" : "fastmuon_xxt", out.dtype(),
        x.size() == 0 ? out : x, out);
  encoder_.set_bytes(to_int(m, "rows"), 2);
  encoder_.set_bytes(to_int(k, "columns"), 3);
  encoder_.set_bytes(alpha, 4);
  encoder_.set_bytes(beta, 5);
  encoder_.dispatch_threadgroups(
      size3(upper_tile_count(m), detail::matrix_batch(x), 1),
      size3(kTileThreads, 1, 1));
}

void Launcher::gemm(const mx::array& a, const mx::array& b, const mx::array* c,
                    mx::array& out, float alpha, float beta) {
  if (out.size() == 0) {
    return;
  }
  const int64_t M = a.shape(-2);
  const int64_t K = a.shape(-1);
  const int64_t N = b.shape(-1);
  encoder_.set_compute_pipeline_state(kernel("fastmuon_gemm", out.dtype()));
  encoder_.set_input_array(a, 0);
  encoder_.set_input_array(b, 1);
  encoder_.set_input_array(c != nullptr ? *c : a, 2);  // not read without c
  encoder_.set_output_array(out, 3);
  encoder_.set_bytes(to_int(M, "rows"), 4);
  encoder_.set_bytes(to_int(N, "columns"), 5);
  encoder_.set_bytes(to_int(K, "inner dimensions"), 6);
  encoder_.set_bytes(alpha, 7);
  encoder_.set_bytes(beta, 8);
  encoder_.set_bytes(c != nullptr ? 1 : 0, 9);
  encoder_.dispatch_threadgroups(
      size3((N + kTile - 1) / kTile, (M + kTile - 1) / kTile,
            detail::matrix_batch(out)),
      size3(kTileThreads, 1, 1));
}

void Launcher::sumsq(const mx::array& x, mx::array& sumsq) {
  start("fastmuon_sumsq", x.dtype(), x, sumsq);
  set_layout(x, 2);
  encoder_.dispatch_threadgroups(
      size3(detail::matrix_batch(x), 1, 1), size3(kReduceThreads, 1, 1));
}

void Launcher::load_wide(const mx::array& x, const mx::array& sumsq,
                         mx::array& w, float norm_scale, float eps) {
  const int64_t m = w.shape(-2);
  const int64_t n = w.shape(-1);
  encoder_.set_compute_pipeline_state(kernel("fastmuon_load_wide", x.dtype()));
  encoder_.set_input_array(x, 0);
  encoder_.set_input_array(sumsq, 1);
  encoder_.set_output_array(w, 2);
  set_layout(x, 3);
  encoder_.set_bytes(norm_scale, 6);
  encoder_.set_bytes(eps, 7);
  dispatch_elementwise(n, m, detail::matrix_batch(x));
}

void Launcher::store_wide(const mx::array& w, mx::array& out) {
  const int64_t rows = out.shape(-2);
  const int64_t cols = out.shape(-1);
  start("fastmuon_store_wide", out.dtype(), w, out);
  encoder_.set_bytes(to_int(rows, "rows"), 2);
  encoder_.set_bytes(to_int(cols, "columns"), 3);
  dispatch_elementwise(cols, rows, detail::matrix_batch(out));
}

void Launcher::add_identity(const mx::array& z, mx::array& out, float a) {
  const int64_t m = z.shape(-1);
  start("fastmuon_add_identity", out.dtype(), z, out);
  encoder_.set_bytes(to_int(m, "rows"), 2);
  encoder_.set_bytes(a, 3);
  dispatch_elementwise(m, m, detail::matrix_batch(z));
}

} // namespace fastmuon::gpu

#endif // _METAL_
