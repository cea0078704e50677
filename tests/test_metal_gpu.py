"""The Metal kernels on a real Apple GPU: kernel vs float64 reference, odd shapes, batches,
every dtype, poisoned outputs, exact symmetry, and the whole iteration.

The kernels are ``fastmuon.mlx.backends.metal_kernels`` (``mx.fast.metal_kernel``), which
``backend="metal"`` and ``backend="auto"`` on an Apple GPU use; the C++ primitives
(``fastmuon._mlx_ext``) have CPU kernels only, and stay on the CPU with a GPU default device.

Everything here skips, saying why, where ``mx.metal.is_available()`` is False (Linux, CI).
Not yet run on Apple hardware: no Mac is available to this project (see the README).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from support.native_helpers import require_native  # noqa: E402
from support.native_helpers import MLX_DTYPES, assert_exactly_symmetric, assert_within_dot_bound, mx_to_np  # noqa: E402

pytestmark = pytest.mark.skipif(
    not mx.metal.is_available(),
    reason="needs an Apple GPU: mx.metal.is_available() is False (Metal needs macOS on Apple "
    "silicon and the macOS mlx wheel)",
)

METHODS = ("newton_schulz", "polar_express", "gram", "aol")
XXT_SHAPES = [(1, 1), (5, 3), (33, 100), (70, 45), (64, 64), (3, 40, 56), (2, 2, 31, 33), (300, 200)]
SQUARE_SHAPES = [(1, 1), (5, 5), (33, 33), (70, 70), (3, 64, 64), (2, 129, 129)]
ALPHA_BETA = [(15.878769915207462, -22.48329292557795), (2.0315, -4.7750), (1.0, 0.0), (0.0, 1.0)]


def _input(rng, shape, dtype):
    """(mx array in dtype, its exact float64 values)."""
    a = mx.array(rng.standard_normal(shape).astype(np.float32)).astype(getattr(mx, dtype))
    return a, mx_to_np(a).astype(np.float64)


def _symmetric_input(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(np.float32)
    x = (x + np.swapaxes(x, -1, -2)) / np.float32(2)
    a = mx.array(x).astype(getattr(mx, dtype))
    return a, mx_to_np(a).astype(np.float64)


def _check_xxt(out, x64, u_out, eta):
    c = mx_to_np(out).astype(np.float64)
    assert not np.isnan(c).any(), "output not fully written"
    assert_exactly_symmetric(c)
    xt = np.swapaxes(x64, -1, -2)
    assert_within_dot_bound(c, x64 @ xt, np.abs(x64) @ np.abs(xt), max(x64.shape[-1], 1), u_out, eta)


def _check_ba_plus_caa(out, a64, alpha, beta, u_out, eta):
    c = mx_to_np(out).astype(np.float64)
    assert not np.isnan(c).any(), "output not fully written"
    assert_exactly_symmetric(c)
    al, be = float(np.float32(alpha)), float(np.float32(beta))
    ref = al * (a64 @ a64) + be * a64
    scale = abs(al) * (np.abs(a64) @ np.abs(a64)) + abs(be) * np.abs(a64)
    assert_within_dot_bound(c, ref, scale, a64.shape[-1] + 2, u_out, eta)


# --------------------------------------------------- metal_kernel path (Python) --


@pytest.mark.parametrize("dtype,u_out,eta", MLX_DTYPES)
@pytest.mark.parametrize("shape", XXT_SHAPES, ids=str)
def test_metal_kernel_xxt(rng, shape, dtype, u_out, eta):
    from fastmuon.mlx.backends import metal_kernels

    x, x64 = _input(rng, shape, dtype)
    out = metal_kernels.xxt(x, init_value=float("nan"))  # poisoned: every entry must be written
    assert out.dtype == x.dtype and out.shape == (*shape[:-1], shape[-2])
    _check_xxt(out, x64, u_out, eta)


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA, ids=str)
@pytest.mark.parametrize("dtype,u_out,eta", MLX_DTYPES)
@pytest.mark.parametrize("shape", SQUARE_SHAPES, ids=str)
def test_metal_kernel_ba_plus_caa(rng, shape, dtype, u_out, eta, alpha, beta):
    from fastmuon.mlx.backends import metal_kernels

    a, a64 = _symmetric_input(rng, shape, dtype)
    out = metal_kernels.ba_plus_caa(a, alpha, beta, init_value=float("nan"))
    assert out.dtype == a.dtype and out.shape == shape
    _check_ba_plus_caa(out, a64, alpha, beta, u_out, eta)


def test_metal_kernel_ba_plus_caa_reads_only_the_upper_triangle(rng):
    from fastmuon.mlx.backends import metal_kernels

    a, a64 = _symmetric_input(rng, (70, 70), "float32")
    lower = np.tril(np.ones((70, 70), dtype=bool), -1)
    poisoned = mx.where(mx.array(lower), mx.array(np.nan, dtype=mx.float32), a)
    np.testing.assert_array_equal(
        mx_to_np(metal_kernels.ba_plus_caa(poisoned, 2.0, -1.0)),
        mx_to_np(metal_kernels.ba_plus_caa(a, 2.0, -1.0)),
    )


def test_metal_kernel_strided_inputs(rng):
    from fastmuon.mlx.backends import metal_kernels

    x, x64 = _input(rng, (56, 40), "float32")
    _check_xxt(metal_kernels.xxt(x.T), x64.T, 0.0, 0.0)  # transposed view
    wide, wide64 = _input(rng, (40, 112), "float32")
    _check_xxt(metal_kernels.xxt(wide[:, ::2]), wide64[:, ::2], 0.0, 0.0)  # every other column


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (80, 48), (1, 37), (3, 40, 56), (300, 500)], ids=str)
def test_orthogonalize_backend_metal_fp32(rng, method, shape):
    from support.frameworks import MlxFramework
    from support.spectral import matrix_with_spectrum
    from test_orthogonalize import check_against_exact

    from fastmuon.plan import make_plan
    from fastmuon.mlx import orthogonalize

    fw = MlxFramework()
    G = fw.array(matrix_with_spectrum(rng, shape, "sigma_min_1e-3"), "float32")
    O = orthogonalize(G, method=method, backend="metal", dtype=mx.float32)
    assert O.shape == G.shape and O.dtype == mx.float32
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), make_plan(method, 5, None), "float32", "float32")


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_orthogonalize_backend_metal_16bit_compute(rng, method, compute):
    from support.frameworks import MlxFramework
    from support.spectral import matrix_with_spectrum
    from test_orthogonalize import check_against_exact

    from fastmuon.plan import make_plan
    from fastmuon.mlx import orthogonalize

    fw = MlxFramework()
    G = fw.array(matrix_with_spectrum(rng, (2, 40, 56), "well_conditioned"), "float32")
    if method == "gram":  # refused in 16 bits (fastmuon.plan.GRAM_MIN_BITS)
        with pytest.raises(ValueError, match='method="gram"'):
            orthogonalize(G, method=method, backend="metal", dtype=getattr(mx, compute))
        return
    O = orthogonalize(G, method=method, backend="metal", dtype=getattr(mx, compute))
    assert O.dtype == mx.float32
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), make_plan(method, 5, None), compute, "float32")


def test_auto_picks_metal_on_the_gpu():
    from fastmuon.mlx.orthogonalize import select_backend

    if mx.default_device().type != mx.DeviceType.gpu:
        pytest.skip("the default device is not the GPU")
    assert select_backend("auto", mx.bfloat16) == "metal"


# ------------------------------------------------------- C++ primitives: CPU only --


def test_native_primitives_stay_on_the_cpu(rng):
    """With the GPU as default device, fastmuon._mlx_ext's ops run on the CPU stream, and a GPU
    stream is refused, naming the op and the Metal backend."""
    ext = require_native("mlx_ext")
    assert mx.default_device().type == mx.DeviceType.gpu
    x, x64 = _input(rng, (5, 7), "float32")
    _check_xxt(ext.xxt(x), x64, 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r'\[fastmuon\.xxt\] .*CPU kernels only.*backend="metal"'):
        ext.xxt(x, stream=mx.gpu)
