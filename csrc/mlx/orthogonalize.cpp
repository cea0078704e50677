// fastmuon/csrc/mlx/orthogonalize.cpp: see orthogonalize.h.
#include "orthogonalize.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "cpu_kernels.h"

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
  return detail::make_op<Orthogonalize>("orthogonalize", x, x.shape(),
                                        std::move(params), s);
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
