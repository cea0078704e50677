// fastmuon/csrc/mlx/ba_plus_caa.cpp: see ba_plus_caa.h.
#include "ba_plus_caa.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/backend/cpu/encoder.h"

#include "common.h"
#include "cpu_kernels.h"
#include "metal_dispatch.h"

namespace fastmuon {

mx::array ba_plus_caa(const mx::array& a, double alpha, double beta,
                      mx::StreamOrDevice s) {
  if (a.ndim() < 2 || a.shape(-1) != a.shape(-2)) {
    throw std::invalid_argument(
        "[fastmuon.ba_plus_caa] expected a batch of square matrices "
        "(..., m, m), got shape " +
        detail::shape_str(a.shape()));
  }
  detail::check_float_dtype(a, "ba_plus_caa");
  const mx::Dtype in_dtype = a.dtype();
  auto stream = mx::to_stream(s);
  const mx::Dtype dtype = detail::primitive_dtype(in_dtype, stream);
  auto ain = in_dtype == dtype ? a : mx::astype(a, dtype, stream);
  auto out = mx::array(
      a.shape(),
      dtype,
      std::make_shared<BaPlusCaa>(
          stream, static_cast<float>(alpha), static_cast<float>(beta)),
      {ain});
  return in_dtype == dtype ? out : mx::astype(out, in_dtype, stream);
}

std::vector<mx::Shape> BaPlusCaa::output_shapes(
    const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

bool BaPlusCaa::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const BaPlusCaa&>(other);
  return alpha_ == o.alpha_ && beta_ == o.beta_;
}

void BaPlusCaa::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const auto& a = inputs[0];
  if (a.dtype() != mx::float32 || out.dtype() != mx::float32) {
    throw std::runtime_error(
        "[fastmuon.BaPlusCaa] eval_cpu expects float32 data");
  }
  // The kernel runs in place on out: it takes over a's buffer when a is no
  // longer needed, else receives a copy (packed if a is a strided view).
  auto fill = detail::prepare_inplace_output(a, out);

  const int nd = a.ndim();
  const int64_t m = a.shape(nd - 1);
  int64_t batch = 1;
  for (int i = 0; i < nd - 2; ++i) {
    batch *= a.shape(i);
  }

  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(a);
  encoder.set_output_array(out);
  float* out_ptr = out.data<float>();
  encoder.dispatch([fill = std::move(fill),
                    out_ptr,
                    batch,
                    m,
                    alpha = alpha_,
                    beta = beta_]() {
    fill();
    cpu::ba_plus_caa_f32(out_ptr, out_ptr, batch, m, alpha, beta);
  });
}

#ifdef _METAL_
// metal/symmetric.metal: fastmuon_ba_plus_caa_<dtype> on the upper-triangle
// tiles (reading a's upper triangle), mirrored.
void BaPlusCaa::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  gpu::Launcher launch(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const mx::array a = launch.row_contiguous(inputs[0]);
  launch.symmetric(a, out, /*axpby=*/true, alpha_, beta_);
}
#else
void BaPlusCaa::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[fastmuon.ba_plus_caa] this build has no GPU support; run it on the "
      "CPU with stream=mx.cpu");
}
#endif

// d(alpha A A + beta A) = alpha (T A + A T) + beta T.
std::vector<mx::array> BaPlusCaa::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>&) {
  const auto& a = primals[0];
  const auto& t = tangents[0];
  auto prod = mx::add(
      mx::matmul(t, a, stream()), mx::matmul(a, t, stream()), stream());
  return {mx::add(
      mx::multiply(mx::array(alpha_), prod, stream()),
      mx::multiply(mx::array(beta_), t, stream()),
      stream())};
}

// For L(C), C = alpha A A + beta A, G = dL/dC:
// dL/dA = alpha (G A^T + A^T G) + beta G.
std::vector<mx::array> BaPlusCaa::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  const auto& g = cotangents[0];
  auto at = mx::swapaxes(primals[0], -1, -2, stream());
  auto prod = mx::add(
      mx::matmul(g, at, stream()), mx::matmul(at, g, stream()), stream());
  return {mx::add(
      mx::multiply(mx::array(alpha_), prod, stream()),
      mx::multiply(mx::array(beta_), g, stream()),
      stream())};
}

// Move the mapped axis in front of the matrix axes; BaPlusCaa batches over it.
std::pair<std::vector<mx::array>, std::vector<int>> BaPlusCaa::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto a = inputs[0];
  int ax = axes[0];
  if (ax >= 0 && ax >= static_cast<int>(a.ndim()) - 2) {
    a = mx::moveaxis(a, ax, 0, stream());
    ax = 0;
  }
  return {{ba_plus_caa(a, alpha_, beta_, stream())}, {ax}};
}

} // namespace fastmuon
