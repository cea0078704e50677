// fastmuon/csrc/blas_module.cpp: the `fastmuon._blas` extension.
//
// Thin nanobind wrapper over cpu_kernels.h for numpy arrays and anything else
// that speaks DLPack or the buffer protocol (torch CPU tensors, ...). Links
// only the BLAS, never libmlx, so PyTorch users do not need MLX installed.
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "cpu_kernels.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// What the kernels take: C-contiguous CPU arrays of T, viewed without a copy
// (DLPack or the buffer protocol); const T accepts read-only arrays too.
template <typename T>
using CpuArray = nb::ndarray<T, nb::c_contig, nb::device::cpu>;

template <typename A>
std::string shape_str(const A& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i));
    if (a.ndim() == 1 || i + 1 < a.ndim()) {
      s += i + 1 < a.ndim() ? ", " : ",";
    }
  }
  return s + ")";
}

std::string dtype_str(nb::dlpack::dtype dt) {
  const char* kind = "?";
  switch (static_cast<nb::dlpack::dtype_code>(dt.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    case nb::dlpack::dtype_code::Bool: kind = "bool"; break;
    default: break;
  }
  return std::string(kind) + std::to_string(dt.bits);
}

// Every argument error reads "fn(): `name` <what is wrong>".
std::string arg_error(const char* fn, const char* name,
                      const std::string& what) {
  return std::string(fn) + "(): `" + name + "` " + what;
}

[[noreturn]] void bad_value(const char* fn, const char* name,
                            const std::string& what) {
  throw nb::value_error(arg_error(fn, name, what).c_str());
}

[[noreturn]] void bad_type(const char* fn, const char* name,
                           const std::string& what) {
  throw nb::type_error(arg_error(fn, name, what).c_str());
}

// `obj` as a CpuArray<T>, or raise naming the argument and the first of:
// not an array (TypeError), read-only where T is writable, not in CPU memory
// (ValueError), another dtype (TypeError), another layout (ValueError).
// nanobind's typed cast decides; the untyped views below only explain a
// refusal.
template <typename T>
CpuArray<T> as_array(nb::handle obj, const char* fn, const char* name) {
  CpuArray<T> arr;
  if (nb::try_cast(obj, arr, /*convert=*/false)) {
    return arr;
  }
  nb::ndarray<nb::ro> any;
  if (!nb::try_cast(obj, any, /*convert=*/false)) {
    bad_type(fn, name,
             "must be a CPU array that supports DLPack or the buffer protocol "
             "(numpy.ndarray, torch CPU tensor without requires_grad, ...); "
             "got " + std::string(nb::type_name(obj.type()).c_str()));
  }
  nb::ndarray<> writable;
  if (!std::is_const_v<T> && !nb::try_cast(obj, writable, /*convert=*/false)) {
    bad_value(fn, name, "is read-only; pass a writable array");
  }
  if (any.device_type() != nb::device::cpu::value) {
    bad_value(fn, name, "must live in CPU memory (DLPack device type " +
                            std::to_string(any.device_type()) + ")");
  }
  using Scalar = std::remove_const_t<T>;
  if (any.dtype() != nb::dtype<Scalar>()) {
    bad_type(fn, name,
             std::string("must have dtype ") +
                 (std::is_same_v<Scalar, float> ? "float32" : "float64") +
                 ", got " + dtype_str(any.dtype()));
  }
  bad_value(fn, name,
            "must be C-contiguous (row-major, no gaps); got a strided view of "
            "shape " + shape_str(any) +
                ". Pass a contiguous copy (np.ascontiguousarray / "
                "tensor.contiguous()).");
}

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

// The plan of an orthogonalize call, which owns a copy of the (steps x 3)
// coefficients.
fastmuon::OrthogonalizePlan plan_from(nb::handle coef_obj, const char* fn,
                                      double norm_scale, double eps, bool gram,
                                      int64_t gram_restart_every) {
  auto coef = as_array<const double>(coef_obj, fn, "coefficients");
  if (coef.ndim() != 2 || coef.shape(1) != 3 || coef.shape(0) < 1) {
    bad_value(fn, "coefficients",
              "must have shape (steps, 3) with steps >= 1, got shape " +
                  shape_str(coef));
  }
  fastmuon::OrthogonalizePlan plan{
      {}, norm_scale, eps, gram, gram_restart_every};
  const double* c = coef.data();
  for (size_t i = 0; i < coef.shape(0); ++i) {
    plan.coefficients.push_back({c[3 * i], c[3 * i + 1], c[3 * i + 2]});
  }
  return plan;
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

void orthogonalize(nb::handle x_obj, nb::handle coef_obj, double norm_scale,
                   double eps, bool gram, int64_t gram_restart_every,
                   int workers) {
  constexpr const char* fn = "orthogonalize";
  auto x = as_array<float>(x_obj, fn, "x");
  const auto stack = stack_from(x, fn, "x");
  const auto plan =
      plan_from(coef_obj, fn, norm_scale, eps, gram, gram_restart_every);
  nb::gil_scoped_release release;
  fastmuon::cpu::orthogonalize_stacks_f32({stack}, plan, workers);
}

void orthogonalize_stacks(nb::list xs, nb::handle coef_obj, double norm_scale,
                          double eps, bool gram, int64_t gram_restart_every,
                          int workers) {
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
  const auto plan =
      plan_from(coef_obj, fn, norm_scale, eps, gram, gram_restart_every);
  nb::gil_scoped_release release;
  fastmuon::cpu::orthogonalize_stacks_f32(stacks, plan, workers);
}

// Per parameter: (momentum_weight, lookahead_weight, nesterov, decays, decay,
// step), as fastmuon::cpu::MuonParam names them.
using MuonHyper = std::tuple<double, double, bool, bool, double, double>;
// Per parameter: its matrix view (batch, rows, cols).
using MatrixView = std::tuple<int64_t, int64_t, int64_t>;

bool muon_step(nb::list grads, nb::list momenta, nb::list weights,
               const std::vector<MatrixView>& views,
               const std::vector<MuonHyper>& hyper, nb::handle coef_obj,
               double norm_scale, double eps, bool gram,
               int64_t gram_restart_every, int workers) {
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
    const auto& [mw, lw, nesterov, decays, decay, step] = hyper[i];
    params.push_back({gs.back().data(), ms.back().data(), ws.back().data(),
                      batch, rows, cols, static_cast<float>(mw),
                      static_cast<float>(lw), nesterov, decays,
                      static_cast<float>(decay), static_cast<float>(step)});
  }
  const auto plan =
      plan_from(coef_obj, fn, norm_scale, eps, gram, gram_restart_every);
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
      "coefficients"_a.none(),
      "norm_scale"_a,
      "eps"_a,
      "gram"_a,
      "gram_restart_every"_a,
      "workers"_a = 1,
      nb::sig("def orthogonalize(x: object, coefficients: object, norm_scale: "
              "float, eps: float, gram: bool, gram_restart_every: int, "
              "workers: int = 1) -> None"),
      R"doc(Orthogonalize every matrix of ``x`` in place (polynomial iteration).

Each matrix ``X`` is normalized to ``X / (||X||_F * norm_scale + eps)``
(the norm accumulated in float64), then the odd polynomials
``p(X) = a X + b (X X^T) X + c (X X^T)^2 X`` of ``coefficients`` are
applied in the order of ``fastmuon.iteration.iterate``: the standard
iteration (``A = X X^T``, ``B = b A + c A A``, ``X <- a X + B X``), or
with ``gram=True`` the Gram-space iteration on ``R = X X^T``,
recomputing ``X`` and ``R`` after every ``gram_restart_every``-th step.
Tall matrices are iterated in the wide orientation without a
transposed copy. All arithmetic is float32 on the BLAS; the GIL is
released. With ``workers=1`` the matrices run one after another, each
product on the BLAS threads; with ``workers > 1`` the batch is split
into that many shares, each on a thread of its own (set the BLAS to one
thread first). The result does not depend on ``workers``. A zero matrix
stays zero.

Args:
    x: writable float32, C-contiguous CPU array of shape
       ``(batch, rows, cols)`` or ``(rows, cols)``; overwritten with
       the result.
    coefficients: float64, C-contiguous array of shape ``(steps, 3)``,
       one ``(a, b, c)`` row per step, ``steps >= 1``.
    norm_scale: positive factor on the Frobenius norm.
    eps: non-negative constant added to the scaled norm.
    gram: iterate on the Gram matrix instead of ``X``.
    gram_restart_every: restart period (``>= 1``) of the Gram iteration;
       ignored when ``gram`` is false.
    workers: threads sharing the batch (``>= 1``).

Raises:
    TypeError: ``x``/``coefficients`` is not an array or has the wrong
        dtype.
    ValueError: wrong shape, non-contiguous, read-only ``x``, non-CPU
        memory, or an invalid ``norm_scale``/``eps``/coefficient value,
        ``gram_restart_every`` or ``workers``.
)doc");

  m.def(
      "orthogonalize_stacks",
      &orthogonalize_stacks,
      "xs"_a,
      "coefficients"_a.none(),
      "norm_scale"_a,
      "eps"_a,
      "gram"_a,
      "gram_restart_every"_a,
      "workers"_a = 1,
      nb::sig("def orthogonalize_stacks(xs: list, coefficients: object, "
              "norm_scale: float, eps: float, gram: bool, gram_restart_every: "
              "int, workers: int = 1) -> None"),
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
      "coefficients"_a.none(),
      "norm_scale"_a,
      "eps"_a,
      "gram"_a,
      "gram_restart_every"_a,
      "workers"_a = 1,
      nb::sig("def muon_step(grads: list, momenta: list, weights: list, "
              "views: list, hyper: list, coefficients: object, norm_scale: float, eps: "
              "float, gram: bool, gram_restart_every: int, workers: int = 1) "
              "-> bool"),
      R"doc(One Muon step on fp32 parameters, in place; False, with nothing
written, if a gradient holds a NaN or an Inf.

For each i, ``grads[i]``, ``momenta[i]`` and ``weights[i]`` are float32,
C-contiguous arrays of one shape (momenta and weights writable),
``views[i]`` is the ``(batch, rows, cols)`` matrix view of their entries
and ``hyper[i]`` is
``(momentum_weight, lookahead_weight, nesterov, decays, decay, step)``.
Per matrix: ``M <- lerp(M, G, momentum_weight)``; ``U = lerp(G, M,
lookahead_weight)`` with Nesterov, else ``M``; ``O = orthogonalize(U)``
(the plan as in ``orthogonalize``); ``W <- W * decay`` if ``decays``;
``W <- W + step * O``. The arithmetic is torch's op for op (lerp and the
add as fused multiply-adds, the hyperparameters rounded to float32), so
the results are bitwise those of ``torch.lerp``, ``Tensor.mul_`` and
``Tensor.add_(alpha=step)``. With ``workers > 1`` the matrices are shared
out over that many threads as in ``orthogonalize_stacks``. The GIL is
released.

Raises:
    TypeError, ValueError: naming the array at fault (``grads[i]``, ...),
        for a wrong dtype, shape or layout, read-only momenta or weights,
        or overlapping arrays; as ``orthogonalize`` for the plan.
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
