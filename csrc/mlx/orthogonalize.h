// fastmuon/csrc/mlx/orthogonalize.h: the `Orthogonalize` MLX primitive, the
// whole polynomial iteration (normalize, then the plan's steps) of every
// matrix over the last two axes, and the `orthogonalize` op that builds it.
#pragma once

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace fastmuon {

namespace mx = mlx::core;

using Coefficients = std::vector<std::array<double, 3>>;

// Orthogonalize every matrix of x (..., rows, cols): X / (||X||_F *
// norm_scale + eps), then one odd quintic a X + b (X X^T) X + c (X X^T)^2 X
// per (a, b, c) of `coefficients`, in the operation order of
// python/fastmuon/_iteration.py (the Gram-space iteration when `gram`,
// restarting after every `gram_restart_every`-th step). Computed in float32
// by fastmuon::cpu::orthogonalize_f32; 16-bit inputs are upcast and the result
// rounded back once. Returns x's shape and dtype.
//
// Throws std::invalid_argument (ValueError in Python) for ndim < 2, a
// non-floating or float64 dtype, no or non-finite coefficients, norm_scale
// <= 0, eps < 0 (or non-finite), or gram_restart_every < 1 with gram.
mx::array orthogonalize(
    const mx::array& x,
    const Coefficients& coefficients,
    double norm_scale,
    double eps,
    bool gram,
    int64_t gram_restart_every,
    mx::StreamOrDevice s = {});

// Primitive on float32 data on the CPU; on a GPU stream on the input's dtype,
// iterating on float32 working matrices with fastmuon.metallib's kernels
// (see eval_gpu); input and output (..., rows, cols).
// Not differentiable (the iteration is used as an optimizer update).
class Orthogonalize : public mx::UnaryPrimitive {
 public:
  Orthogonalize(
      mx::Stream stream,
      Coefficients coefficients,
      double norm_scale,
      double eps,
      bool gram,
      int64_t gram_restart_every)
      : mx::UnaryPrimitive(stream),
        coefficients_(std::move(coefficients)),
        norm_scale_(norm_scale),
        eps_(eps),
        gram_(gram),
        gram_restart_every_(gram_restart_every) {}

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
    return "Orthogonalize";
  }

  bool is_equivalent(const mx::Primitive& other) const override;

  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;

 private:
  Coefficients coefficients_;
  double norm_scale_;
  double eps_;
  bool gram_;
  int64_t gram_restart_every_;
};

} // namespace fastmuon
