"""Accuracy of ``orthogonalize`` against the float64 SVD polar factor, in both frameworks.

The exact answer for input G = U S V^T is U p(S / norm) V^T, p the composition of the method's
polynomials (``spectral.exact_iteration``); runs may differ from it only by rounding, bounded by
``spectral.rounding_allowance`` (a stated multiple of a first-order model derived from p).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmuon import coefficients as coef
from fastmuon.plan import make_plan
from support.native_helpers import require_native
from support.frameworks import FRAMEWORKS
from support.seeds import stable_seed
from support.spectral import (
    SPECTRA,
    amplification,
    exact_iteration,
    matrix_with_spectrum,
    rounding_allowance,
    spectral_error,
)

METHODS = ("newton_schulz", "polar_express", "gram", "aol")
SHAPES = [(64, 64), (48, 80), (80, 48), (1, 37), (37, 1), (3, 40, 56), (2, 2, 24, 16)]
# Every fp32 backend must meet the same bound; "native" needs the compiled extension.
FP32_BACKENDS = ("reference", "native")


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request):
    return FRAMEWORKS[request.param]()


def check_against_exact(fw, G64, O, plan, compute, output):
    """Assert that O is within the rounding allowance of the exact iteration on G64 (the input
    exactly as the framework saw it), in spectral norm, for every matrix of the batch; and that
    its spectral error is within the same allowance of the scalar polynomial's. Returns the
    largest deviation and allowance."""
    exact, x, y = exact_iteration(G64, plan.coefficients, plan.norm_scale, plan.eps, plan.uses_aol)
    m = min(G64.shape[-2:])
    allowance = rounding_allowance(plan.coefficients, float(x.max()), compute, output, m)
    deviation = float(np.max(np.linalg.norm(O - exact, ord=2, axis=(-2, -1))))
    assert np.all(np.isfinite(O))
    assert deviation <= allowance, f"{fw.name}: |O - exact|_2 = {deviation:.3e} > {allowance:.3e}"
    # Weyl: singular values move no more than the spectral norm of the perturbation.
    rank = int(np.sum(x.reshape(-1, x.shape[-1])[0] > 0))
    predicted = float(np.max(np.abs(y[..., :rank] - 1.0)))
    assert spectral_error(O, rank) <= predicted + allowance
    if rank < m:  # the null space stays (numerically) null
        assert np.max(np.linalg.svd(O, compute_uv=False)[..., rank:]) <= allowance
    return deviation, allowance


@pytest.fixture(params=FP32_BACKENDS)
def backend(request, fw):
    if request.param == "native":
        require_native("mlx_ext" if fw.name == "mlx" else "blas")
    return request.param


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", SPECTRA)
def test_fp32_matches_exact_iteration(fw, backend, method, shape, kind):
    rng = np.random.default_rng(stable_seed(method, shape, kind))
    G = fw.array(matrix_with_spectrum(rng, shape, kind), "float32")
    plan = make_plan(method, 5, None)
    O = fw.orthogonalize(G, method=method, backend=backend)
    assert O.shape == G.shape and fw.dtype_name(O) == "float32"
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), plan, "float32", "float32")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (3, 24, 40)], ids=str)
def test_float64_compute_is_exact_to_float64_rounding(fw, method, shape):
    """In float64 the allowance is ~1e-11: this pins normalization, coefficient order,
    transposition and the Gram algebra far below what fp32 runs could reveal."""
    rng = np.random.default_rng(7)
    G64 = matrix_with_spectrum(rng, shape, "sigma_min_1e-3")
    plan = make_plan(method, 5, None)
    O = fw.orthogonalize(fw.array(G64, "float64"), method=method, dtype=fw.dtype("float64"))
    deviation, allowance = check_against_exact(fw, G64, fw.to_numpy(O), plan, "float64", "float64")
    assert allowance < 1e-9


def test_the_check_can_fail(fw):
    """The float64 check notices a normalization off by the safety factor 1.02."""
    rng = np.random.default_rng(3)
    G64 = matrix_with_spectrum(rng, (24, 40), "well_conditioned")
    O = fw.to_numpy(
        fw.orthogonalize(fw.array(G64, "float64"), method="polar_express", dtype=fw.dtype("float64"))
    )
    wrong = make_plan("newton_schulz", 5, coef.POLAR_EXPRESS_5STEP)  # norm scale 1 instead of 1.02
    with pytest.raises(AssertionError):
        check_against_exact(fw, G64, O, wrong, "float64", "float64")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_16bit_inputs(fw, backend, dtype, method):
    """16-bit input, fp32 compute: the reference is the exact iteration on the rounded input,
    plus the output's own rounding."""
    rng = np.random.default_rng(11)
    G = fw.array(matrix_with_spectrum(rng, (2, 40, 56), "sigma_min_1e-3"), dtype)
    O = fw.orthogonalize(G, method=method, backend=backend)
    assert O.shape == G.shape and fw.dtype_name(O) == dtype
    plan = make_plan(method, 5, None)
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), plan, "float32", dtype)


@pytest.mark.parametrize("method", METHODS)
def test_16bit_compute_dtype(fw, method):
    rng = np.random.default_rng(5)
    G = fw.array(matrix_with_spectrum(rng, (24, 40), "well_conditioned"), "float32")
    if method == "gram":  # refused: fastmuon.plan.GRAM_MIN_BITS
        for dtype in ("bfloat16", "float16"):
            with pytest.raises(ValueError, match=f'dtype=.*{dtype} with method="gram"'):
                fw.orthogonalize(G, method=method, dtype=fw.dtype(dtype))
        return
    O = fw.orthogonalize(G, method=method, dtype=fw.dtype("bfloat16"))
    assert fw.dtype_name(O) == "float32"
    plan = make_plan(method, 5, None)
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), plan, "bfloat16", "float32")


def test_gram_computes_in_fp32_where_the_default_is_16_bit(fw, monkeypatch):
    """Where the default compute dtype is 16-bit (GPUs; large matrices on CPUs with bf16 units),
    the Gram-space iteration computes in fp32: in bf16 it diverged on this 3 x 40 Gaussian, to a
    largest singular value of 187 (instead of about 1)."""
    import importlib

    module = importlib.import_module(f"fastmuon.{fw.name}.orthogonalize")
    bf16 = fw.dtype("bfloat16")
    if fw.name == "torch":
        assert module.resolve_compute_dtype(None, "auto", "cuda", (3, 40), "gram") == fw.dtype("float32")
        assert module.resolve_compute_dtype(None, "auto", "cuda", (3, 40)) == bf16
        monkeypatch.setattr(module, "default_compute_dtype", lambda device, shape=None: bf16)
    else:
        monkeypatch.setattr(module, "default_compute_dtype", lambda: bf16)
    G = fw.array(np.random.default_rng(14).standard_normal((3, 40)), "float32")
    O = fw.to_numpy(fw.orthogonalize(G, method="gram", backend="reference"))
    fp32 = fw.to_numpy(fw.orthogonalize(G, method="gram", backend="reference", dtype=fw.dtype("float32")))
    assert np.array_equal(O, fp32) and np.linalg.norm(O, ord=2) < 1.1
    default = fw.to_numpy(fw.orthogonalize(G, method="polar_express", backend="reference"))  # in bf16
    assert np.array_equal(default, fw.to_numpy(fw.orthogonalize(G, method="polar_express", backend="reference",
                                                                   dtype=bf16)))


def test_custom_coefficients_and_steps(fw, backend):
    rng = np.random.default_rng(2)
    G = fw.array(matrix_with_spectrum(rng, (40, 56), "sigma_min_1e-3"), "float32")
    for kwargs in (
        dict(method="newton_schulz", coefficients=coef.YOU_5STEP),
        dict(method="polar_express", steps=8),
        dict(method="polar_express", steps=3),
        dict(method="gram", steps=7),
    ):
        plan = make_plan(kwargs["method"], kwargs.get("steps", 5), kwargs.get("coefficients"))
        O = fw.orthogonalize(G, backend=backend, **kwargs)
        check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), plan, "float32", "float32")


def test_polar_express_beats_jordan_on_ill_conditioned(fw):
    rng = np.random.default_rng(4)
    G = fw.array(matrix_with_spectrum(rng, (64, 96), "sigma_min_1e-3"), "float32")
    errors = {m: spectral_error(fw.to_numpy(fw.orthogonalize(G, method=m)), 64) for m in METHODS}
    assert errors["polar_express"] < errors["newton_schulz"]
    assert errors["gram"] < errors["newton_schulz"]


@pytest.mark.parametrize("kind", SPECTRA)
def test_gram_equals_polar_express(fw, kind):
    rng = np.random.default_rng(8)
    G = fw.array(matrix_with_spectrum(rng, (3, 48, 96), kind), "float32")
    plan = make_plan("polar_express", 5, None)
    _, x, _ = exact_iteration(fw.to_numpy(G), plan.coefficients, plan.norm_scale, plan.eps)
    allowance = rounding_allowance(plan.coefficients, float(x.max()), "float32", "float32", 48)
    gram = fw.to_numpy(fw.orthogonalize(G, method="gram"))
    standard = fw.to_numpy(fw.orthogonalize(G, method="polar_express"))
    # each is within `allowance` of the same exact iteration
    assert np.max(np.linalg.norm(gram - standard, ord=2, axis=(-2, -1))) <= 2 * allowance


@pytest.mark.parametrize("method", METHODS)
def test_torch_and_mlx_agree(method):
    torch_fw, mlx_fw = FRAMEWORKS["torch"](), FRAMEWORKS["mlx"]()
    rng = np.random.default_rng(9)
    G64 = matrix_with_spectrum(rng, (2, 36, 60), "sigma_min_1e-3")
    G_t, G_m = torch_fw.array(G64, "float32"), mlx_fw.array(G64, "float32")
    np.testing.assert_array_equal(torch_fw.to_numpy(G_t), mlx_fw.to_numpy(G_m))
    plan = make_plan(method, 5, None)
    _, x, _ = exact_iteration(torch_fw.to_numpy(G_t), plan.coefficients, plan.norm_scale, plan.eps)
    allowance = rounding_allowance(plan.coefficients, float(x.max()), "float32", "float32", 36)
    O_t = torch_fw.to_numpy(torch_fw.orthogonalize(G_t, method=method))
    O_m = mlx_fw.to_numpy(mlx_fw.orthogonalize(G_m, method=method))
    assert np.max(np.linalg.norm(O_t - O_m, ord=2, axis=(-2, -1))) <= 2 * allowance


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 4), (6, 1)], ids=str)
def test_zero_matrix_gives_zeros(fw, backend, method, shape):
    G = fw.array(np.zeros(shape), "float32")
    O = fw.to_numpy(fw.orthogonalize(G, method=method, backend=backend))
    assert O.shape == shape
    np.testing.assert_array_equal(O, np.zeros(shape))


@pytest.mark.parametrize("shape", [(), (5,)], ids=str)
def test_rejects_scalars_and_vectors(fw, shape):
    G = fw.array(np.ones(shape), "float32")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., m, n\).*got shape " + re.escape(str(shape))):
        fw.orthogonalize(G)


def test_rejects_unknown_method_backend_and_bad_arguments(fw):
    G = fw.array(np.ones((3, 4)), "float32")
    with pytest.raises(ValueError, match="newton_schulz, polar_express, gram"):
        fw.orthogonalize(G, method="svd")
    with pytest.raises(ValueError, match="valid backends: auto, reference, native"):
        fw.orthogonalize(G, backend="cuda")
    with pytest.raises(ValueError, match="steps"):
        fw.orthogonalize(G, steps=0)
    with pytest.raises(ValueError, match="coefficients"):
        fw.orthogonalize(G, coefficients=[(1.0, 2.0)])
    with pytest.raises(ValueError, match="steps=3 conflicts"):
        fw.orthogonalize(G, steps=3, coefficients=coef.YOU_5STEP)
    with pytest.raises(ValueError, match="dtype"):
        fw.orthogonalize(G, dtype="float32")
    with pytest.raises(TypeError, match="G must be"):
        fw.orthogonalize(np.ones((3, 4)))


# ----------------------------------------------------------------- property-based
LAYOUTS = ("contiguous", "transposed", "strided")


@st.composite
def cases(draw):
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    m, n = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    return dict(
        batch=batch,
        m=m,
        n=n,
        dtype=draw(st.sampled_from(["float32", "bfloat16", "float16"])),
        method=draw(st.sampled_from(METHODS)),
        layout=draw(st.sampled_from(LAYOUTS)),
        kind=draw(st.sampled_from(SPECTRA)),
        seed=draw(st.integers(0, 2**31)),
    )


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("backend_name", FP32_BACKENDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_property_shapes_dtypes_layouts(framework, backend_name, case):
    fw = FRAMEWORKS[framework]()
    if backend_name == "native":
        require_native("mlx_ext" if framework == "mlx" else "blas")
    rng = np.random.default_rng(case["seed"])
    shape = (*case["batch"], case["m"], case["n"])
    values = matrix_with_spectrum(rng, shape, case["kind"])
    if case["layout"] == "transposed":  # a non-contiguous view with the wanted shape
        G = fw.transpose(fw.array(np.swapaxes(values, -1, -2), case["dtype"]))
    elif case["layout"] == "strided":  # every other column of a wider array
        wide = np.zeros((*shape[:-1], 2 * shape[-1]))
        wide[..., ::2] = values
        G = fw.array(wide, case["dtype"])[..., ::2]
    else:
        G = fw.array(values, case["dtype"])
    O = fw.orthogonalize(G, method=case["method"], backend=backend_name)
    assert O.shape == G.shape and fw.dtype_name(O) == case["dtype"]
    plan = make_plan(case["method"], 5, None)
    check_against_exact(fw, fw.to_numpy(G), fw.to_numpy(O), plan, "float32", case["dtype"])


def test_amplification_grows_with_steps():
    """Sanity of the error model itself: more steps can only add terms."""
    pe = coef.POLAR_EXPRESS_5STEP
    assert amplification(pe[:3], 0.9) < amplification(pe, 0.9)
