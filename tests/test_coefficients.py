"""Tests for fastmuon.coefficients: the generator, the Remez solver and the pinned tables.

Reference figures (the Polar Express paper, Amsel et al. 2025, arXiv 2505.16932): the Polar Express table has worst-case
|p5(sigma / 1.02) - 1| about 0.15 on [1e-3, 1]; Jordan's Newton-Schulz about 0.53
on [1e-3, 1] and about 0.32 on [1e-2, 1].  Those are asserted within +-0.02.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastmuon import coefficients as C
from fastmuon.coefficients import (
    JORDAN_NEWTON_SCHULZ,
    POLAR_EXPRESS_5STEP,
    POLAR_EXPRESS_SAFETY,
    STEADY_STATE,
    YOU_5STEP,
    apply_scalar,
    coefficients_for,
    optimal_odd_quintic,
    polar_express_coefficients,
    validate_coefficients,
    worst_case_error,
)

# The table exactly as published with the Polar Express paper (independent of the module's copy).
PUBLISHED_PE = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def _p(coeffs, x):
    a, b, c = coeffs
    return a * x + b * x**3 + c * x**5


def _critical_points(coeffs):
    """Positive roots of p'(x) = a + 3 b x^2 + 5 c x^4, via numpy (independent of the module)."""
    a, b, c = coeffs
    roots = np.roots([5 * c, 0, 3 * b, 0, a])
    real = roots[np.abs(roots.imag) < 1e-9].real
    return np.sort(real[real > 0])


# ---------------------------------------------------------------- pinned tables


def test_pinned_table_matches_reference_text():
    assert np.array_equal(np.array(POLAR_EXPRESS_5STEP), np.array(PUBLISHED_PE))
    assert JORDAN_NEWTON_SCHULZ == (3.4445, -4.7750, 2.0315)
    assert len(YOU_5STEP) == 5 and YOU_5STEP[0] == (4.0848, -6.8946, 2.9270)
    assert C.POLAR_EXPRESS_SAFETY == 1.02
    assert C.POLAR_EXPRESS_EPS == 1e-6
    assert C.NEWTON_SCHULZ_EPS == 1e-7


def test_generator_reproduces_polar_express_table():
    got = np.array(polar_express_coefficients(5, lo=1e-3, safety=1.02, cushion=0.02))
    want = np.array(PUBLISHED_PE)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # The defaults are the published recipe.
    assert polar_express_coefficients() == polar_express_coefficients(5, lo=1e-3, safety=1.02, cushion=0.02)


def test_generator_safety_only_on_non_final_steps():
    plain = polar_express_coefficients(5, safety=1.0)
    safe = polar_express_coefficients(5, safety=1.02)
    # First step: same optimal quintic, divided by (s, s^3, s^5).
    a, b, c = plain[0]
    np.testing.assert_allclose(safe[0], (a / 1.02, b / 1.02**3, c / 1.02**5), rtol=1e-12)
    # Later steps differ because the interval is tracked through the divided polynomials.
    assert not np.allclose(plain[1], safe[1], rtol=1e-6)


# ---------------------------------------------------------------- Remez / optimal quintic

EQUIOSC_INTERVALS = [(1e-3, 1.0), (0.02, 1.0), (0.1, 1.0), (0.5, 1.0), (0.3, 0.7), (1e-4, 1e-2), (0.8, 1.2)]


@pytest.mark.parametrize("lo,hi", EQUIOSC_INTERVALS)
def test_optimal_quintic_equioscillates(lo, hi):
    coeffs = optimal_odd_quintic(lo, hi)
    q, r = _critical_points(coeffs)
    assert lo < q < r < hi
    pts = np.array([lo, q, r, hi])
    err = _p(coeffs, pts) - 1.0
    E = abs(err[0])
    assert E > 0
    # Equal magnitude at the four alternation points ...
    np.testing.assert_allclose(np.abs(err), E, rtol=1e-9, atol=1e-14)
    # ... with alternating signs, starting below 1 at lo.
    assert np.all(np.sign(err) == np.array([-1.0, 1.0, -1.0, 1.0]))
    # ... and E is the maximum over the whole interval (dense grid, incl. endpoints).
    x = np.linspace(lo, hi, 200_001)
    grid_max = np.max(np.abs(_p(coeffs, x) - 1.0))
    assert abs(grid_max - E) <= 1e-9 * max(1.0, E)


def test_optimal_quintic_scale_invariance():
    a, b, c = optimal_odd_quintic(0.1, 1.0)
    a2, b2, c2 = optimal_odd_quintic(0.3, 3.0)
    np.testing.assert_allclose((a2, b2, c2), (a / 3, b / 27, c / 243), rtol=1e-12)


@pytest.mark.parametrize("lo,hi", [(1.0, 1.0), (1 - 4e-6, 1.0), (1 - 5e-6, 1.0)])
def test_narrow_interval_gives_steady_state(lo, hi):
    assert optimal_odd_quintic(lo, hi) == STEADY_STATE


def test_narrow_interval_scaled_steady_state():
    a, b, c = optimal_odd_quintic(2.0, 2.0)
    assert (a, b, c) == (1.875 / 2, -1.25 / 8, 0.375 / 32)
    assert _p((a, b, c), 2.0) == 1.0


def test_just_wider_than_threshold_is_close_to_steady_state():
    # Continuity across the shortcut: the Remez answer just outside it is ~STEADY_STATE.
    np.testing.assert_allclose(optimal_odd_quintic(1 - 1e-5, 1.0), STEADY_STATE, rtol=1e-4)


def test_steady_state_is_superattracting_at_one():
    a, b, c = STEADY_STATE
    assert _p(STEADY_STATE, 1.0) == 1.0
    assert a + 3 * b + 5 * c == 0.0  # p'(1)
    assert 6 * b + 20 * c == 0.0  # p''(1): cubic convergence


@settings(max_examples=40, deadline=None)
@given(
    lo=st.floats(min_value=1e-4, max_value=1.0),
    width=st.floats(min_value=1e-3, max_value=1.0),
)
def test_minimax_beats_jordan_on_any_interval(lo, width):
    hi = min(1.0, lo + width * (1.0 - lo))
    assume(hi > lo * (1 + 1e-3))
    coeffs = optimal_odd_quintic(lo, hi)
    q, r = _critical_points(coeffs)
    E = abs(_p(coeffs, lo) - 1.0)
    x = np.concatenate([np.geomspace(lo, hi, 4001), np.linspace(lo, hi, 4001), [q, r]])
    opt_err = np.max(np.abs(_p(coeffs, x) - 1.0))
    jordan_err = np.max(np.abs(_p(JORDAN_NEWTON_SCHULZ, x) - 1.0))
    # The optimum's error is E (up to rounding) and no larger than another odd quintic's.
    # Rounding: evaluating a x + b x^3 + c x^5 in float64 errs by at most about 4 u times the
    # sum of the terms' magnitudes (4 roundings); twice that bounds both |p - 1| values compared.
    a, b, c = coeffs
    evaluation = 8 * 2.0**-53 * np.max(abs(a) * x + abs(b) * x**3 + abs(c) * x**5)
    assert opt_err <= E * (1 + 1e-9) + evaluation
    assert E <= jordan_err
    # And small perturbations of the optimum are never better on the alternation points
    # (de la Vallee Poussin: any odd quintic has max error >= E on them).
    pts = np.array([lo, q, r, hi])
    rng = np.random.default_rng(int(lo * 1e9) % 2**32)
    for _ in range(5):
        pert = np.array(coeffs) * (1 + 1e-4 * rng.standard_normal(3))
        assert np.max(np.abs(_p(pert, pts) - 1.0)) >= E * (1 - 1e-9)


# ---------------------------------------------------------------- worst-case errors


def test_worst_case_polar_express_table():
    err = worst_case_error(POLAR_EXPRESS_5STEP, 1e-3, 1.0, scale=POLAR_EXPRESS_SAFETY)
    assert 0.13 <= err <= 0.17  # the paper: about 0.15


def test_worst_case_jordan():
    five = coefficients_for("newton_schulz", 5)
    assert 0.51 <= worst_case_error(five, 1e-3, 1.0) <= 0.55  # about 0.53
    assert 0.30 <= worst_case_error(five, 1e-2, 1.0) <= 0.34  # about 0.32


def test_polar_express_beats_jordan_and_you():
    pe = worst_case_error(POLAR_EXPRESS_5STEP, 1e-3, 1.0, scale=POLAR_EXPRESS_SAFETY)
    assert pe < worst_case_error(coefficients_for("newton_schulz", 5), 1e-3, 1.0)
    assert pe < worst_case_error(YOU_5STEP, 1e-3, 1.0)


def test_polar_express_more_steps_keep_improving():
    errs = {
        k: worst_case_error(coefficients_for("polar_express", k), 1e-3, 1.0, scale=POLAR_EXPRESS_SAFETY)
        for k in range(5, 9)
    }
    assert errs[6] < errs[5] and errs[7] < errs[6]
    assert errs[6] < 0.02 and errs[7] < 1e-4
    assert errs[8] < 1e-3
    assert errs[8] < 1e-12  # cubic convergence of the steady-state polynomial


def test_polar_express_fewer_steps_designs():
    errs = [
        worst_case_error(coefficients_for("polar_express", k), 1e-3, 1.0, scale=POLAR_EXPRESS_SAFETY)
        for k in range(1, 6)
    ]
    assert all(math.isfinite(e) for e in errs)
    assert all(later < earlier for earlier, later in zip(errs, errs[1:]))
    # A 4-step design is better than the first 4 rows of the 5-step table.
    prefix = worst_case_error(POLAR_EXPRESS_5STEP[:4], 1e-3, 1.0, scale=POLAR_EXPRESS_SAFETY)
    assert errs[3] <= prefix


def test_generator_other_parameters_are_sane():
    # Narrow start (lo near 1): converges to the steady state without tripping over rounding.
    coeffs = polar_express_coefficients(4, lo=0.9999)
    assert worst_case_error(coeffs, 0.9999, 1.0, scale=1.02) < 0.1
    assert len(polar_express_coefficients(3, lo=1e-4, safety=1.0, cushion=0.0)) == 3


# ---------------------------------------------------------------- apply_scalar / worst_case_error


def test_apply_scalar_composes_in_order():
    coeffs = ((2.0, 0.0, 0.0), (1.0, 1.0, 0.0))  # x -> 2x, then x -> x + x^3
    x = np.array([0.5, 1.0])
    np.testing.assert_array_equal(apply_scalar(coeffs, x), np.array([2.0, 10.0]))
    out = apply_scalar(coeffs, x)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(x, [0.5, 1.0])  # input not modified
    np.testing.assert_array_equal(apply_scalar(coeffs, np.float32(0.5)), 2.0)


def test_apply_scalar_matches_direct_evaluation():
    x = np.linspace(-1.0, 1.0, 101)
    y = x.copy()
    for abc in POLAR_EXPRESS_5STEP:
        y = _p(abc, y)
    np.testing.assert_allclose(apply_scalar(POLAR_EXPRESS_5STEP, x), y, rtol=1e-12, atol=1e-12)


def test_worst_case_error_uses_scale_and_endpoints():
    # p(x) = x has error 1 - lo at lo.
    assert worst_case_error([(1.0, 0.0, 0.0)], 0.25, 1.0, n=10) == pytest.approx(0.75)
    assert worst_case_error([(1.0, 0.0, 0.0)], 0.5, 1.0, scale=2.0, n=10) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lo=0.0, hi=1.0), "lo"),
        (dict(lo=2.0, hi=1.0), "hi"),
        (dict(lo=0.1, hi=1.0, scale=0.0), "scale"),
        (dict(lo=0.1, hi=1.0, n=1), "n"),
    ],
)
def test_worst_case_error_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        worst_case_error(POLAR_EXPRESS_5STEP, **kwargs)


# ---------------------------------------------------------------- coefficients_for


def test_coefficients_for_newton_schulz():
    assert coefficients_for("newton_schulz", 5) == (JORDAN_NEWTON_SCHULZ,) * 5
    assert coefficients_for("newton_schulz", 1) == (JORDAN_NEWTON_SCHULZ,)


def test_coefficients_for_polar_express():
    assert coefficients_for("polar_express", 5) is POLAR_EXPRESS_5STEP
    assert coefficients_for("polar_express", 7) == POLAR_EXPRESS_5STEP + (STEADY_STATE,) * 2
    three = coefficients_for("polar_express", 3)
    assert three == polar_express_coefficients(3)
    assert len(three) == 3 and three != POLAR_EXPRESS_5STEP[:3]


def test_coefficients_for_you():
    assert coefficients_for("you", 5) == YOU_5STEP
    assert coefficients_for("you", 6) == YOU_5STEP + (STEADY_STATE,)
    with pytest.raises(ValueError, match="steps"):
        coefficients_for("you", 4)


def test_coefficients_for_errors():
    with pytest.raises(ValueError, match="newton_schulz, polar_express, you"):
        coefficients_for("adam", 5)
    for bad in (0, -1, 2.0, True, "5", None):
        with pytest.raises(ValueError, match="steps"):
            coefficients_for("polar_express", bad)
    assert coefficients_for("newton_schulz", np.int64(2)) == (JORDAN_NEWTON_SCHULZ,) * 2


# ---------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    "lo,hi,match",
    [(0.0, 1.0, "lo"), (-1.0, 1.0, "lo"), (float("nan"), 1.0, "lo"), (0.5, 0.4, "hi"),
     (0.5, float("inf"), "hi"), ("0.5", 1.0, "lo")],
)
def test_optimal_quintic_validation(lo, hi, match):
    with pytest.raises(ValueError, match=match):
        optimal_odd_quintic(lo, hi)


def test_remez_non_convergence_raises(monkeypatch):
    monkeypatch.setattr(C, "_REMEZ_MAX_ITER", 1)
    with pytest.raises(RuntimeError, match="converge"):
        optimal_odd_quintic(0.1, 1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(lo=0.0), "lo"),
        (dict(lo=1.0), "lo"),
        (dict(safety=0.99), "safety"),
        (dict(safety=float("inf")), "safety"),
        (dict(cushion=-0.1), "cushion"),
        (dict(cushion=1.0), "cushion"),
    ],
)
def test_polar_express_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        polar_express_coefficients(**kwargs)


def test_validate_coefficients_normalizes():
    out = validate_coefficients([[1, 2, 3], np.array([4.0, 5.0, 6.0])])
    assert out == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert all(type(v) is float for t in out for v in t)
    assert validate_coefficients(np.array(POLAR_EXPRESS_5STEP)) == POLAR_EXPRESS_5STEP


@pytest.mark.parametrize(
    "bad",
    [
        [],
        (3.4445, -4.775, 2.0315),  # a bare triple, not a sequence of triples
        [(1.0, 2.0)],
        [(1.0, 2.0, 3.0, 4.0)],
        [(1.0, float("nan"), 3.0)],
        [(1.0, 2.0, float("inf"))],
        [(1.0, "x", 3.0)],
        ["abc"],
        5,
    ],
)
def test_validate_coefficients_rejects(bad):
    with pytest.raises(ValueError, match="coefficients"):
        validate_coefficients(bad)
