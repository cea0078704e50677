// fastmuon/csrc/mlx/ba_plus_caa.cpp: see ba_plus_caa.h.
#include "ba_plus_caa.h"

#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu_kernels.h"

namespace fastmuon {

mx::array ba_plus_caa(const mx::array& a, double alpha, double beta,
                      mx::StreamOrDevice s) {
  detail::check_input(a, "ba_plus_caa",
                      a.ndim() >= 2 && a.shape(-1) == a.shape(-2),
                      "a batch of square matrices (..., m, m)");
  const BaPlusCaaParams params{
      static_cast<float>(alpha), static_cast<float>(beta)};
  return detail::make_op<BaPlusCaa>("ba_plus_caa", a, a.shape(), params, s);
}

std::vector<mx::Shape> BaPlusCaa::output_shapes(
    const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

void BaPlusCaa::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  detail::eval_cpu_in_place(
      "BaPlusCaa", stream(), inputs[0], out,
      [p = params_](float* a, int64_t batch, int64_t m, int64_t) {
        cpu::ba_plus_caa_f32(a, a, batch, m, p.alpha, p.beta);
      });
}

// d(alpha A A + beta A) = alpha (T A + A T) + beta T. The vjp has the same
// form: dL/dA = alpha (G A^T + A^T G) + beta G.
namespace {

mx::array alpha_sym_plus_beta(const BaPlusCaaParams& p, const mx::array& a,
                              const mx::array& t, const mx::Stream& s) {
  auto prod = mx::add(mx::matmul(t, a, s), mx::matmul(a, t, s), s);
  return mx::add(mx::multiply(mx::array(p.alpha), prod, s),
                 mx::multiply(mx::array(p.beta), t, s), s);
}

} // namespace

std::vector<mx::array> BaPlusCaa::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>&) {
  return {alpha_sym_plus_beta(params_, primals[0], tangents[0], stream())};
}

std::vector<mx::array> BaPlusCaa::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  const auto at = mx::swapaxes(primals[0], -1, -2, stream());
  return {alpha_sym_plus_beta(params_, at, cotangents[0], stream())};
}

std::pair<std::vector<mx::array>, std::vector<int>> BaPlusCaa::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto a = inputs[0];
  const int axis = detail::move_mapped_axis_to_front(a, axes[0], stream());
  return {{ba_plus_caa(a, params_.alpha, params_.beta, stream())}, {axis}};
}

} // namespace fastmuon
