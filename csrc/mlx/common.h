// fastmuon/csrc/mlx/common.h: small helpers shared by the MLX primitives
// (argument checks, packing strided views, output-buffer donation).
#pragma once

#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/stream.h"

namespace fastmuon::detail {

namespace mx = mlx::core;

inline std::string shape_str(const mx::Shape& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    os << shape[i] << (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
  }
  os << ")";
  return os.str();
}

// The primitives compute in float32; 16-bit inputs are upcast by the op and
// the result rounded back once. float64 and non-floating types are rejected
// (std::invalid_argument, ValueError in Python).
inline void check_float_dtype(const mx::array& x, const char* op) {
  const mx::Dtype d = x.dtype();
  if (d != mx::float32 && d != mx::float16 && d != mx::bfloat16) {
    std::ostringstream os;
    os << "[fastmuon." << op
       << "] expected a float32, float16 or bfloat16 array, got " << d;
    throw std::invalid_argument(os.str());
  }
}

// The dtype a primitive computes in: float32 on the CPU (the BLAS kernels),
// the input's own float dtype on a GPU stream (the Metal kernels accumulate
// in float32 and round once).
inline mx::Dtype primitive_dtype(mx::Dtype in_dtype, const mx::Stream& stream) {
  return stream.device.type == mx::Device::gpu ? in_dtype : mx::float32;
}

// Gather a strided (any layout) float32 array into a dense row-major buffer.
// Strides are in elements and may be zero (broadcast) or negative (reversed).
inline void gather_row_major(
    const float* src,
    const mx::Shape& shape,
    const mx::Strides& strides,
    float* dst) {
  const int nd = static_cast<int>(shape.size());
  int64_t total = 1;
  for (auto n : shape) {
    total *= n;
  }
  if (total == 0) {
    return;
  }
  // Innermost axis as a strided copy loop, outer axes via an index counter.
  const int64_t inner = shape[nd - 1];
  const int64_t inner_stride = strides[nd - 1];
  std::vector<int64_t> idx(nd, 0);
  int64_t offset = 0;
  for (int64_t done = 0; done < total; done += inner) {
    const float* s = src + offset;
    for (int64_t j = 0; j < inner; ++j) {
      dst[j] = s[j * inner_stride];
    }
    dst += inner;
    for (int ax = nd - 2; ax >= 0; --ax) {
      if (++idx[ax] < shape[ax]) {
        offset += strides[ax];
        break;
      }
      offset -= strides[ax] * (idx[ax] - 1);
      idx[ax] = 0;
    }
  }
}

// For primitives that overwrite a row-major float32 copy of their input x in
// place (out has x's shape and dtype). Gives out a buffer and returns a task
// that fills it with x's values, to run inside the dispatched CPU task:
//   * x dense, row-major and no longer referenced elsewhere: out takes over
//     x's buffer (donation, as MLX's own elementwise ops do), nothing to copy;
//   * x dense and row-major: memcpy;
//   * any other layout (transpose, slice, broadcast): gather.
// The returned callable captures raw pointers; the CPU encoder keeps the input
// buffers alive until the primitive's tasks have run.
struct InputCopy {
  const float* src = nullptr;  // nullptr: nothing to copy (donated or empty)
  float* dst = nullptr;
  int64_t size = 0;
  bool dense = true;
  mx::Shape shape;
  mx::Strides strides;

  void operator()() const {
    if (src == nullptr) {
      return;
    }
    if (dense) {
      std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(size));
    } else {
      gather_row_major(src, shape, strides, dst);
    }
  }
};

inline InputCopy prepare_inplace_output(const mx::array& x, mx::array& out) {
  InputCopy copy;
  const bool dense = x.flags().row_contiguous &&
      x.data_size() == x.size();
  if (dense && x.is_donatable() && x.itemsize() == out.itemsize()) {
    out.copy_shared_buffer(x);
    return copy;
  }
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (x.size() == 0) {
    return copy;  // nothing to copy
  }
  copy.src = x.data<float>();
  copy.dst = out.data<float>();
  copy.size = static_cast<int64_t>(x.size());
  copy.dense = dense;
  if (!dense) {
    copy.shape = x.shape();
    copy.strides = x.strides();
  }
  return copy;
}

} // namespace fastmuon::detail
