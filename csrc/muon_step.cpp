// fastmuon/csrc/muon_step.cpp: see muon_step.h.
#include "muon_step.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
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

// An MLX array's storage type: float32 as is, bfloat16 as its bits.
struct BFloat16 {
  uint16_t bits;
};

inline float widen(float x) {
  return x;
}

inline float widen(BFloat16 x) {
  return from_bfloat16(x.bits);
}

template <class T>
T narrow(float x);

template <>
inline float narrow<float>(float x) {
  return x;
}

template <>
inline BFloat16 narrow<BFloat16>(float x) {
  return {to_bfloat16(x)};
}

// x rounded to T and widened back: the result of one MLX op in T.
template <class T>
inline float in(float x) {
  return widen(narrow<T>(x));
}

// fastmuon.mlx's momentum (functional.muon_momentum) in T: fresh = (1 - beta)
// G, M <- beta M + fresh, U = fresh + beta M (Nesterov) or M, each product and
// sum its own statement rounded to T (muon_step.cpp is compiled without
// floating-point contraction); the scalars are rounded to T as MLX rounds a
// Python float for an array of T. u is float32 (the orthogonalization's).
template <class T>
void mlx_momentum(const MlxMuonParam& p, const T* g, T* mom, float* u,
                  int64_t n) {
  const float beta = in<T>(p.beta);
  const float fresh_weight = in<T>(p.fresh_weight);
  for (int64_t i = 0; i < n; ++i) {
    const float fresh = in<T>(fresh_weight * widen(g[i]));
    const float kept = in<T>(beta * widen(mom[i]));
    const float m = in<T>(kept + fresh);
    mom[i] = narrow<T>(m);
    if (p.nesterov) {
      const float ahead = in<T>(beta * m);
      u[i] = in<T>(fresh + ahead);
    } else {
      u[i] = m;
    }
  }
}

// fastmuon.mlx's update (functional.decoupled_update) of n weights of T by
// the orthogonalized o, in float32 (the optimizer's work dtype), o first
// rounded to T as the orthogonalization returns it in U's dtype, the new
// weight rounded to T once.
template <class T>
void mlx_update(const MlxMuonParam& p, const float* o, T* w, int64_t n) {
  const float step = p.step;
  for (int64_t i = 0; i < n; ++i) {
    const float oi = in<T>(o[i]);
    const float wi = widen(w[i]);
    const float moved = step * oi;
    float next = 0.0f;
    switch (p.decay_rule) {
      case WeightDecay::none:
        next = wi - moved;
        break;
      case WeightDecay::decoupled: {
        const float decayed = wi * p.decay;
        next = decayed - moved;
        break;
      }
      case WeightDecay::cautious: {
        const float agree = oi * wi;
        const float shrink = p.lr_wd * (agree >= 0.0f ? wi : 0.0f);
        const float decayed = wi - shrink;
        next = decayed - moved;
        break;
      }
    }
    w[i] = narrow<T>(next);
  }
}

template <class T>
bool mlx_all_finite(const MlxMuonParam& p) {
  const int64_t n = p.batch * p.rows * p.cols;
  if constexpr (std::is_same_v<T, float>) {
    return all_finite(static_cast<const float*>(p.grad), n);
  } else {
    const auto* g = static_cast<const BFloat16*>(p.grad);
    uint32_t bad = 0;  // an exponent of all ones is NaN or Inf
    for (int64_t i = 0; i < n; ++i) {
      bad |= static_cast<uint32_t>((g[i].bits & 0x7f80u) == 0x7f80u);
    }
    return bad == 0;
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

uint16_t to_bfloat16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x40u);  // a quiet NaN
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float from_bfloat16(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float x;
  std::memcpy(&x, &wide, sizeof x);
  return x;
}

void mlx_muon_step(const std::vector<MlxMuonParam>& params,
                   const OrthogonalizePlan& plan, int workers, bool* stepped) {
  check_step(params, plan, workers, "muon_step");
  std::vector<bool> run(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    run[i] = p.storage == Storage::float32 ? mlx_all_finite<float>(p)
                                           : mlx_all_finite<BFloat16>(p);
    stepped[i] = run[i];
  }
  step_matrices(
      params, run, plan, workers, "muon_step",
      [](const MlxMuonParam& p, int64_t offset, float* u) {
        const int64_t n = p.rows * p.cols;
        if (p.storage == Storage::float32) {
          mlx_momentum(p, static_cast<const float*>(p.grad) + offset,
                       static_cast<float*>(p.momentum) + offset, u, n);
        } else {
          mlx_momentum(p, static_cast<const BFloat16*>(p.grad) + offset,
                       static_cast<BFloat16*>(p.momentum) + offset, u, n);
        }
      },
      [](const MlxMuonParam& p, int64_t offset, const float* o) {
        const int64_t n = p.rows * p.cols;
        if (p.storage == Storage::float32) {
          mlx_update(p, o, static_cast<float*>(p.weight) + offset, n);
        } else {
          mlx_update(p, o, static_cast<BFloat16*>(p.weight) + offset, n);
        }
      });
}

} // namespace fastmuon::cpu
