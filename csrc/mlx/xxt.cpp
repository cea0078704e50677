// fastmuon/csrc/mlx/xxt.cpp: see xxt.h.
#include "xxt.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

#include "common.h"
#include "cpu_kernels.h"
#include "metal_dispatch.h"

namespace fastmuon {

using detail::gather_row_major;
using detail::shape_str;

mx::array xxt(const mx::array& x, mx::StreamOrDevice s) {
  if (x.ndim() < 2) {
    throw std::invalid_argument(
        "[fastmuon.xxt] expected an array with at least 2 dimensions "
        "(..., m, k), got shape " +
        shape_str(x.shape()));
  }
  detail::check_float_dtype(x, "xxt");
  const mx::Dtype in_dtype = x.dtype();
  auto stream = mx::to_stream(s);
  // The CPU kernels take float32; the Metal kernels take every float dtype
  // (accumulating in float32) and need no casts.
  const mx::Dtype dtype = detail::primitive_dtype(in_dtype, stream);
  auto xin = in_dtype == dtype ? x : mx::astype(x, dtype, stream);

  mx::Shape out_shape = x.shape();
  out_shape.back() = x.shape(-2);
  auto out = mx::array(
      std::move(out_shape), dtype, std::make_shared<Xxt>(stream), {xin});
  return in_dtype == dtype ? out : mx::astype(out, in_dtype, stream);
}

std::vector<mx::Shape> Xxt::output_shapes(const std::vector<mx::array>& inputs) {
  mx::Shape shape = inputs[0].shape();
  shape.back() = inputs[0].shape(-2);
  return {std::move(shape)};
}

void Xxt::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const auto& x = inputs[0];
  if (x.dtype() != mx::float32 || out.dtype() != mx::float32) {
    throw std::runtime_error("[fastmuon.Xxt] eval_cpu expects float32 data");
  }
  out.set_data(mx::allocator::malloc(out.nbytes()));

  const int nd = x.ndim();
  const int64_t m = x.shape(nd - 2);
  const int64_t k = x.shape(nd - 1);
  int64_t batch = 1;
  for (int i = 0; i < nd - 2; ++i) {
    batch *= x.shape(i);
  }

  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(x);
  encoder.set_output_array(out);

  // Raw pointers are safe in the task: the CPU eval keeps the input buffers
  // alive until every task dispatched for this primitive has run.
  const float* x_ptr = x.data<float>();
  float* out_ptr = out.data<float>();
  if (x.flags().row_contiguous) {
    encoder.dispatch([x_ptr, out_ptr, batch, m, k]() {
      cpu::xxt_f32(x_ptr, out_ptr, batch, m, k);
    });
  } else {
    // Strided view (transpose, slice, broadcast): pack to row-major first.
    encoder.dispatch([x_ptr,
                      out_ptr,
                      batch,
                      m,
                      k,
                      shape = x.shape(),
                      strides = x.strides()]() {
      std::vector<float> packed(static_cast<size_t>(batch * m * k));
      gather_row_major(x_ptr, shape, strides, packed.data());
      cpu::xxt_f32(packed.data(), out_ptr, batch, m, k);
    });
  }
}

#ifdef _METAL_
// metal/symmetric.metal: fastmuon_xxt_<dtype> on the upper-triangle tiles,
// mirrored; a strided input is gathered to a dense copy first.
void Xxt::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  gpu::Launcher launch(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const mx::array x = launch.row_contiguous(inputs[0]);
  launch.symmetric(x, out, /*axpby=*/false, 1.0f, 0.0f);
}
#else
void Xxt::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[fastmuon.xxt] this build has no GPU support; run it on the CPU with "
      "stream=mx.cpu");
}
#endif

// d(X X^T) = dX X^T + X dX^T = P + P^T with P = dX X^T.
std::vector<mx::array> Xxt::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>&) {
  const auto& x = primals[0];
  auto p = mx::matmul(tangents[0], mx::swapaxes(x, -1, -2, stream()), stream());
  return {mx::add(p, mx::swapaxes(p, -1, -2, stream()), stream())};
}

// For L(C) with C = X X^T and cotangent G = dL/dC: dL/dX = (G + G^T) X.
std::vector<mx::array> Xxt::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  const auto& g = cotangents[0];
  auto sym = mx::add(g, mx::swapaxes(g, -1, -2, stream()), stream());
  return {mx::matmul(sym, primals[0], stream())};
}

// Move the mapped axis in front of the matrix axes; Xxt batches over it.
std::pair<std::vector<mx::array>, std::vector<int>> Xxt::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto x = inputs[0];
  int ax = axes[0];
  if (ax < 0) {
    return {{xxt(x, stream())}, {-1}};
  }
  if (ax >= static_cast<int>(x.ndim()) - 2) {
    x = mx::moveaxis(x, ax, 0, stream());
    ax = 0;
  }
  return {{xxt(x, stream())}, {ax}};
}

} // namespace fastmuon
