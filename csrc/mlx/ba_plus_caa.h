// fastmuon/csrc/mlx/ba_plus_caa.h: the `BaPlusCaa` MLX primitive,
// A -> alpha A A + beta A for symmetric A over the last two axes, and the
// `ba_plus_caa` op that builds it.
#pragma once

#include "common.h"

namespace fastmuon {

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

struct BaPlusCaaParams {
  float alpha;
  float beta;

  bool operator==(const BaPlusCaaParams&) const = default;
};

// Primitive on float32 data, on the CPU (no GPU kernel: the op refuses GPU
// streams, see detail::cpu_stream); input and output (..., m, m). Its
// derivatives are those of the map A -> alpha A A + beta A (for a general A).
class BaPlusCaa : public ParamPrimitive<BaPlusCaaParams> {
 public:
  using ParamPrimitive::ParamPrimitive;
  FASTMUON_PRIMITIVE_OVERRIDES("BaPlusCaa")
};

} // namespace fastmuon
