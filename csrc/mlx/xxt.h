// fastmuon/csrc/mlx/xxt.h: the `Xxt` MLX primitive, X -> X X^T over the last
// two axes, and the `xxt` op that builds it.
#pragma once

#include <variant>

#include "common.h"

namespace fastmuon {

// Gram matrix of the last two axes: (..., m, k) -> (..., m, m), out = x x^T.
//
// Requires ndim >= 2 and a floating dtype (float16, bfloat16, float32).
// 16-bit inputs are computed in float32 and rounded back once at the end.
// Throws std::invalid_argument (ValueError in Python) for bad input.
mx::array xxt(const mx::array& x, mx::StreamOrDevice s = {});

// Primitive on float32 data, on the CPU (no GPU kernel: the op refuses GPU
// streams, see detail::cpu_stream). Input (..., m, k), output
// (..., m, m), both triangles written and exactly symmetric. No parameters:
// any two instances compute the same function.
class Xxt : public ParamPrimitive<std::monostate> {
 public:
  using ParamPrimitive::ParamPrimitive;
  FASTMUON_PRIMITIVE_OVERRIDES("Xxt")
};

} // namespace fastmuon
