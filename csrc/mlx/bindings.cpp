// fastmuon/csrc/mlx/bindings.cpp: the `fastmuon._mlx_ext` extension.
//
// Built in nanobind's `mlx` domain so that mlx.core.array / Stream / Device
// objects pass straight through. Import mlx.core before this module.
#include <nanobind/nanobind.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "ba_plus_caa.h"
#include "muon_step.h"
#include "orthogonalize.h"
#include "plan_args.h"
#include "xxt.h"

namespace nb = nanobind;
using namespace nb::literals;

// The `stream` argument of every op below.
#define FASTMUON_STREAM_DOC                                                  \
  "    stream (Stream or Device, optional): a CPU stream or device; default\n" \
  "        the CPU's default stream, whatever the default device. There is\n" \
  "        no GPU kernel here: a GPU stream raises RuntimeError (on an Apple\n" \
  "        GPU, fastmuon.mlx's ops run Metal kernels with backend=\"metal\").\n"

NB_MODULE(_mlx_ext, m) {
  m.doc() =
      "fastmuon._mlx_ext: MLX primitives backed by fastmuon's CPU kernels "
      "(BLAS); CPU streams only.";

  m.def(
      "xxt",
      &fastmuon::xxt,
      "x"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      nb::sig(
          "def xxt(x: mlx.core.array, *, stream: "
          "None | mlx.core.Stream | mlx.core.Device = None) -> mlx.core.array"),
      R"doc(Gram matrix of the last two axes: ``x @ swapaxes(x, -1, -2)``.

Maps ``(..., m, k)`` to ``(..., m, m)``. The CPU path forms the product
with BLAS ``ssyrk`` (half the flops of a matmul) and mirrors it, so the
result is exactly symmetric. float16 / bfloat16 inputs are computed in
float32 and rounded once. Differentiable (vjp ``(G + G^T) x``, jvp) and
vmap-able; works inside ``mx.compile``.

Args:
    x (array): float32, float16 or bfloat16 array with ``ndim >= 2``.
        Any layout (transposed / sliced views are packed internally).
)doc" FASTMUON_STREAM_DOC R"doc(
Returns:
    array: ``(..., m, m)`` array of ``x``'s dtype.

Raises:
    ValueError: ``x`` has fewer than 2 dimensions or a non-floating /
        float64 dtype.
)doc");

  m.def(
      "ba_plus_caa",
      &fastmuon::ba_plus_caa,
      "a"_a,
      "alpha"_a,
      "beta"_a,
      nb::kw_only(),
      "stream"_a = nb::none(),
      nb::sig(
          "def ba_plus_caa(a: mlx.core.array, alpha: float, beta: float, *, "
          "stream: None | mlx.core.Stream | mlx.core.Device = None) -> "
          "mlx.core.array"),
      R"doc(``alpha * a @ a + beta * a`` for symmetric matrices ``a`` (last two axes).

The step polynomial's ``B = b A + c A A`` (``alpha = c``, ``beta = b``).
Because ``a`` is symmetric, ``a a = a a^T``: the CPU path forms it with
one BLAS ``ssyrk`` (half the flops of a matmul) and mirrors it, so the
result is exactly symmetric. Only the upper triangle of each matrix is
read. float16 / bfloat16 inputs are computed in float32 and rounded
once. Differentiable (as the map ``A -> alpha A A + beta A``) and
vmap-able; works inside ``mx.compile``.

Args:
    a (array): float32, float16 or bfloat16 array of shape ``(..., m, m)``.
        Any layout (strided views are packed internally).
    alpha (float): coefficient of ``a @ a`` (rounded to float32).
    beta (float): coefficient of ``a`` (rounded to float32).
)doc" FASTMUON_STREAM_DOC R"doc(
Returns:
    array: ``(..., m, m)`` array of ``a``'s dtype.

Raises:
    ValueError: ``a`` is not a batch of square matrices, or has a
        non-floating / float64 dtype.
)doc");

  m.def(
      "orthogonalize",
      [](const mlx::core::array& x,
         nb::handle plan,
         int workers,
         int blas_threads,
         mlx::core::StreamOrDevice s) {
        fastmuon::OrthogonalizeParams params{
            fastmuon::plan_from_mapping(plan, "orthogonalize"), workers,
            blas_threads};
        return fastmuon::orthogonalize(x, std::move(params), s);
      },
      "x"_a,
      "plan"_a.none(),
      nb::kw_only(),
      "workers"_a = 1,
      "blas_threads"_a = 0,
      "stream"_a = nb::none(),
      nb::sig(
          "def orthogonalize(x: mlx.core.array, plan: dict, *, workers: "
          "int = 1, blas_threads: int = 0, stream: "
          "None | mlx.core.Stream | mlx.core.Device = None) -> mlx.core.array"),
      R"doc(Orthogonalize every matrix of ``x`` (last two axes) in one primitive.

Each matrix ``X`` is normalized to ``X / (||X||_F * norm_scale + eps)``
(the norm accumulated in float64; skipped when the plan's ``normalize``
is false), then one odd quintic
``a X + b (X X^T) X + c (X X^T)^2 X`` per ``(a, b, c)`` of the plan's
``coefficients`` is applied in the order of
``fastmuon.iteration.iterate``: the standard iteration, or with
``gram`` the Gram-space iteration (for matrices of at least
``gram_min_rows`` rows and ``gram_min_aspect`` times as many columns),
recomputing ``X`` and its Gram matrix after every
``gram_restart_every``-th step, at most ``gram_restarts`` times. Tall
matrices are
iterated in the wide orientation without a transposed copy. The CPU
path runs in float32 on the BLAS (symmetric products with ``ssyrk``);
float16 / bfloat16 inputs are upcast and the result rounded once. A zero
matrix gives zeros. Works inside ``mx.compile`` and under ``mx.vmap``;
not differentiable.

Args:
    x (array): float32, float16 or bfloat16 array with ``ndim >= 2``.
        Any layout (strided views are packed internally).
)doc" FASTMUON_PLAN_DOC R"doc(    workers (int): CPU threads sharing the batch (``>= 1``; the result
        does not depend on it).
    blas_threads (int): the BLAS's threads, set when the CPU path runs
        (``0``: left as they are; pass 1 with ``workers > 1``).
)doc" FASTMUON_STREAM_DOC R"doc(
Returns:
    array: array of ``x``'s shape and dtype.

Raises:
    ValueError: ``x`` has fewer than 2 dimensions or a non-floating /
        float64 dtype, ``plan`` misses a key or has an unknown one, or a
        value of it or a parameter is out of range.
    TypeError: ``plan`` is not a dict, or a value of it has the wrong
        type (``coefficients`` neither a float64 (steps, 3) array nor a
        sequence of 3-sequences of floats).
)doc");

  m.def(
      "muon_step",
      [](const mlx::core::array& lr,
         const std::vector<mlx::core::array>& grads,
         const std::vector<mlx::core::array>& momenta,
         const std::vector<mlx::core::array>& weights,
         const std::vector<mlx::core::array>& skipped,
         std::vector<std::array<int64_t, 3>> views,
         std::vector<double> scales,
         nb::handle plan,
         double momentum,
         bool nesterov,
         double weight_decay,
         bool cautious,
         int workers,
         int blas_threads,
         mlx::core::StreamOrDevice s) {
        fastmuon::MuonStepParams params{
            fastmuon::plan_from_mapping(plan, "muon_step"),
            momentum,
            nesterov,
            weight_decay,
            cautious,
            std::move(views),
            std::move(scales),
            workers,
            blas_threads};
        return fastmuon::muon_step(lr, grads, momenta, weights, skipped,
                                   std::move(params), s);
      },
      "lr"_a,
      "grads"_a,
      "momenta"_a,
      "weights"_a,
      "skipped"_a,
      nb::kw_only(),
      "views"_a,
      "scales"_a,
      "plan"_a.none(),
      "momentum"_a,
      "nesterov"_a,
      "weight_decay"_a,
      "cautious"_a,
      "workers"_a = 1,
      "blas_threads"_a = 0,
      "stream"_a = nb::none(),
      nb::sig(
          "def muon_step(lr: mlx.core.array, grads: list[mlx.core.array], "
          "momenta: list[mlx.core.array], weights: list[mlx.core.array], "
          "skipped: list[mlx.core.array], *, views: list[tuple[int, int, int]], "
          "scales: list[float], plan: dict, momentum: float, nesterov: bool, "
          "weight_decay: float, cautious: bool, workers: int = 1, "
          "blas_threads: int = 0, stream: None | mlx.core.Stream | "
          "mlx.core.Device = None) -> list[mlx.core.array]"),
      R"doc(fastmuon.mlx's Muon step of float32 or bfloat16 parameters in one primitive.

For every parameter i whose gradient and ``lr`` (a float32 array of one
value) are finite, in the arithmetic of ``fastmuon.mlx.functional``
(each product and sum rounded on its own, as MLX's eager ops do):
``M = momentum M + (1 - momentum) G``; ``U = (1 - momentum) G + momentum M``
with ``nesterov``, else ``M``; ``O`` the plan's orthogonalization of each
matrix of ``U`` in its ``views[i]`` (batch, rows, cols); then
``W = W (1 - lr weight_decay) - lr scales[i] O`` (``cautious``: the decay
only where ``O W >= 0``; no decay term when ``weight_decay`` is 0). Any
other parameter keeps its weight and momentum and its ``skipped`` count
goes up by one. The matrices of all parameters are shared out over
``workers`` threads. Not differentiable; works inside ``mx.compile``.

Args:
    lr (array): the learning rate, float32, one value.
    grads, momenta, weights (list[array]): one shape per parameter, all
        float32 or all bfloat16 (a bfloat16 parameter's momentum arithmetic
        rounds to bfloat16 as MLX's ops do; its weight is updated in float32
        and rounded once); any layout.
    skipped (list[array]): int32 counts, one value each.
    views (list[tuple]): each parameter's matrix view (batch, rows, cols).
    scales (list[float]): each parameter's learning-rate multiplier.
)doc" FASTMUON_PLAN_DOC R"doc(    momentum, nesterov, weight_decay, cautious: the optimizer's.
    workers (int): CPU threads sharing the matrices (``>= 1``; the result
        does not depend on it).
    blas_threads (int): the BLAS's threads (``0``: left as they are).
)doc" FASTMUON_STREAM_DOC R"doc(
Returns:
    list[array]: the new weights, then the new momenta, then the new
    skipped counts.

Raises:
    ValueError: lists of different lengths, a dtype or shape out of place,
        a view that does not hold its parameter, or an invalid plan,
        each named.
)doc");
}
