// fastmuon/csrc/mlx/orthogonalize.h: the `Orthogonalize` MLX primitive, the
// whole polynomial iteration (normalize, then the plan's steps) of every
// matrix over the last two axes, and the `orthogonalize` op that builds it.
#pragma once

#include "common.h"
#include "iteration.h"

namespace fastmuon {

// Orthogonalize every matrix of x (..., rows, cols): X / (||X||_F *
// norm_scale + eps), then one odd quintic a X + b (X X^T) X + c (X X^T)^2 X
// per (a, b, c) of the plan's coefficients, by fastmuon::iterate
// (iteration.h; the Gram-space iteration when plan.gram). Computed in float32
// by fastmuon::cpu::orthogonalize_f32; 16-bit inputs are upcast and the result
// rounded back once. Returns x's shape and dtype.
//
// Throws std::invalid_argument (ValueError in Python) for ndim < 2, a
// non-floating or float64 dtype, or an invalid plan (check_plan).
mx::array orthogonalize(const mx::array& x, OrthogonalizePlan plan,
                        mx::StreamOrDevice s = {});

// Primitive on float32 data on the CPU; on a GPU stream on the input's dtype,
// iterating on float32 working matrices with fastmuon.metallib's kernels
// (see eval_gpu); input and output (..., rows, cols).
// Not differentiable (the iteration is used as an optimizer update).
class Orthogonalize : public ParamPrimitive<OrthogonalizePlan> {
 public:
  using ParamPrimitive::ParamPrimitive;
  FASTMUON_PRIMITIVE_OVERRIDES("Orthogonalize")
};

} // namespace fastmuon
