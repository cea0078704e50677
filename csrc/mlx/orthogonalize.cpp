// fastmuon/csrc/mlx/orthogonalize.cpp: see orthogonalize.h.
#include "orthogonalize.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "cpu_kernels.h"
#include "metal_dispatch.h"

namespace fastmuon {

mx::array orthogonalize(const mx::array& x, OrthogonalizeParams params,
                        mx::StreamOrDevice s) {
  detail::check_input(x, "orthogonalize", x.ndim() >= 2,
                      "an array with at least 2 dimensions (..., rows, cols)");
  // Checked when the graph is built: the kernel's own checks would only fire
  // inside the dispatched task, far from the call that caused them.
  check_plan(params.plan);
  if (params.workers < 1 || params.blas_threads < 0) {
    throw std::invalid_argument(
        "[fastmuon.orthogonalize] workers must be >= 1 and blas_threads >= 0, "
        "got " + std::to_string(params.workers) + " and " +
        std::to_string(params.blas_threads));
  }
  return detail::make_op<Orthogonalize>(x, x.shape(), std::move(params), s);
}

std::vector<mx::Shape> Orthogonalize::output_shapes(
    const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

void Orthogonalize::eval_cpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  // The task owns its copy of the parameters: it may outlive this call.
  detail::eval_cpu_in_place(
      "Orthogonalize", stream(), inputs[0], out,
      [p = params_](float* x, int64_t batch, int64_t rows, int64_t cols) {
        if (p.blas_threads > 0) {
          cpu::set_blas_num_threads(p.blas_threads);
        }
        cpu::orthogonalize_f32(x, batch, rows, cols, p.plan, p.workers);
      });
}

#ifdef _METAL_
// fastmuon::iterate (as on the CPU) on fastmuon.metallib kernels, on float32
// working matrices in the wide orientation (m x n, m <= n): the norm
// (fastmuon_sumsq, float32 accumulation), the normalized and, for tall
// inputs, transposed copy (fastmuon_load_wide, any input layout), the
// iteration's products (gpu::Launcher) and the rounded, transposed-back
// result (fastmuon_store_wide).
void Orthogonalize::eval_gpu(
    const std::vector<mx::array>& inputs,
    mx::array& out) {
  const auto& x = inputs[0];
  gpu::Launcher launch(stream());
  if (!launch.allocate(out)) {
    return;
  }
  const auto b = static_cast<mx::ShapeElem>(detail::matrix_batch(x));
  const auto m = std::min(x.shape(-2), x.shape(-1));
  const auto n = std::max(x.shape(-2), x.shape(-1));

  mx::array sumsq = launch.temporary({b}, mx::float32);
  launch.sumsq(x, sumsq);
  mx::array X = launch.temporary({b, m, n}, mx::float32);
  mx::array X2 = launch.temporary({b, m, n}, mx::float32);
  const auto& plan = params_.plan;
  launch.load_wide(x, sumsq, X, static_cast<float>(plan.norm_scale),
                   static_cast<float>(plan.eps));
  std::vector<mx::array> squares;
  for (int i = 0; i < square_buffers(plan); ++i) {
    squares.push_back(launch.temporary({b, m, m}, mx::float32));
  }
  iterate(launch, plan, X, X2, squares);
  launch.store_wide(X, out);
}
#else
void Orthogonalize::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  detail::throw_no_gpu("orthogonalize");
}
#endif

namespace {

[[noreturn]] void throw_not_differentiable(const char* transform) {
  throw std::runtime_error(
      std::string("[fastmuon.orthogonalize] is not differentiable (no ") +
      transform +
      "); it is meant for optimizer updates. Differentiate a reference "
      "implementation instead.");
}

} // namespace

std::vector<mx::array> Orthogonalize::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  throw_not_differentiable("jvp");
}

std::vector<mx::array> Orthogonalize::vjp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  throw_not_differentiable("vjp");
}

std::pair<std::vector<mx::array>, std::vector<int>> Orthogonalize::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto x = inputs[0];
  const int axis = detail::move_mapped_axis_to_front(x, axes[0], stream());
  return {{orthogonalize(x, params_, stream())}, {axis}};
}

} // namespace fastmuon
