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
  int64_t expected = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    const auto n = static_cast<int64_t>(a.shape(i));
    if (n == 0) {
      return true;
    }
    if (n != 1 && a.stride(i) != expected) {
      return false;
    }
    expected *= n;
  }
  return true;
}

// Convert `obj` to a read-only ndarray view without copying, or raise
// TypeError naming the argument.
ROArray as_array(nb::handle obj, const char* name) {
  ROArray arr;
  if (!nb::try_cast(obj, arr, /*convert=*/false)) {
    throw nb::type_error(
        (std::string("xxt(): `") + name +
         "` must be a CPU array that supports DLPack or the buffer protocol "
         "(numpy.ndarray, torch CPU tensor without requires_grad, ...); got " +
         obj_type_name(obj))
            .c_str());
  }
  return arr;
}

void check_float32_cpu(const ROArray& a, const char* name, size_t ndim) {
  if (a.device_type() != nb::device::cpu::value) {
    throw nb::value_error(
        (std::string("xxt(): `") + name +
         "` must live in CPU memory (DLPack device type " +
         std::to_string(a.device_type()) + ")")
            .c_str());
  }
  if (a.dtype() != nb::dtype<float>()) {
    throw nb::type_error((std::string("xxt(): `") + name +
                          "` must have dtype float32, got " +
                          dtype_str(a.dtype()))
                             .c_str());
  }
  if (a.ndim() != ndim) {
    throw nb::value_error(
        (std::string("xxt(): `") + name + "` must have " +
         std::to_string(ndim) + " dimensions, got shape " + shape_str(a))
            .c_str());
  }
  if (!is_c_contiguous(a)) {
    throw nb::value_error(
        (std::string("xxt(): `") + name +
         "` must be C-contiguous (row-major, no gaps); got a strided view of "
         "shape " +
         shape_str(a) + ". Pass a contiguous copy (np.ascontiguousarray / "
                        "tensor.contiguous()).")
            .c_str());
  }
}

void xxt(nb::handle x_obj, nb::handle out_obj) {
  ROArray x = as_array(x_obj, "x");
  const size_t nd = x.ndim();
  if (nd != 2 && nd != 3) {
    throw nb::value_error(
        ("xxt(): `x` must have shape (m, k) or (batch, m, k), got shape " +
         shape_str(x))
            .c_str());
  }
  check_float32_cpu(x, "x", nd);

  RWArray out_rw;
  if (!nb::try_cast(out_obj, out_rw, /*convert=*/false)) {
    ROArray probe;
    if (nb::try_cast(out_obj, probe, /*convert=*/false)) {
      throw nb::value_error("xxt(): `out` is read-only; pass a writable array");
    }
    as_array(out_obj, "out");  // raises the TypeError naming `out`
  }
  ROArray out(out_rw);
  check_float32_cpu(out, "out", nd);

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

  const auto* xp = static_cast<const float*>(x.data());
  auto* op = static_cast<float*>(out_rw.data());
  const auto* x_lo = reinterpret_cast<const char*>(xp);
  const auto* x_hi = x_lo + x.nbytes();
  const auto* o_lo = reinterpret_cast<const char*>(op);
  const auto* o_hi = o_lo + out.nbytes();
  if (x.nbytes() > 0 && out.nbytes() > 0 && x_lo < o_hi && o_lo < x_hi) {
    throw nb::value_error("xxt(): `out` must not overlap `x`");
  }

  nb::gil_scoped_release release;
  fastmuon::cpu::xxt_f32(xp, op, batch, m, k);
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
