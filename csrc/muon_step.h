// fastmuon/csrc/muon_step.h: Muon's whole step on fp32 parameters (momentum,
// orthogonalization, update) in one call, in the arithmetic of each
// framework's eager ops, so that a fused step equals the framework's own
// step bitwise: torch's (MuonParam, muon_step_f32) for fastmuon._blas and
// fastmuon.mlx's (MlxMuonParam, mlx_muon_step_f32) for fastmuon._mlx_ext.
// Each matrix's momentum, orthogonalization and update run on one of
// `workers` threads (cpu_kernels.h: orthogonalize_each_f32).
#pragma once

#include <cstdint>
#include <vector>

#include "iteration.h"

namespace fastmuon::cpu {

// One fp32 Muon parameter for muon_step_f32: `batch` matrices of
// (rows, cols), C-contiguous, in its gradient, momentum and weight, and the
// hyperparameters of its group.
struct MuonParam {
  const float* grad;
  float* momentum;
  float* weight;
  int64_t batch, rows, cols;
  float momentum_weight;   // M <- lerp(M, G, momentum_weight): 1 - beta
  float lookahead_weight;  // U = lerp(G, M, lookahead_weight) with Nesterov
  bool nesterov;           // (else U = M)
  bool decays;             // W <- W * decay first
  float decay;             // 1 - lr * weight_decay
  float step;              // W <- W + step * orthogonalize(U): -lr * scale
};

// Muon's step on fp32 parameters, torch's arithmetic op for op (lerp and
// add with alpha as fused multiply-adds, the decay one multiply; see
// python/fastmuon/torch/functional.py), so the results are bitwise those of
// the torch ops. Returns false, having written nothing, when a gradient
// holds a NaN or an Inf (the caller then steps parameter by parameter).
bool muon_step_f32(const std::vector<MuonParam>& params,
                   const OrthogonalizePlan& plan, int workers = 1);

// How an MlxMuonParam's weight decays.
enum class WeightDecay { none, decoupled, cautious };

// How an MlxMuonParam's arrays are stored.
enum class Storage { float32, bfloat16 };

// One Muon parameter for mlx_muon_step: `batch` matrices of (rows, cols),
// C-contiguous, its gradient, momentum and weight all float32 or all
// bfloat16 (the bits), and its scalars as fastmuon.mlx rounds them: Python
// floats to the arrays' dtype, products with the float32 learning rate in
// float32.
struct MlxMuonParam {
  const void* grad;
  void* momentum;  // updated in place
  void* weight;    // updated in place
  Storage storage;
  int64_t batch, rows, cols;
  float beta;          // M <- beta M + fresh_weight G
  float fresh_weight;  // 1 - beta, rounded from the double
  bool nesterov;       // U = fresh_weight G + beta M (else U = M)
  WeightDecay decay_rule;
  float decay;  // decoupled: W <- W * decay - step O, decay = 1 - lr wd
  float lr_wd;  // cautious: W <- W - lr_wd [O W >= 0] W - step O
  float step;   // none: W <- W - step O; step = lr * scale
};

// Muon's step in fastmuon.mlx's arithmetic (python/fastmuon/mlx/functional.py:
// muon_momentum, decoupled_update, and the casts of optim/local.py), each
// multiply and add rounded on its own as MLX's eager ops round them: in the
// arrays' dtype for the momentum (a bfloat16 op computes in float32 and
// rounds), in float32 for the update of the weight, which is rounded back
// once; the orthogonalization runs in float32 and a bfloat16 parameter's
// result is rounded to bfloat16 before the update, as MLX's op returns it.
// Its policy for non-finite gradients: a parameter whose gradient holds a
// NaN or an Inf is left unwritten and stepped[i] set to false; the others
// are stepped and stepped[i] set to true. `stepped` has one entry per
// parameter.
void mlx_muon_step(const std::vector<MlxMuonParam>& params,
                   const OrthogonalizePlan& plan, int workers, bool* stepped);

// Float32 rounded to bfloat16 (to nearest, ties to even; a NaN stays a NaN),
// as MLX rounds, and back.
uint16_t to_bfloat16(float x);
float from_bfloat16(uint16_t bits);

// Whether all n entries are finite.
bool all_finite(const float* x, int64_t n);

} // namespace fastmuon::cpu
