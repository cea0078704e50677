// fastmuon/csrc/mlx/common.h: what the MLX primitives share: their base
// class and declarations, building an op, argument checks, packing strided
// views, output-buffer donation, the CPU task dispatch and vmap's axis move.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/stream.h"
#include "mlx/utils.h"

namespace fastmuon {

namespace mx = mlx::core;

// The overrides every fastmuon primitive declares beside those of
// ParamPrimitive, defined in its .cpp; NAME is its name in MLX graphs. The
// primitives have CPU kernels only: the ops refuse GPU streams (cpu_stream),
// so eval_gpu is never reached, and throws if it were.
#define FASTMUON_PRIMITIVE_OVERRIDES(NAME)                                    \
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out)         \
      override;                                                               \
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {         \
    detail::throw_cpu_only(NAME);                                             \
  }                                                                           \
  std::vector<mx::array> jvp(                                                 \
      const std::vector<mx::array>& primals,                                  \
      const std::vector<mx::array>& tangents,                                 \
      const std::vector<int>& argnums) override;                              \
  std::vector<mx::array> vjp(                                                 \
      const std::vector<mx::array>& primals,                                  \
      const std::vector<mx::array>& cotangents,                               \
      const std::vector<int>& argnums,                                        \
      const std::vector<mx::array>& outputs) override;                        \
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(                   \
      const std::vector<mx::array>& inputs, const std::vector<int>& axes)     \
      override;                                                               \
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs)  \
      override;                                                               \
  const char* name() const override {                                         \
    return NAME;                                                              \
  }

// Base of the primitives: one input, one output, and parameters (a struct
// with ==) that fix the function computed, so that equal parameters make
// equivalent primitives (mx.compile merges them).
template <class Params>
class ParamPrimitive : public mx::UnaryPrimitive {
 public:
  ParamPrimitive(mx::Stream stream, Params params)
      : mx::UnaryPrimitive(stream), params_(std::move(params)) {}

  // MLX compares only primitives of the same type.
  bool is_equivalent(const mx::Primitive& other) const override {
    return params_ == static_cast<const ParamPrimitive&>(other).params_;
  }

  const Params& params() const {
    return params_;
  }

 protected:
  Params params_;
};

} // namespace fastmuon

namespace fastmuon::detail {

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

// An op's checks of its input x: shape_ok (else "expected <expected>, got
// shape ...") and a float dtype.
inline void check_input(const mx::array& x, const char* op, bool shape_ok,
                        const char* expected) {
  if (!shape_ok) {
    throw std::invalid_argument(std::string("[fastmuon.") + op +
                                "] expected " + expected + ", got shape " +
                                shape_str(x.shape()));
  }
  check_float_dtype(x, op);
}

// The primitives have CPU kernels only; on an Apple GPU, fastmuon.mlx runs
// its mx.fast.metal_kernel kernels instead (backend="metal").
[[noreturn]] inline void throw_cpu_only(const char* op) {
  throw std::runtime_error(
      std::string("[fastmuon.") + op +
      "] fastmuon._mlx_ext has CPU kernels only (no Metal kernel): run it "
      "with stream=mx.cpu, or on an Apple GPU use fastmuon.mlx's op with "
      "backend=\"metal\"");
}

// The stream an op runs on: s, or the CPU's default stream when s is unset
// (whatever the default device); a GPU stream is refused (throw_cpu_only).
inline mx::Stream cpu_stream(mx::StreamOrDevice s, const char* op) {
  const mx::Stream stream = mx::to_stream(s, mx::Device::cpu);
  if (stream.device.type != mx::Device::cpu) {
    throw_cpu_only(op);
  }
  return stream;
}

// Gather a strided (any layout) array of T into a dense row-major buffer.
// Strides are in elements and may be zero (broadcast) or negative (reversed).
template <class T>
void gather_row_major(
    const T* src,
    const mx::Shape& shape,
    const mx::Strides& strides,
    T* dst) {
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
    const T* s = src + offset;
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

// For primitives that overwrite a row-major copy of their input x in place
// (out has x's shape and dtype, float32 or a 16-bit float). Gives out a
// buffer and returns a task that fills it with x's values, to run inside the
// dispatched CPU task:
//   * x dense, row-major and no longer referenced elsewhere: out takes over
//     x's buffer (donation, as MLX's own elementwise ops do), nothing to copy;
//   * x dense and row-major: memcpy;
//   * any other layout (transpose, slice, broadcast): gather.
// The returned callable captures raw pointers; the CPU encoder keeps the input
// buffers alive until the primitive's tasks have run.
struct InputCopy {
  const void* src = nullptr;  // nullptr: nothing to copy (donated or empty)
  void* dst = nullptr;
  int64_t size = 0;
  size_t itemsize = sizeof(float);  // 4 or 2
  bool dense = true;
  mx::Shape shape;
  mx::Strides strides;

  void operator()() const {
    if (src == nullptr) {
      return;
    }
    if (dense) {
      std::memcpy(dst, src, itemsize * static_cast<size_t>(size));
    } else if (itemsize == 2) {  // the bits of a 16-bit float
      gather_row_major(static_cast<const uint16_t*>(src), shape, strides,
                       static_cast<uint16_t*>(dst));
    } else {
      gather_row_major(static_cast<const uint32_t*>(src), shape, strides,
                       static_cast<uint32_t*>(dst));
    }
  }
};

// Whether x's data is exactly its entries, dense and row-major (no strides,
// no broadcast, no offset view of a larger buffer).
inline bool dense_row_major(const mx::array& x) {
  return x.flags().row_contiguous && x.data_size() == x.size();
}

// A copy of x (any layout) into the dense row-major buffer dst: the same
// task as prepare_inplace_output's, for a buffer the caller owns.
inline InputCopy packing_copy(const mx::array& x, void* dst) {
  InputCopy copy;
  if (x.size() == 0) {
    return copy;
  }
  copy.src = x.data<void>();
  copy.dst = dst;
  copy.size = static_cast<int64_t>(x.size());
  copy.itemsize = x.itemsize();
  copy.dense = dense_row_major(x);
  if (!copy.dense) {
    copy.shape = x.shape();
    copy.strides = x.strides();
  }
  return copy;
}

inline InputCopy prepare_inplace_output(const mx::array& x, mx::array& out) {
  if (dense_row_major(x) && x.is_donatable() && x.itemsize() == out.itemsize()) {
    out.copy_shared_buffer(x);
    return InputCopy{};
  }
  out.set_data(mx::allocator::malloc(out.nbytes()));
  return packing_copy(x, out.data<void>());
}

// The op `op` of primitive P on x, on cpu_stream(s). P computes in float32,
// so a 16-bit x is cast to it and the result back (once each).
template <class P, class Params>
mx::array make_op(const char* op, const mx::array& x, mx::Shape out_shape,
                  Params params, mx::StreamOrDevice s) {
  const mx::Dtype in_dtype = x.dtype();
  const mx::Stream stream = cpu_stream(s, op);
  const mx::Dtype dtype = mx::float32;
  auto out = mx::array(
      std::move(out_shape),
      dtype,
      std::make_shared<P>(stream, std::move(params)),
      {in_dtype == dtype ? x : mx::astype(x, dtype, stream)});
  return in_dtype == dtype ? out : mx::astype(out, in_dtype, stream);
}

// Number of matrices in x (..., rows, cols): the product of the leading axes.
inline int64_t matrix_batch(const mx::array& x) {
  int64_t batch = 1;
  for (int i = 0; i + 2 < static_cast<int>(x.ndim()); ++i) {
    batch *= x.shape(i);
  }
  return batch;
}

// The CPU kernels take float32 only (the ops cast to it, see make_op).
inline void check_cpu_float32(const char* primitive, const mx::array& x,
                              const mx::array& out) {
  if (x.dtype() != mx::float32 || out.dtype() != mx::float32) {
    throw std::runtime_error(std::string("[fastmuon.") + primitive +
                             "] eval_cpu expects float32 data");
  }
}

// The stream's CPU encoder, with x and out registered (it keeps x's buffer
// alive until the tasks dispatched for the primitive have run, so tasks may
// hold raw pointers into it).
inline mx::cpu::CommandEncoder& cpu_encoder(const mx::Stream& stream,
                                            const mx::array& x,
                                            mx::array& out) {
  auto& encoder = mx::cpu::get_command_encoder(stream);
  encoder.set_input_array(x);
  encoder.set_output_array(out);
  return encoder;
}

// eval_cpu of a primitive whose CPU kernel overwrites a row-major float32
// copy of its input x (..., rows, cols) in place: out receives x's values
// (prepare_inplace_output), then kernel(out data, batch, rows, cols) runs in
// the dispatched task, which owns the kernel (it may run after this returns).
template <class Kernel>
void eval_cpu_in_place(const char* primitive, const mx::Stream& stream,
                       const mx::array& x, mx::array& out, Kernel kernel) {
  check_cpu_float32(primitive, x, out);
  auto fill = prepare_inplace_output(x, out);
  auto& encoder = cpu_encoder(stream, x, out);
  encoder.dispatch([fill = std::move(fill),
                    kernel = std::move(kernel),
                    out_ptr = out.data<float>(),
                    batch = matrix_batch(x),
                    rows = int64_t{x.shape(-2)},
                    cols = int64_t{x.shape(-1)}]() {
    fill();
    kernel(out_ptr, batch, rows, cols);
  });
}

// vmap: the primitives batch over every leading axis, so a mapped axis among
// the matrix axes (the last two) is moved to the front. Returns the axis the
// result is mapped over (negative: none).
inline int move_mapped_axis_to_front(mx::array& x, int axis,
                                     const mx::Stream& stream) {
  if (axis >= 0 && axis >= static_cast<int>(x.ndim()) - 2) {
    x = mx::moveaxis(x, axis, 0, stream);
    return 0;
  }
  return axis;
}

} // namespace fastmuon::detail
