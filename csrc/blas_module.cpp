// fastmuon/csrc/blas_module.cpp: the `fastmuon._blas` extension.
//
// Thin nanobind wrapper over cpu_kernels.h for numpy arrays and anything else
// that speaks DLPack or the buffer protocol (torch CPU tensors, ...). Links
// only the BLAS, never libmlx, so PyTorch users do not need MLX installed.
#include <cstdint>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "cpu_kernels.h"
#include "muon_step.h"
#include "plan_args.h"
#include "py_args.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using fastmuon::py_args::as_array;
using fastmuon::py_args::bad_value;
using fastmuon::py_args::CpuArray;
using fastmuon::py_args::shape_str;

// The kernels take (batch, r, c) or one (r, c) matrix.
template <typename A>
bool is_matrix_batch(const A& a) {
  return a.ndim() == 2 || a.ndim() == 3;
}

template <typename A>
int64_t dim(const A& a, size_t i) {
  return static_cast<int64_t>(a.shape(i));
}

template <typename A>
int64_t batch_of(const A& a) {
  return a.ndim() == 3 ? dim(a, 0) : 1;
}

template <typename A, typename B>
bool overlaps(const A& a, const B& b) {
  const auto* a_lo = reinterpret_cast<const char*>(a.data());
  const auto* b_lo = reinterpret_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a_lo < b_lo + b.nbytes() &&
      b_lo < a_lo + a.nbytes();
}

// `out` is compared with the shape of an input of `ndim` dimensions.
template <typename A>
void check_out_ndim(const A& out, const char* fn, size_t ndim) {
  if (out.ndim() != ndim) {
    bad_value(fn, "out", "must have " + std::to_string(ndim) +
                             " dimensions, got shape " + shape_str(out));
  }
}

void xxt(nb::handle x_obj, nb::handle out_obj) {
  constexpr const char* fn = "xxt";
  auto x = as_array<const float>(x_obj, fn, "x");
  if (!is_matrix_batch(x)) {
    bad_value(fn, "x", "must have shape (m, k) or (batch, m, k), got shape " +
                           shape_str(x));
  }
  auto out = as_array<float>(out_obj, fn, "out");
  const size_t nd = x.ndim();
  check_out_ndim(out, fn, nd);
  const int64_t batch = batch_of(x);
  const int64_t m = dim(x, nd - 2);
  const int64_t k = dim(x, nd - 1);
  if (batch_of(out) != batch || dim(out, nd - 2) != m ||
      dim(out, nd - 1) != m) {
    std::string want = nd == 3 ? "(" + std::to_string(batch) + ", " : "(";
    want += std::to_string(m) + ", " + std::to_string(m) + ")";
    bad_value(fn, "out", "must have shape " + want + " for `x` of shape " +
                             shape_str(x) + ", got " + shape_str(out));
  }
  if (overlaps(x, out)) {
    bad_value(fn, "out", "must not overlap `x`");
  }
  nb::gil_scoped_release release;
  fastmuon::cpu::xxt_f32(x.data(), out.data(), batch, m, k);
}

void ba_plus_caa(nb::handle a_obj, nb::handle out_obj, double alpha,
                 double beta) {
  constexpr const char* fn = "ba_plus_caa";
  auto a = as_array<const float>(a_obj, fn, "a");
  const size_t nd = a.ndim();
  if (!is_matrix_batch(a) || a.shape(nd - 1) != a.shape(nd - 2)) {
    bad_value(fn, "a", "must have shape (m, m) or (batch, m, m), got shape " +
                           shape_str(a));
  }
  auto out = as_array<float>(out_obj, fn, "out");
  check_out_ndim(out, fn, nd);
  for (size_t i = 0; i < nd; ++i) {
    if (out.shape(i) != a.shape(i)) {
      bad_value(fn, "out", "must have the shape of `a`, " + shape_str(a) +
                               ", got " + shape_str(out));
    }
  }
  // In place (the very same buffer) is supported; any other overlap is not.
  if (out.data() != a.data() && overlaps(a, out)) {
    bad_value(fn, "out", "must be `a` itself or not overlap it");
  }
  const auto alpha32 = static_cast<float>(alpha);
  const auto beta32 = static_cast<float>(beta);
  nb::gil_scoped_release release;
  fastmuon::cpu::ba_plus_caa_f32(a.data(), out.data(), batch_of(a),
                                 dim(a, nd - 1), alpha32, beta32);
}

// A writable (rows, cols) or (batch, rows, cols) float32 array as a Stack.
fastmuon::cpu::Stack stack_from(const CpuArray<float>& x, const char* fn,
                                const char* name) {
  if (!is_matrix_batch(x)) {
    bad_value(fn, name,
              "must have shape (rows, cols) or (batch, rows, cols), got "
              "shape " + shape_str(x));
  }
  const size_t nd = x.ndim();
  return {x.data(), batch_of(x), dim(x, nd - 2), dim(x, nd - 1)};
}

void orthogonalize(nb::handle x_obj, nb::handle plan_obj, int workers) {
  constexpr const char* fn = "orthogonalize";
  auto x = as_array<float>(x_obj, fn, "x");
  const auto stack = stack_from(x, fn, "x");
  const auto plan = fastmuon::plan_from_mapping(plan_obj, fn);
  nb::gil_scoped_release release;
  fastmuon::cpu::orthogonalize_stacks_f32({stack}, plan, workers);
}

void orthogonalize_stacks(nb::list xs, nb::handle plan_obj, int workers) {
  constexpr const char* fn = "orthogonalize_stacks";
  std::vector<CpuArray<float>> arrays;
  std::vector<std::string> names;
  for (size_t i = 0; i < xs.size(); ++i) {
    names.push_back("xs[" + std::to_string(i) + "]");
    arrays.push_back(as_array<float>(xs[i], fn, names.back().c_str()));
  }
  std::vector<fastmuon::cpu::Stack> stacks;
  for (size_t i = 0; i < arrays.size(); ++i) {
    stacks.push_back(stack_from(arrays[i], fn, names[i].c_str()));
    for (size_t j = 0; j < i; ++j) {  // their matrices are written concurrently
      if (overlaps(arrays[i], arrays[j])) {
        bad_value(fn, names[i].c_str(), "overlaps " + names[j]);
      }
    }
  }
  const auto plan = fastmuon::plan_from_mapping(plan_obj, fn);
  nb::gil_scoped_release release;
  fastmuon::cpu::orthogonalize_stacks_f32(stacks, plan, workers);
}

// Per parameter: its matrix view (batch, rows, cols).
using MatrixView = std::tuple<int64_t, int64_t, int64_t>;

// One parameter of muon_step: its arrays, their matrix view, and the
// hyperparameters `hyper`, a dict with exactly the keys that name them in
// fastmuon::cpu::MuonParam (muon_step.h), each rounded to float32 as torch
// rounds a Python scalar for a float32 tensor.
fastmuon::cpu::MuonParam muon_param(const float* grad, float* momentum,
                                    float* weight, const MatrixView& view,
                                    nb::handle hyper, const char* fn,
                                    const std::string& name) {
  static const fastmuon::py_args::Keys<6> keys({"momentum_weight",
                                                "lookahead_weight", "nesterov",
                                                "decays", "decay", "step"});
  const fastmuon::py_args::DictArg<6> h(hyper, fn, name, keys);
  const auto [batch, rows, cols] = view;
  return {grad,
          momentum,
          weight,
          batch,
          rows,
          cols,
          static_cast<float>(h.get<double>("momentum_weight")),
          static_cast<float>(h.get<double>("lookahead_weight")),
          h.get<bool>("nesterov"),
          h.get<bool>("decays"),
          static_cast<float>(h.get<double>("decay")),
          static_cast<float>(h.get<double>("step"))};
}

bool muon_step(nb::list grads, nb::list momenta, nb::list weights,
               const std::vector<MatrixView>& views, nb::list hyper,
               nb::handle plan_obj, int workers) {
  constexpr const char* fn = "muon_step";
  const size_t count = grads.size();
  if (momenta.size() != count || weights.size() != count ||
      views.size() != count || hyper.size() != count) {
    bad_value(fn, "momenta",
              "weights, views and hyper must have one entry per gradient");
  }
  std::vector<CpuArray<const float>> gs;
  std::vector<CpuArray<float>> ms, ws;
  std::vector<fastmuon::cpu::MuonParam> params;
  for (size_t i = 0; i < count; ++i) {
    const std::string at = "[" + std::to_string(i) + "]";
    const std::string g_name = "grads" + at, m_name = "momenta" + at,
                      w_name = "weights" + at;
    gs.push_back(as_array<const float>(grads[i], fn, g_name.c_str()));
    ms.push_back(as_array<float>(momenta[i], fn, m_name.c_str()));
    ws.push_back(as_array<float>(weights[i], fn, w_name.c_str()));
    const std::string want = shape_str(ws.back());
    if (shape_str(gs.back()) != want || shape_str(ms.back()) != want) {
      bad_value(fn, g_name.c_str(), "and " + m_name + " must have the shape of " +
                                        w_name + ", " + want);
    }
    const auto [batch, rows, cols] = views[i];
    if (batch < 0 || rows < 0 || cols < 0 ||
        static_cast<size_t>(batch * rows * cols) != ws.back().size()) {
      bad_value(fn, ("views" + at).c_str(),
                "must be (batch, rows, cols) holding the " +
                    std::to_string(ws.back().size()) + " entries of " + w_name);
    }
    if (overlaps(ms.back(), ws.back()) || overlaps(gs.back(), ms.back()) ||
        overlaps(gs.back(), ws.back())) {
      bad_value(fn, w_name.c_str(), "must not overlap " + g_name + " or " + m_name);
    }
    params.push_back(muon_param(gs.back().data(), ms.back().data(),
                                ws.back().data(), views[i], hyper[i], fn,
                                "hyper" + at));
  }
  const auto plan = fastmuon::plan_from_mapping(plan_obj, fn);
  nb::gil_scoped_release release;
  return fastmuon::cpu::muon_step_f32(params, plan, workers);
}

} // namespace

NB_MODULE(_blas, m) {
  m.doc() =
      "fastmuon._blas: CPU kernels on the bundled BLAS for numpy arrays and "
      "torch CPU tensors.\n\n"
      "Links only the BLAS (scipy-openblas32 on Linux, Accelerate on macOS), "
      "never MLX.";

  m.def(
      "xxt",
      &xxt,
      "x"_a.none(),
      "out"_a.none(),
      nb::sig("def xxt(x: object, out: object) -> None"),
      R"doc(Write the Gram matrix ``out[i] = x[i] @ x[i].T`` into ``out``.

The product is formed once with BLAS ``ssyrk`` (half the flops of a
general matmul) and mirrored, so both triangles of ``out`` are written
and every ``out[i]`` is exactly symmetric. The GIL is released while
the BLAS runs.

Args:
    x: float32, C-contiguous CPU array of shape ``(batch, m, k)`` or
       ``(m, k)``: a numpy array or anything exposing DLPack / the buffer
       protocol (e.g. a torch CPU tensor). Read-only arrays are fine.
    out: writable float32, C-contiguous CPU array of shape
       ``(batch, m, m)`` (or ``(m, m)``); fully overwritten. Must not
       overlap ``x``.

Raises:
    TypeError: ``x``/``out`` is not an array or not float32.
    ValueError: wrong shape or rank, non-contiguous, read-only ``out``,
        overlapping buffers, or non-CPU memory.
)doc");

  m.def(
      "ba_plus_caa",
      &ba_plus_caa,
      "a"_a.none(),
      "out"_a.none(),
      "alpha"_a,
      "beta"_a,
      nb::sig("def ba_plus_caa(a: object, out: object, alpha: float, beta: "
              "float) -> None"),
      R"doc(Write ``out[i] = alpha * a[i] @ a[i] + beta * a[i]`` for symmetric ``a[i]``.

The step polynomial's ``B = b A + c A A`` (``alpha = c``, ``beta = b``).
Since ``a`` is symmetric, ``a a = a a^T``: one BLAS ``ssyrk`` forms it
at half the flops of a matmul, and the result is mirrored, so every
``out[i]`` is exactly symmetric. Only the upper triangle of ``a`` is
read. The GIL is released while the BLAS runs.

Args:
    a: float32, C-contiguous CPU array of shape ``(batch, m, m)`` or
       ``(m, m)`` (numpy array, torch CPU tensor, ...).
    out: writable float32, C-contiguous CPU array of ``a``'s shape;
       fully overwritten. May be ``a`` itself (in place) but must not
       otherwise overlap it.
    alpha: coefficient of ``a @ a`` (rounded to float32).
    beta: coefficient of ``a`` (rounded to float32).

Raises:
    TypeError: ``a``/``out`` is not an array or not float32.
    ValueError: wrong shape or rank, non-square ``a``, non-contiguous,
        read-only ``out``, partial overlap, or non-CPU memory.
)doc");

  m.def(
      "orthogonalize",
      &orthogonalize,
      "x"_a.none(),
      "plan"_a.none(),
      "workers"_a = 1,
      nb::sig("def orthogonalize(x: object, plan: dict, workers: int = 1) "
              "-> None"),
      R"doc(Orthogonalize every matrix of ``x`` in place (polynomial iteration).

Each matrix ``X`` is normalized to ``X / (||X||_F * norm_scale + eps)``
(the norm accumulated in float64; skipped when the plan's ``normalize``
is false), then the odd polynomials
``p(X) = a X + b (X X^T) X + c (X X^T)^2 X`` of the plan's
``coefficients`` are applied in the order of
``fastmuon.iteration.iterate``: the standard iteration (``A = X X^T``,
``B = b A + c A A``, ``X <- a X + B X``), or with ``gram`` the
Gram-space iteration on ``R = X X^T`` (for matrices of at least
``gram_min_rows`` rows and ``gram_min_aspect`` times as many columns),
recomputing ``X`` and ``R`` after every ``gram_restart_every``-th step,
at most ``gram_restarts`` times. Tall matrices are iterated
in the wide orientation without a transposed copy. All arithmetic is
float32 on the BLAS; the GIL is released. With ``workers=1`` the
matrices run one after another, each product on the BLAS threads; with
``workers > 1`` the batch is split into that many shares, each on a
thread of its own (set the BLAS to one thread first). The result does
not depend on ``workers``. A zero matrix stays zero.

Args:
    x: writable float32, C-contiguous CPU array of shape
       ``(batch, rows, cols)`` or ``(rows, cols)``; overwritten with
       the result.
)doc" FASTMUON_PLAN_DOC R"doc(    workers: threads sharing the batch (``>= 1``).

Raises:
    TypeError: ``x`` is not an array or has the wrong dtype; ``plan`` is
        not a dict, or a value of it has the wrong type.
    ValueError: wrong shape, non-contiguous, read-only ``x``, non-CPU
        memory, a missing or unknown key of ``plan`` or an invalid value
        of it, or ``workers < 1``.
)doc");

  m.def(
      "orthogonalize_stacks",
      &orthogonalize_stacks,
      "xs"_a,
      "plan"_a.none(),
      "workers"_a = 1,
      nb::sig("def orthogonalize_stacks(xs: list, plan: dict, workers: int = "
              "1) -> None"),
      R"doc(``orthogonalize`` on every array of the list ``xs`` in one call.

The arrays may have different shapes (each ``(rows, cols)`` or
``(batch, rows, cols)``, float32, C-contiguous, writable) and must not
overlap. With ``workers > 1`` all their matrices are shared out over
that many threads together, the largest first, each to the least loaded
thread; every matrix gets the same operations as in ``orthogonalize``,
so the results do not depend on ``workers`` or on how the matrices are
grouped into arrays. The GIL is released.

Raises:
    TypeError, ValueError: as ``orthogonalize``, naming the array
        (``xs[i]``); ValueError also when two arrays overlap.
)doc");

  m.def(
      "muon_step",
      &muon_step,
      "grads"_a,
      "momenta"_a,
      "weights"_a,
      "views"_a,
      "hyper"_a,
      "plan"_a.none(),
      "workers"_a = 1,
      nb::sig("def muon_step(grads: list, momenta: list, weights: list, "
              "views: list, hyper: list, plan: dict, workers: int = 1) -> "
              "bool"),
      R"doc(One Muon step on fp32 parameters, in place; False, with nothing
written, if a gradient holds a NaN or an Inf.

For each i, ``grads[i]``, ``momenta[i]`` and ``weights[i]`` are float32,
C-contiguous arrays of one shape (momenta and weights writable),
``views[i]`` is the ``(batch, rows, cols)`` matrix view of their entries
and ``hyper[i]`` a dict with exactly the keys ``momentum_weight``,
``lookahead_weight``, ``nesterov``, ``decays``, ``decay`` and ``step``
(as ``fastmuon.torch.functional.muon_step_scalars`` gives it). Per
matrix: ``M <- lerp(M, G, momentum_weight)``; ``U = lerp(G, M,
lookahead_weight)`` with ``nesterov``, else ``M``; ``O =
orthogonalize(U)`` (``plan`` as in ``orthogonalize``); ``W <- W * decay``
if ``decays``; ``W <- W + step * O``. The arithmetic is torch's op for
op (lerp and the add as fused multiply-adds, the hyperparameters rounded
to float32), so the results are bitwise those of ``torch.lerp``,
``Tensor.mul_`` and ``Tensor.add_(alpha=step)``. With ``workers > 1``
the matrices are shared out over that many threads as in
``orthogonalize_stacks``. The GIL is released.

Raises:
    TypeError, ValueError: naming the array at fault (``grads[i]``, ...),
        for a wrong dtype, shape or layout, read-only momenta or weights,
        or overlapping arrays; naming the key at fault (``hyper[i]``) for
        a missing or unknown key or a value of the wrong type; as
        ``orthogonalize`` for the plan.
)doc");

  m.def(
      "get_num_threads",
      &fastmuon::cpu::blas_num_threads,
      R"doc(Number of threads the BLAS uses (0 if the BLAS, e.g. Accelerate,
manages its own threads).)doc");

  m.def(
      "set_num_threads",
      &fastmuon::cpu::set_blas_num_threads,
      "n"_a,
      R"doc(Set the number of BLAS threads (process-wide, n >= 1).

A no-op on Accelerate. Raises ValueError for n < 1.)doc");

  m.attr("blas") = fastmuon::cpu::blas_name();
#if defined(_OPENMP)
  m.attr("openmp") = true;  // batches are split over threads (parallel.h)
#else
  m.attr("openmp") = false;
#endif
}
