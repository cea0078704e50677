// fastmuon/csrc/muon_step.cpp: see muon_step.h.
#include "muon_step.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu_kernels.h"

namespace fastmuon::cpu {

namespace {

// out = torch.lerp(start, end, weight) (ATen's Lerp.h): start + weight (end -
// start) for a small weight, end - (1 - weight) (end - start) otherwise, each
// one fused multiply-add, as torch's CPU kernels compute it. The branch on
// the weight is taken once, outside the loop, so that the loop vectorizes.
// Compiled for FMA units where the CPU has them (x86: chosen at load time;
// without them std::fma is glibc's exact software version).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__APPLE__)
#define FASTMUON_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define FASTMUON_FMA_CLONES
#endif

FASTMUON_FMA_CLONES
void torch_lerp(const float* start, const float* end, float weight, float* out,
                int64_t n) {
  if (std::fabs(weight) < 0.5f) {
    for (int64_t i = 0; i < n; ++i) {
      out[i] = std::fma(weight, end[i] - start[i], start[i]);
    }
  } else {
    const float w1 = weight - 1.0f;
    for (int64_t i = 0; i < n; ++i) {
      out[i] = std::fma(w1, end[i] - start[i], end[i]);
    }
  }
}

// The momentum (in place) and the tensor to orthogonalize (into u) of one
// matrix: n entries.
void momentum_and_lookahead(const MuonParam& p, const float* g, float* mom,
                            float* u, int64_t n) {
  torch_lerp(mom, g, p.momentum_weight, mom, n);
  if (p.nesterov) {
    torch_lerp(g, mom, p.lookahead_weight, u, n);
  } else {
    std::memcpy(u, mom, sizeof(float) * static_cast<size_t>(n));
  }
}

FASTMUON_FMA_CLONES
void apply_update(const MuonParam& p, const float* o, float* w, int64_t n) {
  const float decay = p.decay;
  const float step = p.step;
  if (p.decays) {
    for (int64_t i = 0; i < n; ++i) {
      w[i] = std::fma(o[i], step, w[i] * decay);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      w[i] = std::fma(o[i], step, w[i]);
    }
  }
}

// fastmuon.mlx's momentum (functional.muon_momentum): fresh = (1 - beta) G,
// M <- beta M + fresh, U = fresh + beta M (Nesterov) or M. Each product and
// sum is its own statement, rounded on its own as MLX's eager ops round them
// (muon_step.cpp is compiled without floating-point contraction).
void mlx_momentum(const MlxMuonParam& p, const float* g, float* mom, float* u,
                  int64_t n) {
  const float beta = p.beta;
  const float fresh_weight = p.fresh_weight;
  for (int64_t i = 0; i < n; ++i) {
    const float fresh = fresh_weight * g[i];
    const float kept = beta * mom[i];
    const float m = kept + fresh;
    mom[i] = m;
    if (p.nesterov) {
      const float ahead = beta * m;
      u[i] = fresh + ahead;
    } else {
      u[i] = m;
    }
  }
}

// fastmuon.mlx's update (functional.decoupled_update) of n weights by the
// orthogonalized o, in the same order of operations.
void mlx_update(const MlxMuonParam& p, const float* o, float* w, int64_t n) {
  const float step = p.step;
  switch (p.decay_rule) {
    case WeightDecay::none:
      for (int64_t i = 0; i < n; ++i) {
        const float moved = step * o[i];
        w[i] = w[i] - moved;
      }
      break;
    case WeightDecay::decoupled:
      for (int64_t i = 0; i < n; ++i) {
        const float moved = step * o[i];
        const float decayed = w[i] * p.decay;
        w[i] = decayed - moved;
      }
      break;
    case WeightDecay::cautious:
      for (int64_t i = 0; i < n; ++i) {
        const float moved = step * o[i];
        const float agree = o[i] * w[i];
        const float shrink = p.lr_wd * (agree >= 0.0f ? w[i] : 0.0f);
        const float decayed = w[i] - shrink;
        w[i] = decayed - moved;
      }
      break;
  }
}

// The checks both steps make before anything runs; `op` names the step.
template <class Param>
void check_step(const std::vector<Param>& params, const OrthogonalizePlan& plan,
                int workers, const char* op) {
  check_plan(plan);
  if (workers < 1) {
    throw std::invalid_argument(std::string("[fastmuon.") + op +
                                "] workers must be >= 1, got " +
                                std::to_string(workers));
  }
  for (const auto& p : params) {
    if (p.batch < 0 || p.rows < 0 || p.cols < 0) {
      throw std::invalid_argument(
          std::string("[fastmuon.") + op +
          "] a parameter's batch, rows and cols must be non-negative, got (" +
          std::to_string(p.batch) + ", " + std::to_string(p.rows) + ", " +
          std::to_string(p.cols) + ")");
    }
  }
}

// Every matrix of the parameters with run[i]: momentum(p, offset, u) writes
// the matrix at `offset` of parameter p to orthogonalize into u, and
// update(p, offset, o) applies its orthogonalization o.
template <class Param, class Momentum, class Update>
void step_matrices(const std::vector<Param>& params,
                   const std::vector<bool>& run, const OrthogonalizePlan& plan,
                   int workers, const char* op, const Momentum& momentum,
                   const Update& update) {
  std::vector<MatrixShape> shapes;
  std::vector<std::pair<const Param*, int64_t>> where;  // parameter, offset
  for (size_t i = 0; i < params.size(); ++i) {
    const Param& p = params[i];
    const int64_t size = p.rows * p.cols;
    for (int64_t b = 0; run[i] && size > 0 && b < p.batch; ++b) {
      shapes.push_back({p.rows, p.cols});
      where.emplace_back(&p, b * size);
    }
  }
  orthogonalize_each_f32(
      shapes, plan, workers,
      [&](size_t i, float* u) { momentum(*where[i].first, where[i].second, u); },
      [&](size_t i, float* o) { update(*where[i].first, where[i].second, o); },
      op);
}

} // namespace

bool all_finite(const float* x, int64_t n) {
  uint32_t bad = 0;  // an exponent of all ones is NaN or Inf
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

bool muon_step_f32(const std::vector<MuonParam>& params,
                   const OrthogonalizePlan& plan, int workers) {
  check_step(params, plan, workers, "muon_step");
  for (const auto& p : params) {  // before anything is written
    if (!all_finite(p.grad, p.batch * p.rows * p.cols)) {
      return false;
    }
  }
  step_matrices(
      params, std::vector<bool>(params.size(), true), plan, workers,
      "muon_step",
      [](const MuonParam& p, int64_t offset, float* u) {
        momentum_and_lookahead(p, p.grad + offset, p.momentum + offset, u,
                               p.rows * p.cols);
      },
      [](const MuonParam& p, int64_t offset, const float* o) {
        apply_update(p, o, p.weight + offset, p.rows * p.cols);
      });
  return true;
}

void mlx_muon_step_f32(const std::vector<MlxMuonParam>& params,
                       const OrthogonalizePlan& plan, int workers,
                       bool* stepped) {
  check_step(params, plan, workers, "muon_step");
  std::vector<bool> run(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    run[i] = all_finite(p.grad, p.batch * p.rows * p.cols);
    stepped[i] = run[i];
  }
  step_matrices(
      params, run, plan, workers, "muon_step",
      [](const MlxMuonParam& p, int64_t offset, float* u) {
        mlx_momentum(p, p.grad + offset, p.momentum + offset, u,
                     p.rows * p.cols);
      },
      [](const MlxMuonParam& p, int64_t offset, const float* o) {
        mlx_update(p, o, p.weight + offset, p.rows * p.cols);
      });
}

} // namespace fastmuon::cpu
