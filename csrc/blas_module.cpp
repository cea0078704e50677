// fastmuon/csrc/blas_module.cpp: the `fastmuon._blas` extension.
//
// Thin nanobind wrapper over cpu_kernels.h for numpy arrays and anything else
// that speaks DLPack or the buffer protocol (torch CPU tensors, ...). Links
// only the BLAS, never libmlx, so PyTorch users do not need MLX installed.
#include <cstdint>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "cpu_kernels.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using ROArray = nb::ndarray<nb::ro>;  // any dtype/shape/device, read-only ok
using RWArray = nb::ndarray<>;        // any dtype/shape/device, writable

std::string obj_type_name(nb::handle h) {
  return nb::type_name(h.type()).c_str();
}

std::string shape_str(const nb::ndarray<nb::ro>& a) {
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

// C-contiguity in the numpy sense: extents of size 1 may carry any stride,
// and empty arrays are contiguous.
bool is_c_contiguous(const ROArray& a) {
  if (a.size() == 0) {
    return true;  // exporters may report any strides for empty arrays
  }
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    const auto n = static_cast<int64_t>(a.shape(i));
    if (n != 1 && a.stride(i) != expected) {
      return false;
    }
    expected *= n;
  }
  return true;
}

// "fn(): `name` " -- every argument error starts like this.
std::string arg_prefix(const char* fn, const char* name) {
  return std::string(fn) + "(): `" + name + "` ";
}

// Convert `obj` to a read-only ndarray view without copying, or raise
// TypeError naming the argument.
ROArray as_array(nb::handle obj, const char* fn, const char* name) {
  ROArray arr;
  if (!nb::try_cast(obj, arr, /*convert=*/false)) {
    throw nb::type_error(
        (arg_prefix(fn, name) +
         "must be a CPU array that supports DLPack or the buffer protocol "
         "(numpy.ndarray, torch CPU tensor without requires_grad, ...); got " +
         obj_type_name(obj))
            .c_str());
  }
  return arr;
}

// Convert `obj` to a writable ndarray view, or raise naming the argument
// (ValueError if it is an array but read-only, TypeError otherwise).
RWArray as_writable_array(nb::handle obj, const char* fn, const char* name) {
  RWArray arr;
  if (!nb::try_cast(obj, arr, /*convert=*/false)) {
    ROArray probe;
    if (nb::try_cast(obj, probe, /*convert=*/false)) {
      throw nb::value_error(
          (arg_prefix(fn, name) + "is read-only; pass a writable array").c_str());
    }
    as_array(obj, fn, name);  // raises the TypeError naming the argument
  }
  return arr;
}

void check_cpu_dtype(const ROArray& a, const char* fn, const char* name,
                     nb::dlpack::dtype want, const char* want_name) {
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error(
        (arg_prefix(fn, name) + "must live in CPU memory (DLPack device type " +
         std::to_string(a.device_type()) + ")")
            .c_str());
  }
  if (a.dtype() != want) {
    throw nb::type_error((arg_prefix(fn, name) + "must have dtype " +
                          want_name + ", got " + dtype_str(a.dtype()))
                             .c_str());
  }
}

void check_contiguous(const ROArray& a, const char* fn, const char* name) {
  if (!is_c_contiguous(a)) {
    throw nb::value_error(
        (arg_prefix(fn, name) +
         "must be C-contiguous (row-major, no gaps); got a strided view of "
         "shape " +
         shape_str(a) + ". Pass a contiguous copy (np.ascontiguousarray / "
                        "tensor.contiguous()).")
            .c_str());
  }
}

// CPU, float32, `ndim` dimensions, C-contiguous (checked in this order).
void check_float32_cpu(const ROArray& a, const char* fn, const char* name,
                       size_t ndim) {
  check_cpu_dtype(a, fn, name, nb::dtype<float>(), "float32");
  if (a.ndim() != ndim) {
    throw nb::value_error(
        (arg_prefix(fn, name) + "must have " + std::to_string(ndim) +
         " dimensions, got shape " + shape_str(a))
            .c_str());
  }
  check_contiguous(a, fn, name);
}

bool overlaps(const ROArray& a, const ROArray& b) {
  const auto* a_lo = static_cast<const char*>(a.data());
  const auto* b_lo = static_cast<const char*>(b.data());
  return a.nbytes() > 0 && b.nbytes() > 0 && a_lo < b_lo + b.nbytes() &&
      b_lo < a_lo + a.nbytes();
}

void xxt(nb::handle x_obj, nb::handle out_obj) {
  constexpr const char* fn = "xxt";
  ROArray x = as_array(x_obj, fn, "x");
  const size_t nd = x.ndim();
  if (nd != 2 && nd != 3) {
    throw nb::value_error(
        ("xxt(): `x` must have shape (m, k) or (batch, m, k), got shape " +
         shape_str(x))
            .c_str());
  }
  check_float32_cpu(x, fn, "x", nd);

  RWArray out_rw = as_writable_array(out_obj, fn, "out");
  ROArray out(out_rw);
  check_float32_cpu(out, fn, "out", nd);

  const int64_t batch = nd == 3 ? static_cast<int64_t>(x.shape(0)) : 1;
  const auto m = static_cast<int64_t>(x.shape(nd - 2));
  const auto k = static_cast<int64_t>(x.shape(nd - 1));
  const bool shape_ok = (nd == 2 || static_cast<int64_t>(out.shape(0)) == batch) &&
      static_cast<int64_t>(out.shape(nd - 2)) == m &&
      static_cast<int64_t>(out.shape(nd - 1)) == m;
  if (!shape_ok) {
    std::string want = nd == 3 ? "(" + std::to_string(batch) + ", " : "(";
    want += std::to_string(m) + ", " + std::to_string(m) + ")";
    throw nb::value_error(("xxt(): `out` must have shape " + want +
                           " for `x` of shape " + shape_str(x) + ", got " +
                           shape_str(out))
                              .c_str());
  }
  if (overlaps(x, out)) {
    throw nb::value_error("xxt(): `out` must not overlap `x`");
  }

  const auto* xp = static_cast<const float*>(x.data());
  auto* op = static_cast<float*>(out_rw.data());
  nb::gil_scoped_release release;
  fastmuon::cpu::xxt_f32(xp, op, batch, m, k);
}

void ba_plus_caa(nb::handle a_obj, nb::handle out_obj, double alpha, double beta) {
  constexpr const char* fn = "ba_plus_caa";
  ROArray a = as_array(a_obj, fn, "a");
  const size_t nd = a.ndim();
  if ((nd != 2 && nd != 3) || a.shape(nd - 1) != a.shape(nd - 2)) {
    throw nb::value_error(
        ("ba_plus_caa(): `a` must have shape (m, m) or (batch, m, m), got "
         "shape " +
         shape_str(a))
            .c_str());
  }
  check_float32_cpu(a, fn, "a", nd);

  RWArray out_rw = as_writable_array(out_obj, fn, "out");
  ROArray out(out_rw);
  check_float32_cpu(out, fn, "out", nd);
  bool shape_ok = true;
  for (size_t i = 0; i < nd; ++i) {
    shape_ok = shape_ok && out.shape(i) == a.shape(i);
  }
  if (!shape_ok) {
    throw nb::value_error(("ba_plus_caa(): `out` must have the shape of `a`, " +
                           shape_str(a) + ", got " + shape_str(out))
                              .c_str());
  }
  // In place (the very same buffer) is supported; any other overlap is not.
  if (out.data() != a.data() && overlaps(a, out)) {
    throw nb::value_error(
        "ba_plus_caa(): `out` must be `a` itself or not overlap it");
  }

  const int64_t batch = nd == 3 ? static_cast<int64_t>(a.shape(0)) : 1;
  const auto m = static_cast<int64_t>(a.shape(nd - 1));
  const auto* ap = static_cast<const float*>(a.data());
  auto* op = static_cast<float*>(out_rw.data());
  const auto alpha32 = static_cast<float>(alpha);
  const auto beta32 = static_cast<float>(beta);
  nb::gil_scoped_release release;
  fastmuon::cpu::ba_plus_caa_f32(ap, op, batch, m, alpha32, beta32);
}

void orthogonalize(nb::handle x_obj, nb::handle coef_obj, double norm_scale,
                   double eps, bool gram, int64_t gram_restart_every) {
  constexpr const char* fn = "orthogonalize";
  RWArray x_rw = as_writable_array(x_obj, fn, "x");
  ROArray x(x_rw);
  const size_t nd = x.ndim();
  if (nd != 2 && nd != 3) {
    throw nb::value_error(
        ("orthogonalize(): `x` must have shape (rows, cols) or (batch, rows, "
         "cols), got shape " +
         shape_str(x))
            .c_str());
  }
  check_float32_cpu(x, fn, "x", nd);

  ROArray coef = as_array(coef_obj, fn, "coefficients");
  check_cpu_dtype(coef, fn, "coefficients", nb::dtype<double>(), "float64");
  if (coef.ndim() != 2 || coef.shape(1) != 3 || coef.shape(0) < 1) {
    throw nb::value_error(
        ("orthogonalize(): `coefficients` must have shape (steps, 3) with "
         "steps >= 1, got shape " +
         shape_str(coef))
            .c_str());
  }
  check_contiguous(coef, fn, "coefficients");

  // The plan owns a copy of the (steps x 3) coefficients.
  fastmuon::OrthogonalizePlan plan{
      {}, norm_scale, eps, gram, gram_restart_every};
  const auto* c = static_cast<const double*>(coef.data());
  for (size_t i = 0; i < coef.shape(0); ++i) {
    plan.coefficients.push_back({c[3 * i], c[3 * i + 1], c[3 * i + 2]});
  }

  const int64_t batch = nd == 3 ? static_cast<int64_t>(x.shape(0)) : 1;
  const auto rows = static_cast<int64_t>(x.shape(nd - 2));
  const auto cols = static_cast<int64_t>(x.shape(nd - 1));
  auto* xp = static_cast<float*>(x_rw.data());
  nb::gil_scoped_release release;
  fastmuon::cpu::orthogonalize_f32(xp, batch, rows, cols, plan);
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
      nb::sig("def orthogonalize(x: object, coefficients: object, norm_scale: "
              "float, eps: float, gram: bool, gram_restart_every: int) -> "
              "None"),
      R"doc(Orthogonalize every matrix of ``x`` in place (polynomial iteration).

Each matrix ``X`` is normalized to ``X / (||X||_F * norm_scale + eps)``
(the norm accumulated in float64), then the odd polynomials
``p(X) = a X + b (X X^T) X + c (X X^T)^2 X`` of ``coefficients`` are
applied in the order of ``fastmuon._iteration.iterate``: the standard
iteration (``A = X X^T``, ``B = b A + c A A``, ``X <- a X + B X``), or
with ``gram=True`` the Gram-space iteration on ``R = X X^T``,
recomputing ``X`` and ``R`` after every ``gram_restart_every``-th step.
Tall matrices are iterated in the wide orientation without a
transposed copy. All arithmetic is float32 on the BLAS (matrices one
after another, each product on the BLAS threads); the GIL is released.
A zero matrix stays zero.

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

Raises:
    TypeError: ``x``/``coefficients`` is not an array or has the wrong
        dtype.
    ValueError: wrong shape, non-contiguous, read-only ``x``, non-CPU
        memory, or an invalid ``norm_scale``/``eps``/coefficient value
        or ``gram_restart_every``.
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
}
