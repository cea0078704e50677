// fastmuon/csrc/iteration.h: the polynomial iteration of the C++ back-end,
// written once: the BLAS kernels (cpu_kernels.cpp) supply the few matrix
// operations below and run `iterate`. The order of operations is that of
// python/fastmuon/iteration.py, whose MatrixOps the operations mirror.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fastmuon {

// One polynomial iteration plan, as fastmuon.plan.Plan describes it.
struct OrthogonalizePlan {
  std::vector<std::array<double, 3>> coefficients;  // (a, b, c) per step
  double norm_scale = 1.0;         // X / (||X||_F * norm_scale + eps)
  double eps = 0.0;
  bool gram = false;               // iterate on the Gram matrix (gram_form)
  int64_t gram_restart_every = 1;  // recompute X and R every k-th step,
  int64_t gram_restarts = -1;      // at most this many times (-1: no limit)
  int64_t gram_min_rows = 0;       // smaller or squarer batches (m rows,
  int64_t gram_min_aspect = 1;     // n < aspect * m) take the standard form
  bool normalize = true;           // false: the input arrives normalized
  bool aol = false;                // AOL row scaling before the first step
  // Method "auto": a matrix that does not take the Gram form runs these
  // coefficients instead, normalized with standard_norm_scale, without AOL
  // (plan_for_shape). Empty: every matrix runs the plan itself.
  std::vector<std::array<double, 3>> standard_coefficients;
  double standard_norm_scale = 1.0;

  bool operator==(const OrthogonalizePlan&) const = default;
};

// Throws std::invalid_argument (ValueError in Python) for no steps,
// non-finite coefficients, norm_scale <= 0, eps < 0 (or either non-finite),
// gram_restart_every < 1 with gram, gram_restarts < -1, gram_min_rows < 0 or
// gram_min_aspect < 1. Both extensions check plans here, before
// any data is touched. The messages read "<field(name)> must ...", where
// `field` names a field for the caller (a std::string from a const char*).
template <class FieldName>
void check_plan(const OrthogonalizePlan& plan, const FieldName& field) {
  const auto fail = [&field](const char* name, const std::string& what) {
    throw std::invalid_argument(field(name) + " " + what);
  };
  if (plan.coefficients.empty()) {
    fail("coefficients", "must hold at least one (a, b, c) step, got 0");
  }
  const auto check_finite = [&fail](const char* name, const auto& rows) {
    for (size_t i = 0; i < rows.size(); ++i) {
      for (double v : rows[i]) {
        if (!std::isfinite(v)) {
          fail(name, "must be finite; step " + std::to_string(i) + " has " +
                         std::to_string(v));
        }
      }
    }
  };
  check_finite("coefficients", plan.coefficients);
  check_finite("standard_coefficients", plan.standard_coefficients);
  if (!(std::isfinite(plan.norm_scale) && plan.norm_scale > 0.0)) {
    fail("norm_scale", "must be finite and positive, got " +
                           std::to_string(plan.norm_scale));
  }
  if (!(std::isfinite(plan.standard_norm_scale) &&
        plan.standard_norm_scale > 0.0)) {
    fail("standard_norm_scale", "must be finite and positive, got " +
                                    std::to_string(plan.standard_norm_scale));
  }
  if (!(std::isfinite(plan.eps) && plan.eps >= 0.0)) {
    fail("eps", "must be finite and non-negative, got " +
                    std::to_string(plan.eps));
  }
  if (plan.gram && plan.gram_restart_every < 1) {
    fail("gram_restart_every",
         "must be >= 1, got " + std::to_string(plan.gram_restart_every));
  }
  if (plan.gram_restarts < -1) {
    fail("gram_restarts",
         "must be >= -1, got " + std::to_string(plan.gram_restarts));
  }
  if (plan.gram_min_rows < 0) {
    fail("gram_min_rows",
         "must be >= 0, got " + std::to_string(plan.gram_min_rows));
  }
  if (plan.gram_min_aspect < 1) {
    fail("gram_min_aspect",
         "must be >= 1, got " + std::to_string(plan.gram_min_aspect));
  }
}

// Whether a wide (m x n, m <= n) matrix iterates in Gram space
// (fastmuon.plan.Plan.gram_form).
inline bool gram_form(const OrthogonalizePlan& plan, int64_t m, int64_t n) {
  return plan.gram && m >= plan.gram_min_rows && n >= plan.gram_min_aspect * m;
}

// The plan a wide (m x n, m <= n) matrix runs (fastmuon.plan.Plan.for_shape):
// `plan` itself, or, where it has standard coefficients and the matrix does
// not take the Gram form, those in the standard form without AOL.
inline OrthogonalizePlan plan_for_shape(const OrthogonalizePlan& plan,
                                        int64_t m, int64_t n) {
  if (plan.standard_coefficients.empty() || gram_form(plan, m, n)) {
    return plan;
  }
  OrthogonalizePlan standard;
  standard.coefficients = plan.standard_coefficients;
  standard.norm_scale = plan.standard_norm_scale;
  standard.eps = plan.eps;
  standard.normalize = plan.normalize;
  return standard;
}

// check_plan with the fields named "[fastmuon.orthogonalize] <field>".
inline void check_plan(const OrthogonalizePlan& plan) {
  check_plan(plan, [](const char* name) {
    return std::string("[fastmuon.orthogonalize] ") + name;
  });
}

// Square (m x m) buffers `iterate` needs: A, B (standard) or R, Z, Q, RZ
// (gram).
inline int square_buffers(const OrthogonalizePlan& plan) {
  return plan.gram ? 4 : 2;
}

// `iterate` on a normalized wide matrix X (m x n, m <= n; a batch of them
// where the back-end batches), with Ops providing, on handles of type
// Ops::Wide (m x n) and Ops::Square (m x m), each `out` distinct from the
// operands:
//   xxt(X, out)                       out = X X^T
//   ba_plus_caa(A, out, alpha, beta)  out = alpha A A + beta A, A symmetric
//   addmm(C, A, B, out, alpha, beta)  out = alpha A B + beta C, for a Square A
//                                     and Wide B, C; or all Square, where A
//                                     and B are polynomials in one Gram matrix,
//                                     so A B is symmetric (the BLAS back-end
//                                     may form one triangle only)
//   matmul(A, B, out)                 out = A B, Square A, Wide B
//   add_identity(Z, out, a)           out = Z + a I
//   aol_scale(X, A)                   X <- D X, A <- D A D in place, for
//                                     A = X X^T and d_i = 1 / sqrt(sum_j |A_ij|)
// The iteration swaps handles, never data: on return `x` names the buffer
// that holds the result (the caller's x or x2). `squares` holds at least
// square_buffers(plan) buffers. m and n choose the form (gram_form).
template <class Ops>
void iterate(Ops& ops, const OrthogonalizePlan& plan, int64_t m, int64_t n,
             typename Ops::Wide& x, typename Ops::Wide& x2,
             std::span<typename Ops::Square> squares) {
  const auto coef = [&plan](size_t step, int i) {
    return static_cast<float>(plan.coefficients[step][i]);
  };
  const size_t steps = plan.coefficients.size();
  if (plan.aol) {
    // AOL (plan.aol): the scaled Gram matrix is the first step's A (or R).
    ops.xxt(x, squares[0]);
    ops.aol_scale(x, squares[0]);
  }
  if (!gram_form(plan, m, n)) {
    auto& A = squares[0];
    auto& B = squares[1];
    for (size_t step = 0; step < steps; ++step) {
      if (step > 0 || !plan.aol) {
        ops.xxt(x, A);
      }
      ops.ba_plus_caa(A, B, coef(step, 2), coef(step, 1));  // B = b A + c A A
      ops.addmm(x, B, x, x2, 1.0f, coef(step, 0));          // X <- a X + B X
      std::swap(x, x2);
    }
    return;
  }
  // Gram-space iteration (_gram_iterations in python/fastmuon/iteration.py):
  // X_k = Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T, so the steps run
  // on (m x m) matrices; X is touched at the start, at restarts and at the end.
  auto& R = squares[0];
  auto& Z = squares[1];
  auto& Q = squares[2];
  auto& RZ = squares[3];
  if (!plan.aol) {
    ops.xxt(x, R);
  }
  bool q_is_identity = true;  // Q = I is kept implicit until a step needs it
  int64_t restarts = 0;
  for (size_t step = 1; step <= steps; ++step) {
    const float a = coef(step - 1, 0);
    // Z = b R + c R R
    ops.ba_plus_caa(R, Z, coef(step - 1, 2), coef(step - 1, 1));
    if (q_is_identity) {
      ops.add_identity(Z, Q, a);  // Q = Z + a I
      q_is_identity = false;
    } else {
      // Q <- Q Z + a Q, formed in RZ (free until below)
      ops.addmm(Q, Q, Z, RZ, 1.0f, a);
      std::swap(Q, RZ);
    }
    if (step == steps) {
      break;
    }
    if (static_cast<int64_t>(step) % plan.gram_restart_every == 0 &&
        (plan.gram_restarts < 0 || restarts < plan.gram_restarts)) {
      ++restarts;
      // Restart: X <- Q X, R <- X X^T, Q <- I. Bounds the drift of R away
      // from X_k X_k^T (the Gram matrix squares the condition number). R is
      // formed afresh, so it is not updated first.
      ops.matmul(Q, x, x2);
      std::swap(x, x2);
      ops.xxt(x, R);
      q_is_identity = true;
      continue;
    }
    // RZ = R Z + a R, then R = Z RZ + a RZ = (a I + Z) R (a I + Z)
    ops.addmm(R, R, Z, RZ, 1.0f, a);
    ops.addmm(RZ, Z, RZ, R, 1.0f, a);
  }
  ops.matmul(Q, x, x2);  // the last step always leaves an explicit Q
  std::swap(x, x2);
}

} // namespace fastmuon
