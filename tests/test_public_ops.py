"""The public ops ``xxt`` / ``ba_plus_caa`` and the backend choice of ``orthogonalize``, in both
frameworks, through the same adaptors as the accuracy tests."""

from __future__ import annotations

import numpy as np
import pytest

from support.frameworks import FRAMEWORKS
from support.native_helpers import assert_exactly_symmetric, assert_within_dot_bound, require_native


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request):
    fw = FRAMEWORKS[request.param]()
    require_native("mlx_ext" if fw.name == "mlx" else "blas")
    return fw


def ops(fw):
    module = __import__(f"fastmuon.{fw.name}", fromlist=["xxt"])
    return module.xxt, module.ba_plus_caa


@pytest.mark.parametrize("backend", ["reference", "native", "auto"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (33, 100), (3, 7, 5), (2, 2, 6, 11)], ids=str)
def test_xxt_matches_float64(fw, backend, shape):
    xxt, _ = ops(fw)
    X64 = np.random.default_rng(0).standard_normal(shape)
    X = fw.array(X64, "float32")
    C = fw.to_numpy(xxt(X, backend=backend))
    Xr = fw.to_numpy(X)
    ref = Xr @ np.swapaxes(Xr, -1, -2)
    scale = np.abs(Xr) @ np.abs(np.swapaxes(Xr, -1, -2))
    assert_within_dot_bound(C, ref, scale, k=shape[-1])
    if backend != "reference":
        assert_exactly_symmetric(C)


@pytest.mark.parametrize("backend", ["reference", "native", "auto"])
@pytest.mark.parametrize("shape", [(1, 1), (45, 45), (3, 8, 8)], ids=str)
def test_ba_plus_caa_matches_float64(fw, backend, shape):
    _, ba_plus_caa = ops(fw)
    rng = np.random.default_rng(1)
    M = rng.standard_normal(shape)
    A64 = M + np.swapaxes(M, -1, -2)
    A = fw.array(A64, "float32")
    alpha, beta = 2.0315, -4.775
    out = fw.to_numpy(ba_plus_caa(A, alpha=alpha, beta=beta, backend=backend))
    Ar = fw.to_numpy(A)
    a32, b32 = float(np.float32(alpha)), float(np.float32(beta))
    ref = a32 * (Ar @ Ar) + b32 * Ar
    scale = abs(a32) * (np.abs(Ar) @ np.abs(Ar)) + abs(b32) * np.abs(Ar)
    assert_within_dot_bound(out, ref, scale, k=shape[-1] + 2)


def test_ops_keep_16bit_dtype(fw):
    xxt, ba_plus_caa = ops(fw)
    X = fw.array(np.ones((4, 6)), "bfloat16")
    assert fw.dtype_name(xxt(X)) == "bfloat16"
    assert fw.dtype_name(ba_plus_caa(xxt(X), alpha=1.0, beta=0.0)) == "bfloat16"


def test_ops_reject_bad_input(fw):
    xxt, ba_plus_caa = ops(fw)
    with pytest.raises(ValueError, match=r"X must be a matrix.*got shape \(5,\)"):
        xxt(fw.array(np.ones(5), "float32"))
    with pytest.raises(ValueError, match="A must be square"):
        ba_plus_caa(fw.array(np.ones((3, 4)), "float32"), alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="valid backends"):
        xxt(fw.array(np.ones((3, 4)), "float32"), backend="blas")
    with pytest.raises(ValueError, match="float64 input needs"):
        xxt(fw.array(np.ones((3, 4)), "float64"), backend="native")


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express", "gram"])
def test_auto_picks_native_on_cpu(fw, method):
    """"auto" must give bit-for-bit the native result for fp32 CPU inputs."""
    G = fw.array(np.random.default_rng(2).standard_normal((3, 20, 30)), "float32")
    auto = fw.to_numpy(fw.orthogonalize(G, method=method))
    native = fw.to_numpy(fw.orthogonalize(G, method=method, backend="native"))
    np.testing.assert_array_equal(auto, native)


def test_native_refuses_other_compute_dtypes(fw):
    G = fw.array(np.ones((4, 6)), "float32")
    with pytest.raises(ValueError, match="computes in float32"):
        fw.orthogonalize(G, backend="native", dtype=fw.dtype("bfloat16"))


def test_mlx_ops_take_a_stream_and_compose_in_compile():
    mx = pytest.importorskip("mlx.core")
    require_native("mlx_ext")
    from fastmuon.mlx import ba_plus_caa, xxt

    X = mx.array(np.random.default_rng(3).standard_normal((3, 10, 14)).astype(np.float32))
    eager = ba_plus_caa(xxt(X, stream=mx.cpu), alpha=2.0, beta=-1.0, stream=mx.cpu)
    compiled = mx.compile(lambda x: ba_plus_caa(xxt(x), alpha=2.0, beta=-1.0))(X)
    np.testing.assert_array_equal(np.array(eager), np.array(compiled))
    for backend in ("reference", "native"):
        out = xxt(X, backend=backend, stream=mx.cpu)
        assert out.shape == (3, 10, 10)


@pytest.mark.parametrize("backend", ["reference", "native", "auto"])
def test_empty_matrices(fw, backend):
    """An empty matrix (a zero dimension, or an empty batch) gives an empty result, and X X^T of
    (m, 0) is the m x m zero matrix, on every backend."""
    xxt, ba_plus_caa = ops(fw)
    for shape in [(0, 16), (16, 0), (3, 0, 5), (0, 4, 4)]:
        O = fw.orthogonalize(fw.array(np.zeros(shape), "float32"), backend=backend)
        assert tuple(O.shape) == shape and fw.dtype_name(O) == "float32"
    assert tuple(xxt(fw.array(np.zeros((0, 16)), "float32"), backend=backend).shape) == (0, 0)
    zeros = fw.to_numpy(xxt(fw.array(np.zeros((4, 0)), "float32"), backend=backend))
    assert zeros.shape == (4, 4) and not zeros.any()
    A = ba_plus_caa(fw.array(np.zeros((2, 0, 0)), "float32"), alpha=1.0, beta=2.0, backend=backend)
    assert tuple(A.shape) == (2, 0, 0)


def test_inputs_that_need_gradients_keep_autograd():
    """The native and Triton kernels have no autograd: "auto" keeps such inputs on the reference,
    whose result differentiates; an explicit native backend refuses them."""
    torch = pytest.importorskip("torch")
    require_native("blas")
    from fastmuon.torch import orthogonalize

    G = torch.randn(8, 12, dtype=torch.float32, requires_grad=True)
    O = orthogonalize(G)  # fp32 on the CPU: "auto" would take the native kernels without autograd
    assert O.requires_grad
    O.sum().backward()
    assert G.grad is not None and torch.isfinite(G.grad).all()
    torch.testing.assert_close(O, orthogonalize(G.detach(), backend="reference"), rtol=0, atol=0)
    with pytest.raises(ValueError, match="autograd"):
        orthogonalize(G, backend="native")
    with torch.no_grad():
        assert not orthogonalize(G, backend="native").requires_grad


def test_mlx_float64_input_on_the_default_backend():
    """float64 input with the default fp32 compute runs (the native kernels take it rounded to
    fp32, as in torch) and comes back float64, within fp32 rounding of the float64 iteration."""
    mx = pytest.importorskip("mlx.core")
    require_native("mlx_ext")
    from fastmuon.mlx import orthogonalize

    G = np.random.default_rng(1).standard_normal((12, 20))
    O = orthogonalize(mx.array(G, dtype=mx.float64))
    assert O.dtype == mx.float64
    exact = orthogonalize(mx.array(G, dtype=mx.float64), dtype=mx.float64)
    assert np.abs(np.array(O) - np.array(exact)).max() < 1e-4
    assert np.abs(np.array(O) - np.array(exact)).max() > 0  # it did run in fp32


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("magnitude", [1e19, 1e30])
def test_large_and_tiny_entries_do_not_overflow_the_norm(fw, backend, magnitude):
    """The normalization scales before squaring: entries of 1e19 and more (whose squares
    overflow fp32) give the same result as the unscaled matrix, to fp32 rounding."""
    G = np.random.default_rng(4).standard_normal((8, 12))
    O = fw.to_numpy(fw.orthogonalize(fw.array(G * magnitude, "float32"), backend=backend))
    expected = fw.to_numpy(fw.orthogonalize(fw.array(G, "float32"), backend=backend))
    assert np.isfinite(O).all() and np.abs(O - expected).max() < 1e-5


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("dtype, compute, exponent", [
    ("float64", "float32", 130),  # beyond float32's range
    ("float64", "float32", 1000),
    ("float64", "bfloat16", 1023),  # next to float64's largest
    ("float32", "float32", 127),  # next to float32's largest, 3.4e38
    ("float32", "bfloat16", 127),  # ... which rounds to inf in bfloat16
], ids=str)
def test_huge_finite_inputs_are_scaled_before_they_are_rounded(fw, backend, dtype, compute, exponent):
    """Finite input too large for the compute dtype gives the result of the unscaled matrix:
    the normalization scales it in its own dtype before rounding (a float64 1e39 and a float32
    3.4e38 were NaN or zeros). Bound: the error against float64 is at most 4x the unscaled
    input's own (two runs' rounding errors differ by up to about 2x here)."""
    if backend == "native" and compute != "float32":
        pytest.skip("the native kernels compute in float32")
    G = np.random.default_rng(3).standard_normal((8, 12))
    G *= 1.999 / np.abs(G).max()  # so that the largest scaled entry is 1.999 * 2^exponent
    O = fw.to_numpy(fw.orthogonalize(fw.array(G * 2.0**exponent, dtype), backend=backend, dtype=fw.dtype(compute)))
    unscaled = fw.to_numpy(fw.orthogonalize(fw.array(G, dtype), backend=backend, dtype=fw.dtype(compute)))
    exact = fw.to_numpy(fw.orthogonalize(fw.array(G, "float64"), backend="reference", dtype=fw.dtype("float64")))
    assert np.isfinite(O).all()
    assert np.abs(O - exact).max() <= 4 * np.abs(unscaled - exact).max()


@pytest.mark.parametrize("dtype, exponent", [
    ("float32", -133),  # a subnormal float32 matrix, computed in float64
    ("float32", -149),  # float32's smallest subnormal
    ("bfloat16", -133),
], ids=str)
def test_subnormal_inputs_computed_in_float64_equal_their_float64_copy(fw, dtype, exponent):
    """A float32 (or bfloat16) matrix of subnormals computed in float64 is normalized by a power
    of two below float32's range; its inverse, once rounded to the input's dtype, overflowed to
    inf and the result was all NaN. It now equals the same matrix given as float64."""
    G = np.random.default_rng(5).standard_normal((4, 13))
    G *= 1.5 / np.abs(G).max() * 2.0**exponent
    G_in = fw.array(G, dtype)
    G64 = fw.to_numpy(G_in).astype(np.float64)  # the values the input holds
    O = fw.to_numpy(fw.orthogonalize(G_in, backend="reference", dtype=fw.dtype("float64")))
    want = fw.to_numpy(fw.orthogonalize(fw.array(G64, "float64"), backend="reference", dtype=fw.dtype("float64")))
    assert np.isfinite(O).all() and np.abs(O).max() > 0
    np.testing.assert_allclose(O, want.astype(O.dtype), rtol=0, atol=2 * float(np.finfo(np.float32).eps))


@pytest.mark.parametrize("magnitude", [1e-6, 0.0], ids=str)
def test_aol_in_float16_of_an_underflowing_gram_matrix_stays_finite(fw, magnitude):
    """In float16, X X^T of an eps-dominated X (entries near 1e-6) underflows to zero; AOL's
    d = 1 / sqrt(row sum), with the sum floored at float32's smallest normal, was about 9e18 and
    D X (or d itself, rounded to float16) overflowed: the output was all NaN. The sum is floored
    at the smallest normal of the Gram matrix's dtype: the rows are scaled less than exact AOL
    would, within its bound, and the result stays finite (zero for a zero input)."""
    G = np.random.default_rng(6).standard_normal((4, 13))
    G *= magnitude / np.abs(G).max()
    O = fw.to_numpy(fw.orthogonalize(fw.array(G, "float32"), method="aol", steps=5, eps=1.0,
                                     backend="reference", dtype=fw.dtype("float16")))
    assert np.isfinite(O).all()
    assert np.linalg.norm(O, 2) <= 1.5  # Polar Express maps singular values in [0, 1] below 1.2
    if magnitude == 0.0:
        assert not O.any()


@pytest.mark.parametrize("n", [64, 93, 100])
def test_a_constant_matrix_is_as_accurate_at_any_magnitude(fw, n):
    """A constant matrix (rank 1, its one singular value where Polar Express's last steps are
    steep) of 1e20 in fp32: its normalized entries are not powers of two, and a one-pass fp32
    norm over the m * n equal squares rounded 67 ulps off, which the iteration amplified to
    7e-4 (torch) and 6e-3 (MLX) in spectral distance, 15-60x its error at magnitude 1 or 3.
    The reference backend's fp32 result must be within 2x of its error at those magnitudes."""
    def error(magnitude):
        G = np.full((n, n), magnitude)
        O = fw.to_numpy(fw.orthogonalize(fw.array(G, "float32"), backend="reference", dtype=fw.dtype("float32")))
        R = fw.to_numpy(fw.orthogonalize(fw.array(G, "float64"), backend="reference", dtype=fw.dtype("float64")))
        return np.linalg.norm(O - R, 2)

    assert error(1e20) <= 2 * max(error(1.0), error(3.0))
