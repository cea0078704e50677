"""The quality panel (fastmuon.quality) on its quick inputs: the float64 iterations land where
the scalar polynomials say, aol4 is no worse than Jordan's 5-step Newton-Schulz where it is
designed to be, and the panel notices when coefficients or the AOL scaling are wrong."""

from __future__ import annotations

import numpy as np
import pytest

from fastmuon import quality
from support.native_helpers import require_native

torch = pytest.importorskip("torch")

from fastmuon.torch import orthogonalize  # noqa: E402
from fastmuon.torch.backends import reference as torch_reference  # noqa: E402

SEED = 0
# Where aol4 must be no worse than newton_schulz5 (AOL_LO was fitted on these kinds; on
# condition 1e4, rank 8 plus noise and the mixed stack it is within a few percent, not below).
AOL_DESIGN_KINDS = ("gaussian", "powerlaw_1e2")
# float64 runs against the exact iteration: observed differences <= 2e-14 on the quick panel
EXACT_TOL = 1e-9


@pytest.fixture(scope="module")
def inputs():
    return quality.panel_inputs(seed=SEED, quick=True)


@pytest.fixture(scope="module")
def polars(inputs):
    return {name: quality.polar_factor(G) for name, G in inputs.items()}


@pytest.fixture(scope="module")
def design_inputs(inputs):
    return {name: G for name, G in inputs.items() if quality.input_kind(name) in AOL_DESIGN_KINDS}


def torch_fn(dtype, backend="reference"):
    """orthogonalize through fastmuon.torch's public API on a numpy input (float64 in for the
    float64 compute, float32 otherwise)."""

    def run(G, **kwargs):
        X = torch.from_numpy(np.asarray(G, dtype=np.float64 if dtype is torch.float64 else np.float32))
        return orthogonalize(X, backend=backend, dtype=dtype, **kwargs).double().numpy()

    return run


def mlx_fn():
    mx = pytest.importorskip("mlx.core")
    from fastmuon.mlx import orthogonalize as mlx_orthogonalize

    def run(G, **kwargs):
        O = mlx_orthogonalize(mx.array(np.asarray(G, dtype=np.float64), dtype=mx.float64), backend="reference",
                              dtype=mx.float64, **kwargs)
        return np.array(O.astype(mx.float64))

    return run


def exact_mismatch(rows, inputs, polars):
    """Per row, the largest difference of a metric to the float64 exact iteration: the scalar
    polynomials for scalar-normalized presets, the numpy re-implementation for AOL."""
    out = {}
    for r in rows:
        G = inputs[r["input"]]
        which = quality.Preset(r["preset"], r["method"], r["steps"])
        if r["method"] == "aol":
            expected = quality.metrics(quality.numpy_orthogonalize(G, r["method"], r["steps"]), P=polars[r["input"]])
        else:
            expected = quality.scalar_metrics(which, G)
        out[(r["preset"], r["input"])] = max(abs(r[k] - expected[k]) for k in expected)
    return out


def no_worse_than_anchor(fn, which, inputs, polars):
    """(whether ``which`` is no worse than newton_schulz5 on every input in both metrics, the
    ratio entry), both run through ``fn``."""
    rows = quality.evaluate(fn, [quality.ANCHOR, which], inputs, polars=polars)
    name = quality.preset(which).name
    entry = quality.ratios_to_anchor(rows)[(name,)]
    return entry["no_worse"], entry


# ------------------------------------------------------------------ the panel itself


def test_quick_panel_is_deterministic_and_has_every_kind(inputs):
    again = quality.panel_inputs(seed=SEED, quick=True)
    assert list(again) == list(inputs)
    for name in inputs:
        np.testing.assert_array_equal(again[name], inputs[name])
    kinds = {quality.input_kind(name) for name in inputs}
    assert kinds == {"gaussian", "powerlaw_1e2", "powerlaw_1e4", "rank8_noise", "stack", "momentum_fc1", "momentum_fc2"}
    assert {tuple(G.shape) for G in inputs.values()} == {(64, 128), (96, 192), (4, 32, 96), (192, 96)}
    other = quality.panel_inputs(seed=SEED + 1, quick=True)
    assert not np.array_equal(other["gaussian/64x128"], inputs["gaussian/64x128"])


def test_spectra_are_the_documented_ones(inputs):
    for cond in ("1e2", "1e4"):
        s = np.linalg.svd(inputs[f"powerlaw_{cond}/96x192"], compute_uv=False)
        np.testing.assert_allclose(s, np.logspace(0, -float(cond[2:]), 96), rtol=1e-10)
    s = np.linalg.svd(inputs["rank8_noise/96x192"], compute_uv=False)
    assert s[7] > 0.09 and s[8] < 2e-3 and s[-1] > 0  # rank 8 over a small, full-rank noise floor
    stack = inputs["stack/4x32x96"]
    norms = np.linalg.norm(stack, axis=(-2, -1))
    assert norms[1] > 10 * norms[2]  # scaled differently: the normalization is per matrix


def test_momenta_come_from_a_run_that_learns():
    fc1, fc2, losses = quality.mlp_momenta(24, 48, seed=3, steps=120, return_losses=True)
    assert fc1.shape == (48, 24) and fc2.shape == (24, 48)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    s = np.linalg.svd(fc2, compute_uv=False)
    assert np.sum(s**2) / s[0] ** 2 < 0.5 * len(s)  # a low stable rank, as gradients' momenta have


def test_metrics_of_known_outputs():
    rng = np.random.default_rng(1)
    G = rng.standard_normal((3, 5, 9))
    P = quality.polar_factor(G)
    np.testing.assert_allclose(P @ np.swapaxes(P, -1, -2), np.broadcast_to(np.eye(5), (3, 5, 5)), atol=1e-12)
    exact = quality.metrics(P, G)
    assert exact["rel_fro"] < 1e-12 and exact["spectral"] < 1e-12
    O = P.copy()
    O[1] *= 0.5  # the stack's worst matrix decides
    half = quality.metrics(O, P=P)
    assert half["rel_fro"] == pytest.approx(0.5) and half["spectral"] == pytest.approx(0.5)
    assert half["sigma_min"] == pytest.approx(0.5) and half["sigma_max"] == pytest.approx(1.0)
    O[2, 0, 0] = np.inf
    assert quality.metrics(O, P=P)["spectral"] == np.inf and quality.metrics(O, P=P)["rel_fro"] == np.inf


def test_ratios_to_anchor_take_the_worst_input():
    rows = [
        {"preset": "newton_schulz5", "input": "a", "rel_fro": 0.2, "spectral": 0.4},
        {"preset": "newton_schulz5", "input": "b", "rel_fro": 0.5, "spectral": 1.0},
        {"preset": "x", "input": "a", "rel_fro": 0.1, "spectral": 0.2},
        {"preset": "x", "input": "b", "rel_fro": 0.4, "spectral": 1.1},
    ]
    entry = quality.ratios_to_anchor(rows)[("x",)]
    assert entry["worst_rel_fro"] == pytest.approx(0.8) and entry["worst_rel_fro_input"] == "b"
    assert entry["worst_spectral"] == pytest.approx(1.1) and entry["worst_spectral_input"] == "b"
    assert entry["no_worse"] is False and entry["inputs"] == 2


# ------------------------------------------------------------------ (a) float64 = exact iteration


@pytest.mark.parametrize("framework", ["torch", "mlx"])
def test_float64_iteration_lands_where_the_polynomials_say(framework, inputs, polars):
    fn = torch_fn(torch.float64) if framework == "torch" else mlx_fn()
    rows = quality.evaluate(fn, list(quality.PRESETS), inputs, polars=polars)
    assert len(rows) == len(quality.PRESETS) * len(inputs)
    mismatch = exact_mismatch(rows, inputs, polars)
    worst = max(mismatch, key=mismatch.get)
    assert mismatch[worst] < EXACT_TOL, (worst, mismatch[worst])


def test_scalar_prediction_is_not_offered_for_aol(inputs):
    with pytest.raises(ValueError, match="AOL"):
        quality.scalar_metrics("aol4", inputs["gaussian/64x128"])


# ------------------------------------------------------------------ (b) aol4 against the anchor


@pytest.mark.parametrize("dtype,backend", [("float64", "reference"), ("float32", "reference"),
                                           ("float32", "native"), ("bfloat16", "reference")])
def test_aol4_no_worse_than_newton_schulz5_where_designed(dtype, backend, design_inputs, polars):
    if backend == "native":
        require_native("blas")
    ok, entry = no_worse_than_anchor(torch_fn(getattr(torch, dtype), backend), "aol4", design_inputs, polars)
    assert ok, entry
    assert entry["worst_rel_fro"] < 0.6 and entry["worst_spectral"] < 0.7  # observed up to 0.49 and 0.59


# ------------------------------------------------------------------ (c) the panel can fail


def perturbed(name: str, factor: float = 0.9) -> quality.Preset:
    """``name`` with its first step's a scaled by ``factor``."""
    base = quality.preset(name)
    coefficients = [list(abc) for abc in base.plan().coefficients]
    coefficients[0][0] *= factor
    return base.with_coefficients(coefficients, f"{name}_a1x{factor}")


def test_perturbed_aol4_coefficients_break_the_bound(design_inputs, polars):
    fn = torch_fn(torch.float64)
    ok, entry = no_worse_than_anchor(fn, perturbed("aol4"), design_inputs, polars)
    assert not ok, entry
    # a1 * 0.9 sends the top singular values of the condition-1e2 input past 0 (p_1(x) < 0): the
    # result has a singular direction flipped, ||O - P||_2 near 2 against newton_schulz5's 0.32
    assert entry["worst_spectral"] > 3, entry


@pytest.mark.parametrize("name", ["newton_schulz5", "polar_express5", "gram5"])
def test_perturbed_coefficients_break_the_exact_iteration_check(name, inputs, polars):
    p = perturbed(name)
    rows = quality.evaluate(torch_fn(torch.float64), p, inputs, polars=polars)
    for r in rows:  # judged against the preset's own polynomials, as in the float64 check
        r["preset"], r["steps"] = name, quality.preset(name).steps
    mismatch = exact_mismatch(rows, inputs, polars)
    assert max(mismatch.values()) > 1e3 * EXACT_TOL


@pytest.mark.parametrize("exponent", [0.75, 1.0])
def test_aol_with_a_wrong_row_sum_exponent_breaks_the_bound(exponent, design_inputs, polars):
    """AOL bounds ||D X||_2 <= 1 only with d_i = rowsum_i^(-1/2); a larger exponent lets the
    spectrum pass 1, where the steep first polynomial blows it up."""

    def wrong(G, **kwargs):
        return quality.numpy_orthogonalize(G, aol_exponent=exponent, **kwargs)

    def right(G, **kwargs):
        return quality.numpy_orthogonalize(G, **kwargs)

    assert no_worse_than_anchor(right, "aol4", design_inputs, polars)[0]
    ok, entry = no_worse_than_anchor(wrong, "aol4", design_inputs, polars)
    assert not ok and entry["worst_spectral"] > 10, entry


def test_subtly_wrong_aol_passes_the_bound_but_not_the_exact_check(design_inputs, polars):
    """Exponents near 1/2 keep the spectrum below 1 on these inputs and stay well under
    newton_schulz5's error: only the comparison with the exact float64 AOL notices them."""
    fn = torch_fn(torch.float64)
    rows = quality.evaluate(fn, "aol4", design_inputs, polars=polars)
    for exponent in (0.45, 0.55):
        def wrong(G, **kwargs):
            return quality.numpy_orthogonalize(G, aol_exponent=exponent, **kwargs)

        assert no_worse_than_anchor(wrong, "aol4", design_inputs, polars)[0]
        wrong_rows = quality.evaluate(wrong, "aol4", design_inputs, polars=polars)
        gap = max(abs(r[k] - w[k]) for r, w in zip(rows, wrong_rows) for k in quality.METRICS)
        assert gap > 1e-3  # against < 1e-9 for the right exponent (test_float64_iteration_...)


def test_monkeypatched_aol_scaling_in_the_reference_breaks_the_bound(monkeypatch, design_inputs, polars):
    """The public API with the torch reference's AOL row scaling made wrong (d_i = 1 / rowsum_i
    instead of its square root's reciprocal) fails the check the right one passes."""
    fn = torch_fn(torch.float64)
    assert no_worse_than_anchor(fn, "aol4", design_inputs, polars)[0]

    def wrong_aol_scale(X, A):
        row_sums = A.abs().sum(dim=-1, keepdim=True)
        d = 1.0 / row_sums.clamp_min(torch.finfo(row_sums.dtype).tiny)
        return X * d, A * (d * d.mT)

    monkeypatch.setattr(torch_reference.TorchOps, "aol_scale", staticmethod(wrong_aol_scale))
    ok, entry = no_worse_than_anchor(fn, "aol4", design_inputs, polars)
    assert not ok and entry["worst_spectral"] > 10, entry
