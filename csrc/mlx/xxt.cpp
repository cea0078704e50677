// fastmuon/csrc/mlx/xxt.cpp: see xxt.h.
#include "xxt.h"

#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu_kernels.h"

namespace fastmuon {

mx::array xxt(const mx::array& x, mx::StreamOrDevice s) {
  detail::check_input(x, "xxt", x.ndim() >= 2,
                      "an array with at least 2 dimensions (..., m, k)");
  mx::Shape out_shape = x.shape();
  out_shape.back() = x.shape(-2);
  return detail::make_op<Xxt>("xxt", x, std::move(out_shape),
                              std::monostate{}, s);
}

std::vector<mx::Shape> Xxt::output_shapes(
    const std::vector<mx::array>& inputs) {
  mx::Shape shape = inputs[0].shape();
  shape.back() = inputs[0].shape(-2);
  return {std::move(shape)};
}

void Xxt::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const auto& x = inputs[0];
  detail::check_cpu_float32("Xxt", x, out);
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = detail::cpu_encoder(stream(), x, out);
  const int64_t batch = detail::matrix_batch(x);
  const int64_t m = x.shape(-2);
  const int64_t k = x.shape(-1);
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
      detail::gather_row_major(x_ptr, shape, strides, packed.data());
      cpu::xxt_f32(packed.data(), out_ptr, batch, m, k);
    });
  }
}

// d(X X^T) = dX X^T + X dX^T = P + P^T with P = dX X^T.
std::vector<mx::array> Xxt::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>&) {
  auto p = mx::matmul(
      tangents[0], mx::swapaxes(primals[0], -1, -2, stream()), stream());
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

std::pair<std::vector<mx::array>, std::vector<int>> Xxt::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto x = inputs[0];
  const int axis = detail::move_mapped_axis_to_front(x, axes[0], stream());
  return {{xxt(x, stream())}, {axis}};
}

} // namespace fastmuon
