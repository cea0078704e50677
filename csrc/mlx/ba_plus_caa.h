// fastmuon/csrc/mlx/ba_plus_caa.h: the `BaPlusCaa` MLX primitive,
// A -> alpha A A + beta A for symmetric A over the last two axes, and the
// `ba_plus_caa` op that builds it.
#pragma once

#include <utility>
#include <vector>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace fastmuon {

namespace mx = mlx::core;

// alpha * a @ a + beta * a for symmetric (..., m, m) matrices a: the step
// polynomial's B = b A + c A A with alpha = c, beta = b. Only the upper
// triangle of each matrix is read; the result is exactly symmetric.
//
// Requires ndim >= 2, square trailing axes and a float32, float16 or bfloat16
// dtype. 16-bit inputs are computed in float32 and rounded back once at the
// end. Throws std::invalid_argument (ValueError in Python) for bad input.
// alpha and beta are rounded to float32.
mx::array ba_plus_caa(const mx::array& a, double alpha, double beta,
                      mx::StreamOrDevice s = {});

// Primitive on float32 data on the CPU, on the input's dtype on a GPU stream
// (Metal kernels, float32 accumulation); input and output (..., m, m).
class BaPlusCaa : public mx::UnaryPrimitive {
 public:
  BaPlusCaa(mx::Stream stream, float alpha, float beta)
      : mx::UnaryPrimitive(stream), alpha_(alpha), beta_(beta) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

  // Derivatives of the map A -> alpha A A + beta A (for a general A).
  std::vector<mx::array> jvp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;

  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs,
      const std::vector<int>& axes) override;

  const char* name() const override {
    return "BaPlusCaa";
  }

  bool is_equivalent(const mx::Primitive& other) const override;

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;

  float alpha() const { return alpha_; }
  float beta() const { return beta_; }

 private:
  float alpha_;
  float beta_;
};

} // namespace fastmuon
