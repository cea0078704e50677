// fastmuon/csrc/mlx/orthogonalize.cpp: see orthogonalize.h.
#include "orthogonalize.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/backend/cpu/encoder.h"

#include "common.h"
#include "cpu_kernels.h"
#include "metal_dispatch.h"

namespace fastmuon {

namespace {

// Checked when the graph is built: the kernel's own checks would only fire
// inside the dispatched task, far from the call that caused them.
void check_parameters(
    const Coefficients& coefficients,
    double norm_scale,
    double eps,
    bool gram,
    int64_t gram_restart_every) {
  if (coefficients.empty()) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] coefficients must hold at least one "
        "(a, b, c) step");
  }
  for (size_t i = 0; i < coefficients.size(); ++i) {
    for (double v : coefficients[i]) {
      if (!std::isfinite(v)) {
        throw std::invalid_argument(
            "[fastmuon.orthogonalize] coefficients must be finite; step " +
            std::to_string(i) + " has " + std::to_string(v));
      }
    }
  }
  if (!(std::isfinite(norm_scale) && norm_scale > 0.0)) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] norm_scale must be finite and positive, "
        "got " + std::to_string(norm_scale));
  }
  if (!(std::isfinite(eps) && eps >= 0.0)) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] eps must be finite and non-negative, got " +
        std::to_string(eps));
  }
  if (gram && gram_restart_every < 1) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] gram_restart_every must be >= 1, got " +
        std::to_string(gram_restart_every));
  }
}

} // namespace

mx::array orthogonalize(
    const mx::array& x,
    const Coefficients& coefficients,
    double norm_scale,
    double eps,
    bool gram,
    int64_t gram_restart_every,
    mx::StreamOrDevice s) {
  if (x.ndim() < 2) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] expected an array with at least 2 "
        "dimensions (..., rows, cols), got shape " +
        detail::shape_str(x.shape()));
  }
  detail::check_float_dtype(x, "orthogonalize");
  check_parameters(coefficients, norm_scale, eps, gram, gram_restart_every);
  const mx::Dtype in_dtype = x.dtype();
  auto stream = mx::to_stream(s);
  const mx::Dtype dtype = detail::primitive_dtype(in_dtype, stream);
  auto xin = in_dtype == dtype ? x : mx::astype(x, dtype, stream);
  auto out = mx::array(
      x.shape(),
      dtype,
      std::make_shared<Orthogonalize>(
          stream, coefficients, norm_scale, eps, gram, gram_restart_every),
      {xin});
  return in_dtype == dtype ? out : mx::astype(out, in_dtype, stream);
}

std::vector<mx::Shape> Orthogonalize::output_shapes(
    const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

bool Orthogonalize::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const Orthogonalize&>(other);
  return coefficients_ == o.coefficients_ && norm_scale_ == o.norm_scale_ &&
      eps_ == o.eps_ && gram_ == o.gram_ &&
      gram_restart_every_ == o.gram_restart_every_;
}

void Orthogonalize::eval_cpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  const auto& x = inputs[0];
  if (x.dtype() != mx::float32 || out.dtype() != mx::float32) {
    throw std::runtime_error(
        "[fastmuon.Orthogonalize] eval_cpu expects float32 data");
  }
  // The kernel works in place: out takes over x's buffer when x is no longer
  // needed (e.g. the float32 copy of a 16-bit input), else receives a copy
  // (packed if x is a strided view).
  auto fill = detail::prepare_inplace_output(x, out);

  const int nd = x.ndim();
  const int64_t rows = x.shape(nd - 2);
  const int64_t cols = x.shape(nd - 1);
  int64_t batch = 1;
  for (int i = 0; i < nd - 2; ++i) {
    batch *= x.shape(i);
  }

  auto& encoder = mx::cpu::get_command_encoder(stream());
  encoder.set_input_array(x);
  encoder.set_output_array(out);
  float* out_ptr = out.data<float>();
  // The task owns its copy of the coefficients: it may outlive this call.
  std::vector<double> flat;
  flat.reserve(3 * coefficients_.size());
  for (const auto& abc : coefficients_) {
    flat.insert(flat.end(), abc.begin(), abc.end());
  }
  encoder.dispatch([fill = std::move(fill),
                    flat = std::move(flat),
                    out_ptr,
                    batch,
                    rows,
                    cols,
                    norm_scale = norm_scale_,
                    eps = eps_,
                    gram = gram_,
                    restart = gram_restart_every_]() {
    fill();
    cpu::OrthogonalizePlan plan{};
    plan.coefficients = flat.data();
    plan.steps = static_cast<int64_t>(flat.size() / 3);
    plan.norm_scale = norm_scale;
    plan.eps = eps;
    plan.gram = gram;
    plan.gram_restart_every = restart;
    cpu::orthogonalize_f32(out_ptr, batch, rows, cols, plan);
  });
}

#ifdef _METAL_
// The iteration of eval_cpu as a sequence of fastmuon.metallib kernels on
// float32 working matrices in the wide orientation (m x n, m <= n): the norm
// (fastmuon_sumsq, float32 accumulation), the normalized and, for tall
// inputs, transposed copy (fastmuon_load_wide, any input layout), the
// symmetric products (fastmuon_xxt / fastmuon_ba_plus_caa), the general
// products (fastmuon_gemm) and the rounded, transposed-back result
// (fastmuon_store_wide).
void Orthogonalize::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  const auto& x = inputs[0];
  gpu::Launcher launch(stream());
  out.set_data(mx::allocator::malloc(out.nbytes()));
  if (out.size() == 0) {
    return;
  }
  const int nd = x.ndim();
  const int64_t rows = x.shape(nd - 2);
  const int64_t cols = x.shape(nd - 1);
  const int64_t batch = static_cast<int64_t>(x.size()) / (rows * cols);
  const int64_t m = std::min(rows, cols);
  const int64_t n = std::max(rows, cols);
  const auto b = static_cast<mx::ShapeElem>(batch);
  const auto mi = static_cast<mx::ShapeElem>(m);
  const auto ni = static_cast<mx::ShapeElem>(n);

  mx::array sumsq = launch.temporary({b}, mx::float32);
  launch.sumsq(x, sumsq);
  mx::array X = launch.temporary({b, mi, ni}, mx::float32);
  mx::array X2 = launch.temporary({b, mi, ni}, mx::float32);
  launch.load_wide(
      x, sumsq, X, static_cast<float>(norm_scale_), static_cast<float>(eps_));
  mx::array A = launch.temporary({b, mi, mi}, mx::float32);  // A, or R
  mx::array B = launch.temporary({b, mi, mi}, mx::float32);  // B, or Z

  if (!gram_) {
    for (const auto& abc : coefficients_) {
      launch.symmetric(X, A, false, 1.0f, 0.0f);  // A = X X^T
      launch.symmetric(  // B = b A + c A A
          A, B, true, static_cast<float>(abc[2]), static_cast<float>(abc[1]));
      launch.gemm(  // X <- a X + B X
          B, X, &X, X2, batch, m, n, m, 1.0f, static_cast<float>(abc[0]));
      std::swap(X, X2);
    }
  } else {
    // As gram_iteration in csrc/cpu_kernels.cpp.
    mx::array& R = A;
    mx::array& Z = B;
    mx::array Q = launch.temporary({b, mi, mi}, mx::float32);
    mx::array Q2 = launch.temporary({b, mi, mi}, mx::float32);
    mx::array RZ = launch.temporary({b, mi, mi}, mx::float32);
    launch.symmetric(X, R, false, 1.0f, 0.0f);
    bool q_is_identity = true;
    const auto steps = static_cast<int64_t>(coefficients_.size());
    for (int64_t step = 1; step <= steps; ++step) {
      const auto& abc = coefficients_[step - 1];
      const auto a = static_cast<float>(abc[0]);
      launch.symmetric(  // Z = b R + c R R
          R, Z, true, static_cast<float>(abc[2]), static_cast<float>(abc[1]));
      if (q_is_identity) {
        launch.add_identity(Z, Q, a);  // Q = Z + a I
        q_is_identity = false;
      } else {
        launch.gemm(Q, Z, &Q, Q2, batch, m, m, m, 1.0f, a);  // Q Z + a Q
        std::swap(Q, Q2);
      }
      if (step == steps) {
        break;
      }
      launch.gemm(R, Z, &R, RZ, batch, m, m, m, 1.0f, a);  // RZ = R Z + a R
      launch.gemm(Z, RZ, &RZ, R, batch, m, m, m, 1.0f, a);  // R = Z RZ + a RZ
      if (step % gram_restart_every_ == 0) {  // X <- Q X, R <- X X^T, Q <- I
        launch.gemm(Q, X, nullptr, X2, batch, m, n, m, 1.0f, 0.0f);
        std::swap(X, X2);
        launch.symmetric(X, R, false, 1.0f, 0.0f);
        q_is_identity = true;
      }
    }
    launch.gemm(Q, X, nullptr, X2, batch, m, n, m, 1.0f, 0.0f);  // X <- Q X
    std::swap(X, X2);
  }
  launch.store_wide(X, out);
}
#else
void Orthogonalize::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  throw std::runtime_error(
      "[fastmuon.orthogonalize] this build has no GPU support; run it on the "
      "CPU with stream=mx.cpu");
}
#endif

std::vector<mx::array> Orthogonalize::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  throw std::runtime_error(
      "[fastmuon.orthogonalize] is not differentiable (no jvp); it is meant "
      "for optimizer updates. Differentiate a reference implementation "
      "instead.");
}

std::vector<mx::array> Orthogonalize::vjp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  throw std::runtime_error(
      "[fastmuon.orthogonalize] is not differentiable (no vjp); it is meant "
      "for optimizer updates. Differentiate a reference implementation "
      "instead.");
}

// Move the mapped axis in front of the matrix axes; Orthogonalize batches
// over it.
std::pair<std::vector<mx::array>, std::vector<int>> Orthogonalize::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto x = inputs[0];
  int ax = axes[0];
  if (ax >= 0 && ax >= static_cast<int>(x.ndim()) - 2) {
    x = mx::moveaxis(x, ax, 0, stream());
    ax = 0;
  }
  return {
      {orthogonalize(
          x,
          coefficients_,
          norm_scale_,
          eps_,
          gram_,
          gram_restart_every_,
          stream())},
      {ax}};
}

} // namespace fastmuon
