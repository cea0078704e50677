"""Tests of the compiled step kernels ``ba_plus_caa`` and the fused ``orthogonalize``.

Covers ``fastmuon._blas`` (numpy arrays, torch CPU tensors) and the MLX primitives of
``fastmuon._mlx_ext``.

* ``ba_plus_caa`` (alpha A A + beta A, A symmetric) against float64 numpy, within the
  dot-product rounding bound of ``native_helpers`` for k = m + 2 terms (the m products, the
  alpha scaling and the beta A term).
* ``orthogonalize`` against the exact float64 iteration, within the allowance that
  ``test_orthogonalize.check_against_exact`` applies to every backend, and against the
  float64 run of the Python reference iteration (``backend="reference"``), which is itself
  within ~1e-11 of the exact one.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from support.native_helpers import (
    MLX_DTYPES,
    assert_exactly_symmetric,
    assert_within_dot_bound,
    mx_to_np,
    plan_arg,
    require_native,
)
from support.seeds import stable_seed
from support.spectral import SPECTRA, exact_iteration, matrix_with_spectrum, rounding_allowance
from test_orthogonalize import check_against_exact

from fastmuon.plan import GRAM_RESTART_EVERY, make_plan

METHODS = ("newton_schulz", "polar_express", "gram", "aol")


def _symmetric(rng, shape) -> np.ndarray:
    """Exactly symmetric float32 matrices ((x + x^T) / 2 rounds the same both ways)."""
    x = rng.standard_normal(shape).astype(np.float32)
    return (x + np.swapaxes(x, -1, -2)) / np.float32(2)


def _assert_ba_plus_caa(c, a, alpha, beta, u_out=0.0, eta_out=0.0) -> None:
    """|c - (alpha a a + beta a)| within the bound; alpha, beta as the kernel sees them (fp32)."""
    a64 = np.asarray(a, dtype=np.float64)
    al, be = float(np.float32(alpha)), float(np.float32(beta))
    ref = al * (a64 @ a64) + be * a64
    scale = abs(al) * (np.abs(a64) @ np.abs(a64)) + abs(be) * np.abs(a64)
    assert_within_dot_bound(c, ref, scale, a.shape[-1] + 2, u_out=u_out, eta_out=eta_out)


# (alpha, beta): the Polar Express first step (c, b), Jordan's quintic, and pure terms.
ALPHA_BETA = [(15.878769915207462, -22.48329292557795), (2.0315, -4.7750), (1.0, 0.0), (0.0, 1.0)]


# -------------------------------------------------------- _blas.ba_plus_caa --

BLAS_SQUARE_SHAPES = [(1, 1, 1), (1, 45, 45), (1, 70, 70), (3, 70, 70), (45, 45), (2, 0, 0)]


@pytest.mark.parametrize("alpha,beta", ALPHA_BETA, ids=str)
@pytest.mark.parametrize("shape", BLAS_SQUARE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_blas_ba_plus_caa_numpy(blas_ext, rng, shape, alpha, beta):
    a = _symmetric(rng, shape)
    a_before = a.copy()
    out = np.full(shape, np.nan, dtype=np.float32)  # poisoned
    assert blas_ext.ba_plus_caa(a, out, alpha, beta) is None
    assert not np.isnan(out).any(), "output not fully written"
    np.testing.assert_array_equal(a, a_before)  # input untouched
    _assert_ba_plus_caa(out, a, alpha, beta)
    assert_exactly_symmetric(out)


@pytest.mark.parametrize("shape", [(1, 45, 45), (3, 70, 70), (33, 33)], ids=str)
def test_blas_ba_plus_caa_in_place(blas_ext, rng, shape):
    a = _symmetric(rng, shape)
    original = a.copy()
    blas_ext.ba_plus_caa(a, a, 2.0315, -4.7750)
    _assert_ba_plus_caa(a, original, 2.0315, -4.7750)
    assert_exactly_symmetric(a)
    # Same result as the out-of-place call, bit for bit.
    out = np.empty_like(original)
    blas_ext.ba_plus_caa(original, out, 2.0315, -4.7750)
    np.testing.assert_array_equal(a, out)


def test_blas_ba_plus_caa_reads_only_upper_triangle(blas_ext, rng):
    a = _symmetric(rng, (2, 40, 40))
    poisoned = a.copy()
    rows, cols = np.tril_indices(40, -1)
    poisoned[:, rows, cols] = np.nan
    out = np.full_like(a, np.nan)
    blas_ext.ba_plus_caa(poisoned, out, 0.5, 1.5)
    _assert_ba_plus_caa(out, a, 0.5, 1.5)
    blas_ext.ba_plus_caa(poisoned, poisoned, 0.5, 1.5)  # in place too
    np.testing.assert_array_equal(poisoned, out)


def test_blas_ba_plus_caa_large_is_symmetric(blas_ext, rng):
    # Large enough that the BLAS blocks and the mirror crosses tile edges.
    a = _symmetric(rng, (1, 300, 300))
    out = np.full_like(a, np.nan)
    blas_ext.ba_plus_caa(a, out, 0.375, -1.25)
    _assert_ba_plus_caa(out, a, 0.375, -1.25)
    assert_exactly_symmetric(out)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 45, 45), (3, 70, 70)], ids=str)
def test_blas_ba_plus_caa_torch(blas_ext, rng, shape):
    torch = pytest.importorskip("torch")
    a_np = _symmetric(rng, shape)
    a = torch.from_numpy(a_np.copy())
    out = torch.full(shape, float("nan"))
    blas_ext.ba_plus_caa(a, out, 2.0315, -4.7750)
    c = out.numpy()
    assert not np.isnan(c).any()
    _assert_ba_plus_caa(c, a_np, 2.0315, -4.7750)
    assert_exactly_symmetric(c)
    blas_ext.ba_plus_caa(a, a, 2.0315, -4.7750)  # in place on a tensor
    np.testing.assert_array_equal(a.numpy(), c)


def test_blas_ba_plus_caa_errors(blas_ext):
    a = np.eye(5, dtype=np.float32)[None].repeat(2, axis=0)
    out = np.zeros((2, 5, 5), np.float32)
    with pytest.raises(TypeError, match=r"ba_plus_caa\(\): `a` must have dtype float32, got float64"):
        blas_ext.ba_plus_caa(a.astype(np.float64), out, 1.0, 0.0)
    with pytest.raises(TypeError, match=r"`out` must have dtype float32, got float16"):
        blas_ext.ba_plus_caa(a, out.astype(np.float16), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"`a` must have shape \(m, m\) or \(batch, m, m\), got shape \(2, 5, 4\)"):
        blas_ext.ba_plus_caa(np.zeros((2, 5, 4), np.float32), out, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"`a` must have shape .* got shape \(5,\)"):
        blas_ext.ba_plus_caa(np.zeros(5, np.float32), out, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"`out` must have the shape of `a`, \(2, 5, 5\), got \(3, 5, 5\)"):
        blas_ext.ba_plus_caa(a, np.zeros((3, 5, 5), np.float32), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"`out` must have 3 dimensions"):
        blas_ext.ba_plus_caa(a, np.zeros((5, 5), np.float32), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"`a` must be C-contiguous"):
        blas_ext.ba_plus_caa(np.zeros((5, 2, 5), np.float32).transpose(1, 0, 2), out, 1.0, 0.0)
    with pytest.raises(TypeError, match=r"`a` must be a CPU array"):
        blas_ext.ba_plus_caa([[1.0]], np.zeros((1, 1), np.float32), 1.0, 0.0)
    ro = np.zeros((2, 5, 5), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=r"`out` is read-only"):
        blas_ext.ba_plus_caa(a, ro, 1.0, 0.0)
    buf = np.zeros((3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"`out` must be `a` itself or not overlap it"):
        blas_ext.ba_plus_caa(buf[:2], buf[1:], 1.0, 0.0)


# ----------------------------------------------------- _mlx_ext.ba_plus_caa --

MLX_SQUARE_SHAPES = [(1, 1), (45, 45), (70, 70), (3, 70, 70), (2, 3, 17, 17), (0, 4, 4)]


@pytest.mark.parametrize("shape", MLX_SQUARE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_mlx_ba_plus_caa_shapes(mlx_ext, rng, shape):
    import mlx.core as mx

    a_np = _symmetric(rng, shape)
    c = mlx_ext.ba_plus_caa(mx.array(a_np), 2.0315, -4.7750, stream=mx.cpu)
    assert c.shape == shape and c.dtype == mx.float32
    c_np = np.array(c)
    _assert_ba_plus_caa(c_np, a_np, 2.0315, -4.7750)
    assert_exactly_symmetric(c_np)


@pytest.mark.parametrize("dtype_name,u_out,eta_out", MLX_DTYPES, ids=[d[0] for d in MLX_DTYPES])
@pytest.mark.parametrize("shape", [(45, 45), (3, 33, 33)], ids=str)
def test_mlx_ba_plus_caa_dtypes(mlx_ext, rng, dtype_name, u_out, eta_out, shape):
    import mlx.core as mx

    dtype = getattr(mx, dtype_name)
    a = mx.array(_symmetric(rng, shape)).astype(dtype)
    a_rounded = mx_to_np(a)  # the reference sees the input the op saw
    c = mlx_ext.ba_plus_caa(a, 0.5, -1.5, stream=mx.cpu)
    assert c.dtype == dtype
    c_np = mx_to_np(c)
    _assert_ba_plus_caa(c_np, a_rounded, 0.5, -1.5, u_out=u_out, eta_out=eta_out)
    assert_exactly_symmetric(c_np)


def _square_views():
    """Non-contiguous mlx views of symmetric matrices; builder(mx, rng) -> array."""

    def transposed(mx, rng):
        return mx.swapaxes(mx.array(_symmetric(rng, (2, 45, 45))), -1, -2)

    def sliced(mx, rng):
        s = _symmetric(rng, (70, 70))
        return mx.array(np.pad(s, ((0, 0), (0, 70))))[:, :70]  # row stride 140

    def every_other(mx, rng):
        s = _symmetric(rng, (30, 30))
        big = np.zeros((60, 60), np.float32)
        big[::2, ::2] = s
        return mx.array(big)[::2, ::2]

    def batch_swapped(mx, rng):
        s = _symmetric(rng, (3, 33, 33))
        return mx.swapaxes(mx.array(np.ascontiguousarray(np.swapaxes(s, 0, 1))), 0, 1)

    def broadcast(mx, rng):
        return mx.broadcast_to(mx.array(_symmetric(rng, (1, 20, 20))), (4, 20, 20))

    return [transposed, sliced, every_other, batch_swapped, broadcast]


@pytest.mark.parametrize("make_view", _square_views(), ids=lambda f: f.__name__)
def test_mlx_ba_plus_caa_noncontiguous_views(mlx_ext, rng, make_view):
    import mlx.core as mx

    a = make_view(mx, rng)
    a_np = np.array(a)  # the logical values of the view
    before = np.array(a)
    c_np = np.array(mlx_ext.ba_plus_caa(a, 1.5, 0.25, stream=mx.cpu))
    _assert_ba_plus_caa(c_np, a_np, 1.5, 0.25)
    assert_exactly_symmetric(c_np)
    np.testing.assert_array_equal(np.array(a), before)  # the view's buffer is untouched


def test_mlx_ba_plus_caa_does_not_clobber_a_live_input(mlx_ext, rng):
    """The primitive may take over its input's buffer only when nothing else holds it."""
    import mlx.core as mx

    a_np = _symmetric(rng, (3, 30, 30))
    a = mx.array(a_np)
    c = mlx_ext.ba_plus_caa(a, 2.0, -1.0, stream=mx.cpu)
    mx.eval(c)
    np.testing.assert_array_equal(np.array(a), a_np)
    # A temporary input (donatable) gives the same result.
    d = mlx_ext.ba_plus_caa(a * 1.0, 2.0, -1.0, stream=mx.cpu)
    np.testing.assert_array_equal(np.array(d), np.array(c))
    np.testing.assert_array_equal(np.array(a), a_np)


def test_mlx_ba_plus_caa_compile_vjp_jvp_vmap(mlx_ext, rng):
    import mlx.core as mx

    alpha, beta = 0.75, -1.25

    def fn(a):
        return mlx_ext.ba_plus_caa(a, alpha, beta, stream=mx.cpu)

    a_np = _symmetric(rng, (2, 9, 9))
    g_np = rng.standard_normal((2, 9, 9)).astype(np.float32)
    t_np = _symmetric(rng, (2, 9, 9))
    a, g, t = mx.array(a_np), mx.array(g_np), mx.array(t_np)

    compiled = mx.compile(lambda x: 2.0 * fn(x) + 1.0)
    np.testing.assert_array_equal(np.array(compiled(a)), np.array(2.0 * fn(a) + 1.0))
    # A different alpha must not reuse the compiled primitive (equivalence compares parameters).
    other = mx.compile(lambda x: mlx_ext.ba_plus_caa(x, 2 * alpha, beta, stream=mx.cpu))
    assert not np.array_equal(np.array(other(a)), np.array(fn(a)))

    # vjp: alpha (G A^T + A^T G) + beta G; jvp: alpha (T A + A T) + beta T. Short fp32 dot
    # products (length 9): compare at a few ulps of the scale.
    a64, g64, t64 = (x.astype(np.float64) for x in (a_np, g_np, t_np))
    at = np.swapaxes(a64, -1, -2)
    vjp_ref = alpha * (g64 @ at + at @ g64) + beta * g64
    jvp_ref = alpha * (t64 @ a64 + a64 @ t64) + beta * t64
    _, (vjp,) = mx.vjp(fn, [a], [g])
    _, (jvp,) = mx.jvp(fn, [a], [t])
    np.testing.assert_allclose(np.array(vjp), vjp_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(jvp), jvp_ref, rtol=1e-5, atol=1e-5)

    np.testing.assert_array_equal(np.array(mx.vmap(fn, in_axes=0)(a)), np.array(fn(a)))
    am = mx.array(np.moveaxis(a_np, 0, -1))  # (9, 9, 2), map over the last axis
    np.testing.assert_array_equal(np.array(mx.vmap(fn, in_axes=2, out_axes=0)(am)), np.array(fn(a)))


def test_mlx_ba_plus_caa_errors(mlx_ext):
    import mlx.core as mx

    with pytest.raises(ValueError, match=r"square matrices \(\.\.\., m, m\), got shape \(3, 4\)"):
        mlx_ext.ba_plus_caa(mx.ones((3, 4)), 1.0, 0.0, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        mlx_ext.ba_plus_caa(mx.ones((5,)), 1.0, 0.0, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16 .* int32"):
        mlx_ext.ba_plus_caa(mx.ones((3, 3), dtype=mx.int32), 1.0, 0.0, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16 .* float64"):
        mlx_ext.ba_plus_caa(mx.ones((3, 3), dtype=mx.float64), 1.0, 0.0, stream=mx.cpu)
    with pytest.raises(TypeError):
        mlx_ext.ba_plus_caa(mx.ones((3, 3)), 1.0, 0.0, mx.cpu)  # stream is keyword-only


def test_mlx_gpu_stream_raises_cleanly(mlx_ext):
    import mlx.core as mx

    plan = make_plan("polar_express", 5, None)
    calls = [
        lambda: mlx_ext.ba_plus_caa(mx.ones((3, 3)), 1.0, 0.0, stream=mx.gpu),
        lambda: mlx_ext.orthogonalize(mx.ones((3, 4)), plan_arg(plan), stream=mx.gpu),
    ]
    for call in calls:
        if mx.metal.is_available():
            with pytest.raises(RuntimeError, match="CPU kernels only"):
                mx.eval(call())
        else:
            with pytest.raises(ValueError):  # mlx rejects gpu streams without a GPU
                mx.eval(call())


# ------------------------------------------------------------ orthogonalize --

# (..., rows, cols): wide, tall (iterated without a transposed copy), a row, a column, batches.
ORTHO_SHAPES = [(48, 80), (80, 48), (1, 37), (37, 1), (3, 40, 56), (2, 2, 24, 16)]
ORTHO_APIS = ("numpy", "torch", "mlx")


def _run_native(api, G32: np.ndarray, plan, restart_every=GRAM_RESTART_EVERY) -> np.ndarray:
    """Orthogonalize the float32 array G32 with the native kernel through ``api``."""
    shape = G32.shape
    if api == "mlx":
        ext = require_native("mlx_ext")
        import mlx.core as mx

        out = ext.orthogonalize(mx.array(G32), plan_arg(plan, gram_restart_every=restart_every), stream=mx.cpu)
        assert out.shape == shape and out.dtype == mx.float32
        return np.array(out)
    ext = require_native("blas")
    x = np.ascontiguousarray(G32).reshape(-1, *shape[-2:])  # _blas takes (batch, rows, cols)
    if api == "torch":
        torch = pytest.importorskip("torch")
        t = torch.from_numpy(x.copy())
        assert ext.orthogonalize(t, plan=plan_arg(plan, gram_restart_every=restart_every)) is None
        return t.numpy().reshape(shape)
    x = x.copy()
    assert ext.orthogonalize(x, plan=plan_arg(plan, gram_restart_every=restart_every)) is None
    return x.reshape(shape)


def _reference_f64(G32: np.ndarray, method: str, steps: int = 5) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from fastmuon.torch import orthogonalize

    G = torch.from_numpy(G32.astype(np.float64))
    return orthogonalize(G, method=method, steps=steps, backend="reference", dtype=torch.float64).numpy()


def _label(api):
    return types.SimpleNamespace(name=f"native {api}")


@pytest.mark.parametrize("api", ORTHO_APIS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", ORTHO_SHAPES, ids=str)
@pytest.mark.parametrize("kind", SPECTRA)
def test_orthogonalize_matches_reference(api, method, shape, kind):
    rng = np.random.default_rng(stable_seed(method, shape, kind))
    G32 = matrix_with_spectrum(rng, shape, kind).astype(np.float32)
    plan = make_plan(method, 5, None)
    O = _run_native(api, G32, plan)
    G64 = G32.astype(np.float64)  # the input exactly as the kernel saw it
    _, allowance = check_against_exact(_label(api), G64, O.astype(np.float64), plan, "float32", "float32")
    # The float64 Python iteration is within ~1e-11 of the exact one: the native fp32 run must be
    # within the same allowance of it.
    ref = _reference_f64(G32, method)
    deviation = float(np.max(np.linalg.norm(O - ref, ord=2, axis=(-2, -1))))
    assert deviation <= allowance + 1e-9, f"|O - reference|_2 = {deviation:.3e} > {allowance:.3e}"


@pytest.mark.parametrize("api", ORTHO_APIS)
@pytest.mark.parametrize("restart_every", [1, 3, 100])
def test_orthogonalize_gram_restart_periods(api, restart_every):
    """The restart period changes the rounding, never the exact iteration."""
    rng = np.random.default_rng(21)
    G32 = matrix_with_spectrum(rng, (2, 32, 56), "sigma_min_1e-3").astype(np.float32)
    plan = make_plan("gram", 7, None)
    O = _run_native(api, G32, plan, restart_every)
    check_against_exact(_label(api), G32.astype(np.float64), O.astype(np.float64), plan, "float32", "float32")


@pytest.mark.parametrize("api", ORTHO_APIS)
@pytest.mark.parametrize("method,steps", [("polar_express", 1), ("newton_schulz", 8), ("gram", 1), ("gram", 2)])
def test_orthogonalize_step_counts(api, method, steps):
    rng = np.random.default_rng(13)
    G32 = matrix_with_spectrum(rng, (40, 24), "well_conditioned").astype(np.float32)
    plan = make_plan(method, steps, None)
    O = _run_native(api, G32, plan)
    check_against_exact(_label(api), G32.astype(np.float64), O.astype(np.float64), plan, "float32", "float32")


@pytest.mark.parametrize("api", ORTHO_APIS)
@pytest.mark.parametrize("method", METHODS)
def test_orthogonalize_zero_matrix_stays_zero(api, method):
    rng = np.random.default_rng(1)
    plan = make_plan(method, 5, None)
    for shape in [(5, 7), (7, 5), (6, 1)]:
        O = _run_native(api, np.zeros(shape, np.float32), plan)
        np.testing.assert_array_equal(O, np.zeros(shape))
    # A zero matrix inside a batch stays zero; its neighbours are unaffected.
    G32 = matrix_with_spectrum(rng, (3, 12, 20), "well_conditioned").astype(np.float32)
    G32[1] = 0.0
    O = _run_native(api, G32, plan)
    np.testing.assert_array_equal(O[1], 0.0)
    alone = _run_native(api, np.ascontiguousarray(G32[[0, 2]]), plan)
    np.testing.assert_array_equal(O[[0, 2]], alone)


def test_blas_orthogonalize_empty_and_in_place(blas_ext):
    plan = make_plan("polar_express", 5, None)
    for shape in [(0, 4, 5), (2, 0, 5), (2, 4, 0)]:
        x = np.zeros(shape, np.float32)
        blas_ext.orthogonalize(x, plan_arg(plan))
    # In place: the very array passed in holds the result.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 40)).astype(np.float32)
    G64 = x.astype(np.float64)
    view = x
    blas_ext.orthogonalize(x, plan_arg(plan))
    assert view is x
    check_against_exact(_label("numpy"), G64, x.astype(np.float64), plan, "float32", "float32")


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_mlx_orthogonalize_16bit(mlx_ext, dtype_name, method):
    import mlx.core as mx

    rng = np.random.default_rng(11)
    G = mx.array(matrix_with_spectrum(rng, (2, 40, 56), "sigma_min_1e-3").astype(np.float32))
    G = G.astype(getattr(mx, dtype_name))
    plan = make_plan(method, 5, None)
    O = mlx_ext.orthogonalize(G, plan_arg(plan), stream=mx.cpu)
    assert O.dtype == G.dtype and O.shape == G.shape
    to64 = lambda a: np.array(a.astype(mx.float32)).astype(np.float64)  # noqa: E731
    check_against_exact(_label("mlx"), to64(G), to64(O), plan, "float32", dtype_name)


def _rect_views():
    """Non-contiguous mlx views; builder(mx, rng) -> array."""

    def spectrum(rng, shape):
        return matrix_with_spectrum(rng, shape, "sigma_min_1e-3").astype(np.float32)

    def transposed(mx, rng):
        return mx.swapaxes(mx.array(spectrum(rng, (2, 40, 24))), -1, -2)

    def sliced(mx, rng):
        return mx.array(np.pad(spectrum(rng, (30, 50)), ((0, 0), (0, 7))))[:, :50]

    def reversed_cols(mx, rng):
        return mx.array(spectrum(rng, (20, 31)))[:, ::-1]

    def broadcast(mx, rng):
        return mx.broadcast_to(mx.array(spectrum(rng, (1, 16, 28))), (3, 16, 28))

    return [transposed, sliced, reversed_cols, broadcast]


@pytest.mark.parametrize("make_view", _rect_views(), ids=lambda f: f.__name__)
def test_mlx_orthogonalize_noncontiguous_views(mlx_ext, rng, make_view):
    import mlx.core as mx

    G = make_view(mx, rng)
    before = np.array(G)
    plan = make_plan("polar_express", 5, None)
    O = np.array(mlx_ext.orthogonalize(G, plan_arg(plan), stream=mx.cpu))
    # Same as on a contiguous copy of the view, bit for bit (same kernel, same data).
    dense = mlx_ext.orthogonalize(mx.array(before), plan_arg(plan), stream=mx.cpu)
    np.testing.assert_array_equal(O, np.array(dense))
    np.testing.assert_array_equal(np.array(G), before)  # the viewed buffer is untouched
    check_against_exact(_label("mlx"), before.astype(np.float64), O.astype(np.float64), plan, "float32", "float32")


def test_mlx_orthogonalize_does_not_clobber_a_live_input(mlx_ext, rng):
    import mlx.core as mx

    G_np = rng.standard_normal((2, 12, 20)).astype(np.float32)
    G = mx.array(G_np)
    plan = make_plan("gram", 5, None)
    O = mlx_ext.orthogonalize(G, plan_arg(plan), stream=mx.cpu)
    mx.eval(O)
    np.testing.assert_array_equal(np.array(G), G_np)
    # A temporary input (its buffer is donated to the output) gives the same result.
    O2 = mlx_ext.orthogonalize(G * 1.0, plan_arg(plan), stream=mx.cpu)
    np.testing.assert_array_equal(np.array(O2), np.array(O))
    np.testing.assert_array_equal(np.array(G), G_np)


def test_mlx_orthogonalize_compile_vmap_and_no_grad(mlx_ext, rng):
    import mlx.core as mx

    plan = make_plan("polar_express", 5, None)
    coefficients = [tuple(step) for step in plan.coefficients]

    def fn(x, scale=plan.norm_scale):
        return mlx_ext.orthogonalize(x, plan_arg(plan, coefficients=coefficients, norm_scale=scale), stream=mx.cpu)

    G_np = rng.standard_normal((3, 16, 24)).astype(np.float32)
    G = mx.array(G_np)
    eager = np.array(fn(G))
    np.testing.assert_array_equal(np.array(mx.compile(fn)(G)), eager)
    # Equivalence compares every parameter: a different norm_scale is a different primitive.
    both = mx.compile(lambda x: (fn(x), fn(x, scale=2.0)))
    first, second = both(G)
    np.testing.assert_array_equal(np.array(first), eager)
    np.testing.assert_array_equal(np.array(second), np.array(fn(G, scale=2.0)))
    assert not np.array_equal(np.array(first), np.array(second))

    np.testing.assert_array_equal(np.array(mx.vmap(fn, in_axes=0)(G)), eager)
    Gm = mx.array(np.moveaxis(G_np, 0, -1))  # (16, 24, 3), map over the last axis
    np.testing.assert_array_equal(np.array(mx.vmap(fn, in_axes=2, out_axes=0)(Gm)), eager)

    with pytest.raises(RuntimeError, match="not differentiable"):
        mx.grad(lambda x: fn(x).sum())(G)
    with pytest.raises(RuntimeError, match="not differentiable"):
        mx.jvp(fn, [G], [G])


@pytest.mark.parametrize("api", ["numpy", "mlx"])
def test_orthogonalize_accepts_coefficient_forms(api):
    """plan["coefficients"]: a (steps, 3) float64 array, or a sequence of 3-sequences."""
    plan = make_plan("newton_schulz", 3, None)
    G = np.random.default_rng(0).standard_normal((6, 9)).astype(np.float32)
    forms = {
        "tuples": plan.coefficients,
        "lists": [list(s) for s in plan.coefficients],
        "ndarray": np.asarray(plan.coefficients),
        "rows": list(np.asarray(plan.coefficients)),
    }
    results = {}
    for name, coefficients in forms.items():
        if api == "mlx":
            ext = require_native("mlx_ext")
            import mlx.core as mx

            results[name] = np.array(ext.orthogonalize(mx.array(G), plan_arg(plan, coefficients=coefficients),
                                                       stream=mx.cpu))
        else:
            x = G.copy()
            require_native("blas").orthogonalize(x, plan_arg(plan, coefficients=coefficients))
            results[name] = x
    for name, O in results.items():
        np.testing.assert_array_equal(O, results["ndarray"], err_msg=name)


def _assert_plan_key_errors(call, fn):
    """``call(plan)`` refuses a plan with a missing or an unknown key, or that is no dict, naming
    the function and the key."""
    plan = plan_arg()
    for key in plan:
        missing = {k: v for k, v in plan.items() if k != key}
        with pytest.raises(ValueError, match=rf"{fn}\(\): `plan` has no key '{key}'"):
            call(missing)
    with pytest.raises(ValueError, match=rf"{fn}\(\): `plan` has an unknown key 'precondition'"):
        call({**plan, "precondition": True})
    with pytest.raises(TypeError, match=rf"{fn}\(\): `plan` must be a dict with the keys 'coefficients', "):
        call(list(plan.values()))
    with pytest.raises(TypeError, match=rf"{fn}\(\): `plan\['eps'\]` must be a float, got str"):
        call({**plan, "eps": "1e-7"})
    with pytest.raises(TypeError, match=rf"{fn}\(\): `plan\['gram'\]` must be a bool, got int"):
        call({**plan, "gram": 1})
    with pytest.raises(TypeError, match=rf"{fn}\(\): `plan\['gram_restart_every'\]` must be an int, got float"):
        call({**plan, "gram_restart_every": 2.0})


def test_blas_orthogonalize_errors(blas_ext):
    plan = make_plan("polar_express", 5, None)
    coef = np.asarray(plan.coefficients, dtype=np.float64)
    x = np.ones((2, 4, 6), np.float32)
    good = plan_arg(plan)
    with pytest.raises(TypeError, match=r"orthogonalize\(\): `x` must have dtype float32, got float64"):
        blas_ext.orthogonalize(x.astype(np.float64), good)
    with pytest.raises(ValueError, match=r"`x` must be C-contiguous"):
        blas_ext.orthogonalize(np.ones((2, 6, 4), np.float32).transpose(0, 2, 1), good)
    with pytest.raises(ValueError, match=r"`x` must have shape \(rows, cols\) or \(batch, rows, cols\), got shape \(6,\)"):
        blas_ext.orthogonalize(np.ones(6, np.float32), good)
    with pytest.raises(ValueError, match=r"`x` must have shape .* got shape \(1, 2, 4, 6\)"):
        blas_ext.orthogonalize(np.ones((1, 2, 4, 6), np.float32), good)
    ro = x.copy()
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=r"`x` is read-only"):
        blas_ext.orthogonalize(ro, good)
    with pytest.raises(TypeError, match=r"`x` must be a CPU array"):
        blas_ext.orthogonalize([[1.0]], good)
    coefficients = r"orthogonalize\(\): `plan\['coefficients'\]`"
    with pytest.raises(TypeError, match=coefficients + r" must have dtype float64, got float32"):
        blas_ext.orthogonalize(x, plan_arg(plan, coefficients=coef.astype(np.float32)))
    for bad in (3.0, [(1.0, 2.0)], "abc"):
        with pytest.raises(TypeError, match=coefficients + r" must be a \(steps, 3\) float64 array or a sequence"):
            blas_ext.orthogonalize(x, plan_arg(plan, coefficients=bad))
    for bad in (coef[:, :2].copy(), coef.reshape(-1), np.zeros((0, 3))):
        with pytest.raises(ValueError, match=coefficients + r" must have shape \(steps, 3\) with steps >= 1"):
            blas_ext.orthogonalize(x, plan_arg(plan, coefficients=bad))
    with pytest.raises(ValueError, match=coefficients + r" must be C-contiguous"):
        blas_ext.orthogonalize(x, plan_arg(plan, coefficients=np.asfortranarray(coef)))
    with pytest.raises(ValueError, match=coefficients + r" must hold at least one"):
        blas_ext.orthogonalize(x, plan_arg(plan, coefficients=[]))
    with pytest.raises(ValueError, match=coefficients + r" must be finite"):
        blas_ext.orthogonalize(x, plan_arg(plan, coefficients=np.where(coef == coef[0, 0], np.nan, coef)))
    with pytest.raises(ValueError, match=r"`plan\['norm_scale'\]` must be finite and positive"):
        blas_ext.orthogonalize(x, plan_arg(plan, norm_scale=0.0))
    with pytest.raises(ValueError, match=r"`plan\['eps'\]` must be finite and non-negative"):
        blas_ext.orthogonalize(x, plan_arg(plan, norm_scale=1.0, eps=-1e-7))
    with pytest.raises(ValueError, match=r"`plan\['gram_restart_every'\]` must be >= 1"):
        blas_ext.orthogonalize(x, plan_arg(plan, gram=True, gram_restart_every=0))
    for key, bad, bound in (("gram_restarts", -2, ">= -1"), ("gram_min_rows", -1, ">= 0"), ("gram_min_aspect", 0, ">= 1")):
        with pytest.raises(ValueError, match=rf"`plan\['{key}'\]` must be {bound}, got {bad}"):
            blas_ext.orthogonalize(x, plan_arg(plan, **{key: bad}))
    _assert_plan_key_errors(lambda bad: blas_ext.orthogonalize(x, bad), "orthogonalize")
    np.testing.assert_array_equal(x, 1.0)  # nothing ran on bad input


def test_blas_orthogonalize_torch_noncontiguous_rejected(blas_ext):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"`x` must be C-contiguous"):
        blas_ext.orthogonalize(torch.randn(2, 24, 16).mT, plan_arg())


def test_mlx_orthogonalize_errors(mlx_ext):
    import mlx.core as mx

    plan = make_plan("polar_express", 5, None)
    c = plan.coefficients
    G = mx.ones((4, 6))
    good = plan_arg(plan, coefficients=c, norm_scale=1.0, eps=1e-7)
    with pytest.raises(ValueError, match=r"at least 2 dimensions .* got shape \(5,\)"):
        mlx_ext.orthogonalize(mx.ones((5,)), good, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16 .* float64"):
        mlx_ext.orthogonalize(G.astype(mx.float64), good, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"float32, float16 or bfloat16 .* int32"):
        mlx_ext.orthogonalize(G.astype(mx.int32), good, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"`plan\['coefficients'\]` must hold at least one"):
        mlx_ext.orthogonalize(G, {**good, "coefficients": []}, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"`plan\['coefficients'\]` must be finite; step 1"):
        mlx_ext.orthogonalize(G, {**good, "coefficients": [c[0], (1.0, float("inf"), 0.0)]}, stream=mx.cpu)
    with pytest.raises(TypeError, match=r"`plan\['coefficients'\]` must be a \(steps, 3\) float64 array"):
        mlx_ext.orthogonalize(G, {**good, "coefficients": [(1.0, 2.0)]}, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"`plan\['norm_scale'\]` must be finite and positive"):
        mlx_ext.orthogonalize(G, {**good, "norm_scale": -1.0}, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"`plan\['eps'\]` must be finite and non-negative"):
        mlx_ext.orthogonalize(G, {**good, "eps": float("nan")}, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"`plan\['gram_restart_every'\]` must be >= 1"):
        mlx_ext.orthogonalize(G, {**good, "gram": True, "gram_restart_every": 0}, stream=mx.cpu)
    with pytest.raises(ValueError, match=r"`plan\['gram_min_aspect'\]` must be >= 1, got 0"):
        mlx_ext.orthogonalize(G, {**good, "gram_min_aspect": 0}, stream=mx.cpu)
    _assert_plan_key_errors(lambda bad: mlx_ext.orthogonalize(G, bad, stream=mx.cpu), "orthogonalize")
    with pytest.raises(TypeError):
        mlx_ext.orthogonalize(G, good, mx.cpu)  # stream is keyword-only


def test_allowance_is_meaningful():
    """The allowance used above is far below what a wrong iteration would produce: a native run
    with the normalization of another method fails it."""
    rng = np.random.default_rng(3)
    G64 = matrix_with_spectrum(rng, (24, 40), "well_conditioned")
    plan = make_plan("polar_express", 5, None)
    _, x, _ = exact_iteration(G64, plan.coefficients, plan.norm_scale, plan.eps)
    allowance = rounding_allowance(plan.coefficients, float(x.max()), "float32", "float32", 24)
    wrong = make_plan("newton_schulz", 5, plan.coefficients)  # norm scale 1 instead of 1.02
    O = _run_native("numpy", G64.astype(np.float32), wrong)
    exact, _, _ = exact_iteration(G64, plan.coefficients, plan.norm_scale, plan.eps)
    assert np.linalg.norm(O - exact, ord=2) > 10 * allowance
