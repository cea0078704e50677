// fastmuon/csrc/mlx/muon_step.cpp: see muon_step.h.
#include "muon_step.h"

#include <cmath>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "../muon_step.h"
#include "cpu_kernels.h"

namespace fastmuon {

namespace {

constexpr const char* kOp = "muon_step";

[[noreturn]] void bad_argument(const std::string& what) {
  throw std::invalid_argument(std::string("[fastmuon.") + kOp + "] " + what);
}

void check_float32(const mx::array& x, const std::string& name) {
  if (x.dtype() != mx::float32) {
    std::ostringstream os;
    os << name << " must be float32, got " << x.dtype();
    bad_argument(os.str());
  }
}

// A parameter's arrays: all float32 or all bfloat16.
void check_parameter_dtype(const mx::array& g, const mx::array& m,
                           const mx::array& w, const std::string& at) {
  const mx::Dtype d = w.dtype();
  if ((d != mx::float32 && d != mx::bfloat16) || g.dtype() != d ||
      m.dtype() != d) {
    std::ostringstream os;
    os << "grads" << at << ", momenta" << at << " and weights" << at
       << " must be all float32 or all bfloat16, got " << g.dtype() << ", "
       << m.dtype() << " and " << d;
    bad_argument(os.str());
  }
}

} // namespace

std::vector<mx::array> muon_step(const mx::array& lr,
                                 const std::vector<mx::array>& grads,
                                 const std::vector<mx::array>& momenta,
                                 const std::vector<mx::array>& weights,
                                 const std::vector<mx::array>& skipped,
                                 MuonStepParams params,
                                 mx::StreamOrDevice s) {
  const mx::Stream stream = detail::cpu_stream(s, kOp);
  const size_t count = grads.size();
  if (momenta.size() != count || weights.size() != count ||
      skipped.size() != count || params.views.size() != count ||
      params.scales.size() != count) {
    bad_argument("momenta, weights, skipped, views and scales must have one "
                 "entry per gradient (" + std::to_string(count) + ")");
  }
  if (lr.size() != 1) {
    bad_argument("lr must hold one value, got shape " +
                 detail::shape_str(lr.shape()));
  }
  check_float32(lr, "lr");
  check_plan(params.plan);
  if (params.workers < 1 || params.blas_threads < 0) {
    bad_argument("workers must be >= 1 and blas_threads >= 0, got " +
                 std::to_string(params.workers) + " and " +
                 std::to_string(params.blas_threads));
  }
  std::vector<mx::array> inputs{lr};
  for (size_t i = 0; i < count; ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    check_parameter_dtype(grads[i], momenta[i], weights[i], at);
    if (grads[i].shape() != weights[i].shape() ||
        momenta[i].shape() != weights[i].shape()) {
      bad_argument("grads" + at + " and momenta" + at +
                   " must have the shape of weights" + at + ", " +
                   detail::shape_str(weights[i].shape()));
    }
    if (skipped[i].dtype() != mx::int32 || skipped[i].size() != 1) {
      bad_argument("skipped" + at + " must be one int32 value");
    }
    const auto [batch, rows, cols] = params.views[i];
    if (batch < 0 || rows < 0 || cols < 0 ||
        batch * rows * cols != static_cast<int64_t>(weights[i].size())) {
      bad_argument("views" + at + " must be (batch, rows, cols) holding the " +
                   std::to_string(weights[i].size()) + " entries of weights" +
                   at);
    }
    inputs.insert(inputs.end(), {grads[i], momenta[i], weights[i], skipped[i]});
  }
  auto primitive = std::make_shared<MuonStep>(stream, std::move(params));
  std::vector<mx::Shape> shapes = primitive->output_shapes(inputs);
  std::vector<mx::Dtype> dtypes;
  for (const auto& w : weights) {
    dtypes.push_back(w.dtype());
  }
  for (const auto& m : momenta) {
    dtypes.push_back(m.dtype());
  }
  dtypes.resize(3 * count, mx::int32);
  return mx::array::make_arrays(std::move(shapes), dtypes, primitive, inputs);
}

std::vector<mx::Shape> MuonStep::output_shapes(
    const std::vector<mx::array>& inputs) {
  const size_t count = (inputs.size() - 1) / 4;
  std::vector<mx::Shape> shapes(3 * count);
  for (size_t i = 0; i < count; ++i) {
    shapes[i] = inputs[1 + 4 * i + 2].shape();          // weight
    shapes[count + i] = inputs[1 + 4 * i + 1].shape();  // momentum
    shapes[2 * count + i] = inputs[1 + 4 * i + 3].shape();  // skipped
  }
  return shapes;
}

void MuonStep::eval_cpu(const std::vector<mx::array>& inputs,
                        std::vector<mx::array>& outputs) {
  const size_t count = params_.views.size();
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& x : inputs) {
    encoder.set_input_array(x);
  }
  for (auto& out : outputs) {
    encoder.set_output_array(out);
  }
  // The weights and momenta are stepped in place in their outputs, which
  // take over the inputs' buffers where MLX allows it (prepare_inplace_output).
  std::vector<detail::InputCopy> fills;
  std::vector<const void*> grads(count);
  std::vector<std::vector<uint8_t>> packed(count);  // strided gradients, packed
  std::vector<void*> weights(count), momenta(count);
  std::vector<cpu::Storage> storage(count);
  std::vector<const int32_t*> skipped_in(count);
  std::vector<int32_t*> skipped_out(count);
  for (size_t i = 0; i < count; ++i) {
    const mx::array& g = inputs[1 + 4 * i];
    storage[i] = g.dtype() == mx::bfloat16 ? cpu::Storage::bfloat16
                                           : cpu::Storage::float32;
    fills.push_back(detail::prepare_inplace_output(inputs[3 + 4 * i], outputs[i]));
    fills.push_back(
        detail::prepare_inplace_output(inputs[2 + 4 * i], outputs[count + i]));
    weights[i] = outputs[i].data<void>();
    momenta[i] = outputs[count + i].data<void>();
    if (detail::dense_row_major(g) || g.size() == 0) {
      grads[i] = g.data<void>();
    } else {
      packed[i].resize(g.nbytes());
      grads[i] = packed[i].data();
      fills.push_back(detail::packing_copy(g, packed[i].data()));
    }
    mx::array& s_out = outputs[2 * count + i];
    s_out.set_data(mx::allocator::malloc(s_out.nbytes()));
    skipped_in[i] = inputs[4 + 4 * i].data<int32_t>();
    skipped_out[i] = s_out.data<int32_t>();
  }
  encoder.dispatch([p = params_, lr_ptr = inputs[0].data<float>(),
                    fills = std::move(fills), packed = std::move(packed),
                    grads = std::move(grads), weights = std::move(weights),
                    momenta = std::move(momenta), storage = std::move(storage),
                    skipped_in = std::move(skipped_in),
                    skipped_out = std::move(skipped_out)]() {
    for (const auto& fill : fills) {
      fill();
    }
    const size_t n = p.views.size();
    // The learning rate's products in float32, as fastmuon.mlx forms them
    // from its float32 lr and Python floats.
    const float lr = *lr_ptr;
    const float wd = static_cast<float>(p.weight_decay);
    const auto rule = p.weight_decay == 0.0
        ? cpu::WeightDecay::none
        : (p.cautious ? cpu::WeightDecay::cautious : cpu::WeightDecay::decoupled);
    std::vector<cpu::MlxMuonParam> steps;
    for (size_t i = 0; i < n; ++i) {
      const auto [batch, rows, cols] = p.views[i];
      steps.push_back({grads[i], momenta[i], weights[i], storage[i], batch,
                       rows, cols,
                       static_cast<float>(p.momentum),
                       static_cast<float>(1.0 - p.momentum), p.nesterov, rule,
                       1.0f - lr * wd, lr * wd,
                       lr * static_cast<float>(p.scales[i])});
    }
    std::unique_ptr<bool[]> stepped(new bool[n]());
    if (std::isfinite(lr)) {  // a non-finite lr skips every parameter
      if (p.blas_threads > 0) {
        cpu::set_blas_num_threads(p.blas_threads);
      }
      cpu::mlx_muon_step(steps, p.plan, p.workers, stepped.get());
    }
    for (size_t i = 0; i < n; ++i) {
      *skipped_out[i] = *skipped_in[i] + (stepped[i] ? 0 : 1);
    }
  });
}

namespace {

[[noreturn]] void throw_not_transformable(const char* transform) {
  throw std::runtime_error(
      std::string("[fastmuon.muon_step] has no ") + transform +
      ": it is an optimizer update. Transform the optimizer's reference "
      "path (fastmuon.mlx's Muon with impl=\"per_parameter\") instead.");
}

} // namespace

std::vector<mx::array> MuonStep::jvp(const std::vector<mx::array>&,
                                     const std::vector<mx::array>&,
                                     const std::vector<int>&) {
  throw_not_transformable("jvp");
}

std::vector<mx::array> MuonStep::vjp(const std::vector<mx::array>&,
                                     const std::vector<mx::array>&,
                                     const std::vector<int>&,
                                     const std::vector<mx::array>&) {
  throw_not_transformable("vjp");
}

std::pair<std::vector<mx::array>, std::vector<int>> MuonStep::vmap(
    const std::vector<mx::array>&, const std::vector<int>&) {
  throw_not_transformable("vmap");
}

} // namespace fastmuon
