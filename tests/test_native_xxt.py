"""Tests of the compiled Gram-matrix kernel C = X X^T.

Covers ``fastmuon._blas.xxt`` (numpy arrays, torch CPU tensors) and the MLX
primitive ``fastmuon._mlx_ext.xxt``, against a float64 numpy reference.

Tolerance: ``native_helpers.assert_within_dot_bound`` (a stated multiple of the
dot-product rounding bound gamma_k |X| |X|^T, see there).
"""

from __future__ import annotations

import numpy as np
import pytest
from support.native_helpers import MLX_DTYPES, assert_exactly_symmetric, assert_within_dot_bound, mx_to_np

# (batch, m, k): 1x1, 1xn, odd rectangular both ways, a batch, k == 0.
BLAS_SHAPES = [(1, 1, 1), (1, 1, 37), (1, 70, 45), (1, 33, 100), (3, 70, 45), (2, 4, 0)]
# Arbitrary leading dims for the MLX op, including 4-D.
MLX_SHAPES = [(1, 1), (1, 37), (70, 45), (33, 100), (3, 70, 45), (2, 3, 17, 29)]


def _gram_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 reference X X^T and |X| |X|^T (the error-bound scale) of x."""
    x64 = np.asarray(x, dtype=np.float64)
    xt = np.swapaxes(x64, -1, -2)
    return x64 @ xt, np.abs(x64) @ np.abs(xt)


def _assert_within_bound(c, x, u_out: float = 0.0, eta_out: float = 0.0) -> None:
    """|c - x x^T| within the dot-product bound for k = x.shape[-1] terms."""
    ref, scale = _gram_ref(x)
    assert_within_dot_bound(c, ref, scale, x.shape[-1], u_out=u_out, eta_out=eta_out)


# --------------------------------------------------------------- _blas.xxt --


@pytest.mark.parametrize("shape", BLAS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_blas_xxt_numpy(blas_ext, rng, shape):
    batch, m, k = shape
    x = rng.standard_normal(shape).astype(np.float32)
    out = np.full((batch, m, m), np.nan, dtype=np.float32)  # poisoned
    assert blas_ext.xxt(x, out) is None
    assert not np.isnan(out).any(), "output not fully written"
    _assert_within_bound(out, x)
    assert_exactly_symmetric(out)


def test_blas_xxt_2d_and_readonly_input(blas_ext, rng):
    x = rng.standard_normal((33, 100)).astype(np.float32)
    x.setflags(write=False)
    out = np.full((33, 33), np.nan, dtype=np.float32)
    blas_ext.xxt(x, out)
    _assert_within_bound(out, x)
    assert_exactly_symmetric(out)


def test_blas_xxt_large_is_symmetric(blas_ext, rng):
    # Large enough that the BLAS blocks and the mirror crosses tile edges.
    x = rng.standard_normal((1, 300, 257)).astype(np.float32)
    out = np.full((1, 300, 300), np.nan, dtype=np.float32)
    blas_ext.xxt(x, out)
    _assert_within_bound(out, x)
    assert_exactly_symmetric(out)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 70, 45), (3, 33, 100)], ids=str)
def test_blas_xxt_torch(blas_ext, seed, shape):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    out = torch.full((shape[0], shape[1], shape[1]), float("nan"), dtype=torch.float32)
    blas_ext.xxt(x, out)
    c = out.numpy()
    assert not np.isnan(c).any()
    _assert_within_bound(c, x.numpy())
    assert_exactly_symmetric(c)


def test_blas_xxt_torch_noncontiguous_rejected(blas_ext):
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 45, 70).transpose(1, 2)  # (2, 70, 45) view
    out = torch.empty(2, 70, 70)
    with pytest.raises(ValueError, match=r"`x` must be C-contiguous"):
        blas_ext.xxt(x, out)


def test_blas_xxt_errors(blas_ext):
    x = np.ones((2, 5, 3), np.float32)
    out = np.zeros((2, 5, 5), np.float32)
    with pytest.raises(TypeError, match=r"`x` must have dtype float32, got float64"):
        blas_ext.xxt(x.astype(np.float64), out)
    with pytest.raises(TypeError, match=r"`out` must have dtype float32, got float16"):
        blas_ext.xxt(x, out.astype(np.float16))
    with pytest.raises(ValueError, match=r"`out` must have shape \(2, 5, 5\)"):
        blas_ext.xxt(x, np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"`out` must have 3 dimensions"):
        blas_ext.xxt(x, np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match=r"`x` must have shape \(m, k\) or \(batch, m, k\), got shape \(5,\)"):
        blas_ext.xxt(np.ones(5, np.float32), np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match=r"`x` must be C-contiguous"):
        blas_ext.xxt(np.ones((2, 3, 5), np.float32).transpose(0, 2, 1), out)
    with pytest.raises(TypeError, match=r"`x` must be a CPU array"):
        blas_ext.xxt([[1.0]], np.zeros((1, 1), np.float32))
    with pytest.raises(TypeError, match=r"`out` must be a CPU array"):
        blas_ext.xxt(x, None)
    ro = np.zeros((2, 5, 5), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=r"`out` is read-only"):
        blas_ext.xxt(x, ro)
    buf = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"`out` must not overlap `x`"):
        blas_ext.xxt(buf, buf)


def test_blas_num_threads(blas_ext):
    before = blas_ext.get_num_threads()
    assert before >= 1
    try:
        blas_ext.set_num_threads(1)
        assert blas_ext.get_num_threads() == 1
    finally:
        blas_ext.set_num_threads(before)
    assert blas_ext.get_num_threads() == before
    with pytest.raises(ValueError, match="n must be >= 1"):
        blas_ext.set_num_threads(0)


# ------------------------------------------------------------ _mlx_ext.xxt --


@pytest.mark.parametrize("shape", MLX_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlx_xxt_shapes(mlx_ext, rng, shape):
    import mlx.core as mx

    x_np = rng.standard_normal(shape).astype(np.float32)
    c = mlx_ext.xxt(mx.array(x_np), stream=mx.cpu)
    assert c.shape == (*shape[:-1], shape[-2])
    assert c.dtype == mx.float32
    c_np = np.array(c)
    _assert_within_bound(c_np, x_np)
    assert_exactly_symmetric(c_np)


def _views():
    """(name, builder) of non-contiguous mlx views; builder(mx, rng) -> array."""

    def transposed(mx, rng):
        return mx.array(rng.standard_normal((45, 70)).astype(np.float32)).T

    def sliced(mx, rng):
        return mx.array(rng.standard_normal((140, 50)).astype(np.float32))[::2, 2:47]

    def batch_swapped(mx, rng):
        base = mx.array(rng.standard_normal((33, 3, 100)).astype(np.float32))
        return mx.swapaxes(base, 0, 1)  # (3, 33, 100), strided

    def broadcast(mx, rng):
        base = mx.array(rng.standard_normal((1, 33, 20)).astype(np.float32))
        return mx.broadcast_to(base, (4, 33, 20))  # stride 0 on the batch axis

    def reversed_cols(mx, rng):
        return mx.array(rng.standard_normal((20, 31)).astype(np.float32))[:, ::-1]

    return [transposed, sliced, batch_swapped, broadcast, reversed_cols]


@pytest.mark.parametrize("make_view", _views(), ids=lambda f: f.__name__)
def test_mlx_xxt_noncontiguous_views(mlx_ext, rng, make_view):
    import mlx.core as mx

    x = make_view(mx, rng)
    x_np = np.array(x)  # the logical values of the view
    c_np = np.array(mlx_ext.xxt(x, stream=mx.cpu))
    _assert_within_bound(c_np, x_np)
    assert_exactly_symmetric(c_np)


@pytest.mark.parametrize("dtype_name,u_out,eta_out", MLX_DTYPES, ids=[d[0] for d in MLX_DTYPES])
@pytest.mark.parametrize("shape", [(70, 45), (3, 33, 100)], ids=str)
def test_mlx_xxt_dtypes(mlx_ext, rng, dtype_name, u_out, eta_out, shape):
    import mlx.core as mx

    dtype = getattr(mx, dtype_name)
    x = mx.array(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    x_rounded = mx_to_np(x)  # the reference sees the input the op saw
    c = mlx_ext.xxt(x, stream=mx.cpu)
    assert c.dtype == dtype
    c_np = mx_to_np(c)
    _assert_within_bound(c_np, x_rounded, u_out=u_out, eta_out=eta_out)
    assert_exactly_symmetric(c_np)


def test_mlx_xxt_errors(mlx_ext):
    import mlx.core as mx

    with pytest.raises(ValueError, match=r"at least 2 dimensions .* got shape \(5,\)"):
        mlx_ext.xxt(mx.ones((5,)), stream=mx.cpu)
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        mlx_ext.xxt(mx.array(1.0), stream=mx.cpu)
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16 .* int32"):
        mlx_ext.xxt(mx.ones((3, 4), dtype=mx.int32), stream=mx.cpu)
    with pytest.raises(TypeError):
        mlx_ext.xxt(np.ones((3, 4), np.float32), stream=mx.cpu)
    with pytest.raises(TypeError):
        mlx_ext.xxt(mx.ones((3, 4)), mx.cpu)  # stream is keyword-only


def test_mlx_xxt_gpu_stream_raises_cleanly(mlx_ext):
    import mlx.core as mx

    if mx.metal.is_available():
        with pytest.raises(RuntimeError, match="CPU kernels only"):
            mx.eval(mlx_ext.xxt(mx.ones((3, 4)), stream=mx.gpu))
    else:
        with pytest.raises(ValueError):  # mlx rejects gpu streams without a GPU
            mx.eval(mlx_ext.xxt(mx.ones((3, 4)), stream=mx.gpu))


def test_mlx_xxt_inside_compile(mlx_ext, rng):
    import mlx.core as mx

    def f(a):
        return 2.0 * mlx_ext.xxt(a, stream=mx.cpu) + 1.0

    x_np = rng.standard_normal((3, 33, 100)).astype(np.float32)
    x = mx.array(x_np)
    eager = np.array(f(x))
    compiled = mx.compile(f)
    got = np.array(compiled(x))
    # Same primitive, same data: the compiled graph must match eagerly.
    np.testing.assert_array_equal(got, eager)
    # A second call with new data reuses the compiled graph.
    x2_np = rng.standard_normal((3, 33, 100)).astype(np.float32)
    np.testing.assert_array_equal(np.array(compiled(mx.array(x2_np))), np.array(f(mx.array(x2_np))))
    _assert_within_bound((got - 1.0) / 2.0, x_np)


def test_mlx_xxt_vjp_jvp_vmap(mlx_ext, rng):
    import mlx.core as mx

    x_np = rng.standard_normal((2, 9, 13)).astype(np.float32)
    g_np = rng.standard_normal((2, 9, 9)).astype(np.float32)
    t_np = rng.standard_normal((2, 9, 13)).astype(np.float32)
    x, g, t = mx.array(x_np), mx.array(g_np), mx.array(t_np)

    def fn(a):
        return mlx_ext.xxt(a, stream=mx.cpu)

    # vjp: (G + G^T) X; jvp: T X^T + X T^T. Each is a handful of fp32 dot
    # products of length <= 13 + 9, so compare at a few ulps of the scale.
    x64, g64, t64 = (a.astype(np.float64) for a in (x_np, g_np, t_np))
    vjp_ref = (g64 + np.swapaxes(g64, -1, -2)) @ x64
    p = t64 @ np.swapaxes(x64, -1, -2)
    jvp_ref = p + np.swapaxes(p, -1, -2)

    _, (vjp,) = mx.vjp(fn, [x], [g])
    _, (jvp,) = mx.jvp(fn, [x], [t])
    np.testing.assert_allclose(np.array(vjp), vjp_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(jvp), jvp_ref, rtol=1e-5, atol=1e-5)

    grad = mx.grad(lambda a: (fn(a) * g).sum())(x)
    np.testing.assert_allclose(np.array(grad), vjp_ref, rtol=1e-5, atol=1e-5)

    # vmap over the batch axis and over an axis after the matrix axes.
    c_vm = mx.vmap(fn, in_axes=0)(x)
    np.testing.assert_array_equal(np.array(c_vm), np.array(fn(x)))
    xm = mx.array(np.moveaxis(x_np, 0, -1))  # (9, 13, 2), map over last axis
    c_last = mx.vmap(fn, in_axes=2, out_axes=0)(xm)
    np.testing.assert_array_equal(np.array(c_last), np.array(fn(x)))
