// fastmuon/csrc/mlx/xxt.h: the `Xxt` MLX primitive, X -> X X^T over the last
// two axes, and the `xxt` op that builds it.
#pragma once

#include <utility>
#include <vector>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace fastmuon {

namespace mx = mlx::core;

// Gram matrix of the last two axes: (..., m, k) -> (..., m, m), out = x x^T.
//
// Requires ndim >= 2 and a floating dtype (float16, bfloat16, float32).
// 16-bit inputs are computed in float32 and rounded back once at the end.
// Throws std::invalid_argument (ValueError in Python) for bad input.
mx::array xxt(const mx::array& x, mx::StreamOrDevice s = {});

// Primitive on float32 data on the CPU, on the input's dtype on a GPU stream
// (Metal kernels, float32 accumulation). Input (..., m, k), output
// (..., m, m), both triangles written and exactly symmetric.
class Xxt : public mx::UnaryPrimitive {
 public:
  explicit Xxt(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;

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
    return "Xxt";
  }

  // Xxt has no parameters: any two instances compute the same function.
  bool is_equivalent(const mx::Primitive& /*other*/) const override {
    return true;
  }

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;
};

} // namespace fastmuon
