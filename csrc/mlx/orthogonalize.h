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
// The primitive's parameters: the iteration, and the CPU threads running it.
struct OrthogonalizeParams {
  OrthogonalizePlan plan;
  int workers = 1;       // threads sharing a batch (cpu::orthogonalize_f32)
  int blas_threads = 0;  // the BLAS's threads for the call; 0 leaves them be

  bool operator==(const OrthogonalizeParams&) const = default;
};

// Throws std::invalid_argument (ValueError in Python) for ndim < 2, a
// non-floating or float64 dtype, an invalid plan (check_plan), workers < 1
// or blas_threads < 0.
mx::array orthogonalize(const mx::array& x, OrthogonalizeParams params,
                        mx::StreamOrDevice s = {});

// Primitive on float32 data, on the CPU (no GPU kernel: the op refuses GPU
// streams, see detail::cpu_stream); input and output (..., rows, cols).
// Not differentiable (the iteration is used as an optimizer update).
class Orthogonalize : public ParamPrimitive<OrthogonalizeParams> {
 public:
  using ParamPrimitive::ParamPrimitive;
  FASTMUON_PRIMITIVE_OVERRIDES("Orthogonalize")
};

} // namespace fastmuon
