// fastmuon/csrc/mlx/bindings.cpp: the `fastmuon._mlx_ext` extension.
//
// Built in nanobind's `mlx` domain so that mlx.core.array / Stream / Device
// objects pass straight through. Import mlx.core before this module.
#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>

#include "xxt.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(_mlx_ext, m) {
  m.doc() =
      "fastmuon._mlx_ext: MLX primitives backed by fastmuon's CPU kernels "
      "(BLAS) and, on Apple silicon, Metal kernels.";

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
    stream (Stream or Device, optional): where to run. Only the CPU is
        implemented so far; a GPU stream raises at evaluation.

Returns:
    array: ``(..., m, m)`` array of ``x``'s dtype.

Raises:
    ValueError: ``x`` has fewer than 2 dimensions or a non-floating /
        float64 dtype.
)doc");
}
