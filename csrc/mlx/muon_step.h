// fastmuon/csrc/mlx/muon_step.h: the `MuonStep` MLX primitive, fastmuon.mlx's
// whole Muon step on float32 or bfloat16 parameters in one node (finiteness check, momentum,
// orthogonalization, update), and the `muon_step` op that builds it.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "common.h"
#include "iteration.h"

namespace fastmuon {

// The step's parameters: the iteration, the optimizer's hyperparameters (the
// learning rate is an input array, so that schedules and mx.compile work),
// each parameter's matrix view and shape scale, and the CPU threads.
struct MuonStepParams {
  OrthogonalizePlan plan;
  double momentum = 0.95;
  bool nesterov = true;
  double weight_decay = 0.0;
  bool cautious = false;
  std::vector<std::array<int64_t, 3>> views;  // (batch, rows, cols) each
  std::vector<double> scales;                 // lr multiplier each
  int workers = 1;
  int blas_threads = 0;

  bool operator==(const MuonStepParams&) const = default;
};

// One Muon step of every parameter i, in fastmuon.mlx's arithmetic
// (cpu::mlx_muon_step): with lr the 0-D float32 learning rate, a
// parameter whose gradient and lr are finite gets
//   M' = beta M + (1 - beta) G, U = (1 - beta) G + beta M' (or M'),
//   W' = W (1 - lr wd) - lr scale orthogonalize(U)  (cautious: decay where
//        O W >= 0; no decay term when wd == 0),
// and skipped' = skipped; any other is left as it was with
// skipped' = skipped + 1. grads, momenta and weights are arrays of one shape
// per parameter (any layout), all float32 or all bfloat16, skipped 0-D int32
// arrays. Returns
// the new weights, then the new momenta, then the new skipped counts.
// Throws std::invalid_argument (ValueError in Python), naming the argument,
// for mismatched lists, shapes or dtypes, a view that does not hold the
// parameter, an invalid plan, workers < 1 or blas_threads < 0.
std::vector<mx::array> muon_step(const mx::array& lr,
                                 const std::vector<mx::array>& grads,
                                 const std::vector<mx::array>& momenta,
                                 const std::vector<mx::array>& weights,
                                 const std::vector<mx::array>& skipped,
                                 MuonStepParams params,
                                 mx::StreamOrDevice s = {});

// Primitive on the CPU: inputs lr, then (G, M, W, skipped) per parameter;
// outputs the weights, the momenta, the skipped counts. Not differentiable
// and not vmap-able (an optimizer update).
class MuonStep : public mx::Primitive {
 public:
  MuonStep(mx::Stream stream, MuonStepParams params)
      : mx::Primitive(stream), params_(std::move(params)) {}

  void eval_cpu(const std::vector<mx::array>& inputs,
                std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&,
                std::vector<mx::array>&) override {
    detail::throw_cpu_only("MuonStep");
  }
  std::vector<mx::array> jvp(const std::vector<mx::array>&,
                             const std::vector<mx::array>&,
                             const std::vector<int>&) override;
  std::vector<mx::array> vjp(const std::vector<mx::array>&,
                             const std::vector<mx::array>&,
                             const std::vector<int>&,
                             const std::vector<mx::array>&) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>&, const std::vector<int>&) override;
  std::vector<mx::Shape> output_shapes(
      const std::vector<mx::array>& inputs) override;
  const char* name() const override {
    return "MuonStep";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    return params_ == static_cast<const MuonStep&>(other).params_;
  }

 private:
  MuonStepParams params_;
};

} // namespace fastmuon
