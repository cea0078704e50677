"""Polynomial coefficients for Muon's orthogonalization step.

Every orthogonalizer in fastmuon applies a sequence of odd quintics

    p(X) = a X + b (X X^T) X + c (X X^T)^2 X

to a normalized matrix X.  Acting on the SVD X = U S V^T, each step maps every
singular value sigma to p(sigma) = a sigma + b sigma^3 + c sigma^5 and leaves the
singular vectors alone, so the quality of an orthogonalizer is entirely a
question about scalar polynomials on an interval [lo, 1]: how close to 1 does the
composition p_k(...p_1(sigma)) bring every sigma in that interval?  This module
holds the coefficient sets, the generator for the Polar Express family, and
scalar tools (``apply_scalar``, ``worst_case_error``) that tests use to derive
error bounds for the matrix code.

The sets
--------
``JORDAN_NEWTON_SCHULZ``
    Keller Jordan's quintic (3.4445, -4.7750, 2.0315), used for every step with
    the input normalized by ``||X||_F + NEWTON_SCHULZ_EPS``.  It was tuned for a
    steep slope at 0 rather than for convergence, so singular values end up in
    roughly [0.68, 1.13]; worst-case |p(sigma) - 1| is about 0.53 on [1e-3, 1].

``YOU_5STEP``
    Five per-step triples (attributed to You; used by dion and optax's 'dion'
    preset).  Each step has its own polynomial, but they are a fixed 5-step
    design: truncating them leaves a non-converged polynomial.

``POLAR_EXPRESS_5STEP``
    Polar Express (Amsel, Persson, Musco, Gower, arXiv 2505.16932): every step
    is the minimax-optimal odd quintic for the interval the singular values
    currently occupy.  This is the table used by modded-nanogpt and dion: it is
    ``polar_express_coefficients(5, lo=1e-3, safety=1.02, cushion=0.02)``, with
    the safety factor already folded into the coefficients.  The input must be
    normalized by ``||X||_F * POLAR_EXPRESS_SAFETY + POLAR_EXPRESS_EPS``.
    Worst case |p5(sigma / 1.02) - 1| is about 0.15 on [1e-3, 1].

``STEADY_STATE``
    (15/8, -10/8, 3/8): the limit of the minimax quintic as the interval shrinks
    to the point 1.  It has p(1) = 1 and p'(1) = p''(1) = 0, so it converges
    cubically near 1; appending it is how the tables are extended beyond their
    designed number of steps.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable

import numpy as np

__all__ = [
    "Coefficients",
    "JORDAN_NEWTON_SCHULZ",
    "YOU_5STEP",
    "POLAR_EXPRESS_5STEP",
    "POLAR_EXPRESS_SAFETY",
    "POLAR_EXPRESS_EPS",
    "NEWTON_SCHULZ_EPS",
    "STEADY_STATE",
    "COEFFICIENT_METHODS",
    "AOL_LO",
    "optimal_odd_quintic",
    "polar_express_coefficients",
    "coefficients_for",
    "validate_coefficients",
    "apply_scalar",
    "worst_case_error",
]

Coefficients = tuple[tuple[float, float, float], ...]
"""A sequence of (a, b, c) triples, one odd quintic per iteration, applied in order."""

JORDAN_NEWTON_SCHULZ: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

YOU_5STEP: Coefficients = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

POLAR_EXPRESS_5STEP: Coefficients = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

# The Polar Express table is designed for inputs normalized by ||X||_F * 1.02 + 1e-6:
# the extra 2% guards against singular values pushed slightly above 1 by bf16
# rounding, which the first (very steep) polynomial would otherwise send far off.
POLAR_EXPRESS_SAFETY: float = 1.02
POLAR_EXPRESS_EPS: float = 1e-6
# Keller Jordan's normalization: ||X||_F + 1e-7.
NEWTON_SCHULZ_EPS: float = 1e-7

STEADY_STATE: tuple[float, float, float] = (1.875, -1.25, 0.375)

COEFFICIENT_METHODS: tuple[str, ...] = ("newton_schulz", "polar_express", "you", "aol")

# Smallest singular value the "aol" polynomials are designed for: the Polar Express recipe on
# [AOL_LO, 1] (safety 1.02, cushion 0.02). After AOL's row scaling the spectrum of a Gaussian
# 768 x 3072 lies in [0.15, 0.43], and of power-law spectra with condition 1e2 / 1e4 in
# [4.6e-3, 0.46] / [5.3e-5, 0.52]. With 4 steps, float64, distance to the SVD polar factor
# (relative Frobenius / spectral), lo = 5e-3 gave 0.065 / 0.100, 0.071 / 0.150 and 0.575 / 0.989
# on those three inputs, against Jordan's 5-step Newton-Schulz 0.163 / 0.318, 0.207 / 0.489 and
# 0.624 / 0.993, and the 5-step Polar Express 0.096 / 0.141, 0.095 / 0.141, 0.552 / 0.985;
# lo = 3e-3 was worse on the first two, 7e-3 on the last two, and 3 steps lost to Newton-Schulz
# on the condition-1e2 input at every lo (0.27 and more).
# Worst-case scalar error |p(sigma / 1.02) - 1| on [AOL_LO, 1]: 0.11 with 4 steps, 0.0017 with 5,
# 0.52 with 3 (the 5-step Polar Express table on [1e-3, 1]: 0.15); below AOL_LO the polynomials
# do not reach 1 (4 steps: 0.79 on [1e-3, 1]), which AOL's scaling makes rare (see above).
AOL_LO: float = 5e-3

# The "aol" tables for 1 to 10 steps, made once here: inside torch.compile the Remez exchange
# would be traced (numpy and lru_cache included) at every plan.
AOL_COEFFICIENTS: dict[int, Coefficients] = {}

# Relative width below which [lo, hi] is treated as a single point: there the 4x4
# Remez system is numerically singular, and the minimax quintic has converged to
# the (rescaled) steady-state polynomial anyway.
_NARROW_INTERVAL = 5e-6
_REMEZ_TOL = 1e-15
_REMEZ_MAX_ITER = 100


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; steps=True is almost certainly a bug, so refuse it.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _eval(a: float, b: float, c: float, x: float) -> float:
    x2 = x * x
    return x * (a + x2 * (b + c * x2))


def optimal_odd_quintic(lo: float, hi: float) -> tuple[float, float, float]:
    """Minimax-optimal odd quintic approximating 1 on [lo, hi].

    Returns (a, b, c) minimizing max over x in [lo, hi] of |a x + b x^3 + c x^5 - 1|.
    By Chebyshev's equioscillation theorem the optimum (three free coefficients)
    is characterized by the error reaching its maximum E at four points
    lo < q < r < hi with alternating signs; q and r are then interior extrema of
    p, i.e. roots of p'(x) = a + 3 b x^2 + 5 c x^4.  The Remez exchange finds
    them: solve the 4x4 linear system p(x_i) + (-1)^i E = 1 at the current
    points (unknowns a, b, c, E), move q, r to the critical points of the new p,
    and repeat until E stops changing.  It converges quadratically (about four
    iterations in practice).

    The problem is scale invariant (if p is optimal on [lo, hi], p(x / hi) with
    the corresponding coefficients is optimal on [lo/hi, 1]), so it is solved on
    [lo/hi, 1] and rescaled, which keeps the linear system well conditioned for
    any hi.  For lo/hi >= 1 - 5e-6 the interval is effectively a point and the
    rescaled STEADY_STATE polynomial is returned.

    Raises ValueError unless 0 < lo <= hi (both finite), and RuntimeError if the
    exchange fails to converge.
    """
    lo = _check_real("lo", lo)
    hi = _check_real("hi", hi)
    if not (math.isfinite(lo) and lo > 0):
        raise ValueError(f"lo must be finite and > 0, got {lo!r}")
    if not math.isfinite(hi):
        raise ValueError(f"hi must be finite, got {hi!r}")
    if hi < lo:
        raise ValueError(f"hi must be >= lo, got lo={lo!r}, hi={hi!r}")

    t = lo / hi
    if t >= 1.0 - _NARROW_INTERVAL:
        a, b, c = STEADY_STATE
    else:
        a, b, c = _remez_unit(t)
    return (a / hi, b / hi**3, c / hi**5)


def _remez_unit(lo: float) -> tuple[float, float, float]:
    """Remez exchange for the minimax odd quintic on [lo, 1], 0 < lo < 1 - 5e-6."""
    hi = 1.0
    q = (3.0 * lo + hi) / 4.0
    r = (lo + 3.0 * hi) / 4.0
    signs = np.array([1.0, -1.0, 1.0, -1.0])
    rhs = np.ones(4)
    e_prev = math.inf
    for _ in range(_REMEZ_MAX_ITER):
        x = np.array([lo, q, r, hi])
        system = np.stack([x, x**3, x**5, signs], axis=1)
        a, b, c, e = (float(v) for v in np.linalg.solve(system, rhs))
        if not math.isfinite(e):
            break
        # p'(x) = a + 3 b x^2 + 5 c x^4 = 0 is a quadratic in x^2.
        disc = 9.0 * b * b - 20.0 * a * c
        if c == 0.0 or disc < 0.0:
            break
        root = math.sqrt(disc)
        q2 = (-3.0 * b - root) / (10.0 * c)
        r2 = (-3.0 * b + root) / (10.0 * c)
        if not (0.0 < q2 < r2):
            break
        q, r = math.sqrt(q2), math.sqrt(r2)
        if abs(e - e_prev) <= _REMEZ_TOL:
            return (a, b, c)
        e_prev = e
    raise RuntimeError(
        f"Remez exchange for the optimal odd quintic on [{lo!r}, 1] did not converge"
    )


@functools.lru_cache(maxsize=64)
def _polar_express_cached(
    steps: int, lo: float, safety: float, cushion: float
) -> Coefficients:
    l, u = lo, 1.0
    out: list[tuple[float, float, float]] = []
    for k in range(steps):
        a, b, c = optimal_odd_quintic(max(l, cushion * u), u)
        if cushion * u > l:
            # The quintic was fitted on [cushion*u, u], ignoring [l, cushion*u]; scale
            # it so that the new interval [p(l), p(u)] is centred on 1.
            factor = 2.0 / (_eval(a, b, c, l) + _eval(a, b, c, u))
            a, b, c = a * factor, b * factor, c * factor
        if k < steps - 1:
            # p(x) -> p(x / s): the safety margin is folded into every step but the
            # last.  The interval update below uses these divided coefficients;
            # updating l with the undivided polynomial does NOT reproduce the
            # published table (differences ~5e-2 from step 2 on).
            a, b, c = a / safety, b / safety**3, c / safety**5
        out.append((a, b, c))
        # p(l) < 1 for any non-degenerate interval; the clamp only guards against
        # rounding on intervals that have already collapsed onto 1.
        l = min(_eval(a, b, c, l), 1.0)
        u = 2.0 - l
    return tuple(out)


def polar_express_coefficients(
    steps: int = 5,
    *,
    lo: float = 1e-3,
    safety: float = 1.02,
    cushion: float = 0.02,
) -> Coefficients:
    """Polar Express coefficients designed for ``steps`` iterations.

    Greedy composition of minimax quintics (Amsel et al., arXiv 2505.16932):
    start from singular values in [lo, 1]; at each step fit the optimal quintic
    on [max(l, cushion*u), u].  The cushion stops the first steps from spending
    their whole budget on tiny singular values (the optimal quintic on [1e-3, 1]
    is nearly flat at 1 - E with E ~ 0.99); when it is active, p is rescaled so
    that p(l) + p(u) = 2.  Every step but the last is then made to tolerate
    inputs up to ``safety`` times too large by replacing p(x) with p(x / safety),
    i.e. dividing (a, b, c) by (s, s^3, s^5); the next interval is
    [p(l), 2 - p(l)] evaluated with those divided coefficients.

    With the defaults this reproduces POLAR_EXPRESS_5STEP to ~1e-14.  The
    resulting coefficients expect inputs normalized by ``||X||_F * safety + eps``.
    """
    steps = _check_int("steps", steps, 1)
    lo = _check_real("lo", lo)
    safety = _check_real("safety", safety)
    cushion = _check_real("cushion", cushion)
    if not (0.0 < lo < 1.0):
        raise ValueError(f"lo must satisfy 0 < lo < 1, got {lo!r}")
    if not (math.isfinite(safety) and safety >= 1.0):
        raise ValueError(f"safety must be finite and >= 1, got {safety!r}")
    if not (0.0 <= cushion < 1.0):
        raise ValueError(f"cushion must satisfy 0 <= cushion < 1, got {cushion!r}")
    return _polar_express_cached(steps, lo, safety, cushion)


def coefficients_for(method: str, steps: int) -> Coefficients:
    """Coefficients for ``steps`` iterations of a named method.

    - "newton_schulz": JORDAN_NEWTON_SCHULZ repeated (it is a one-polynomial method).
    - "polar_express": the pinned 5-step table for steps == 5 (bit-identical to
      what modded-nanogpt/dion use); for fewer steps a schedule designed for that
      many steps (a prefix of the 5-step table would stop mid-descent); for more
      steps the table followed by STEADY_STATE, which converges cubically from
      the table's ~0.15 worst case.
    - "you": the 5-step table, extended by STEADY_STATE for more steps; fewer than
      5 steps is refused because a prefix leaves singular values far from 1.
    - "aol": the Polar Express recipe for ``steps`` on [AOL_LO, 1], the interval AOL's row
      scaling leaves (see AOL_LO).
    """
    if not isinstance(method, str) or method not in COEFFICIENT_METHODS:
        raise ValueError(
            f"unknown method {method!r}; valid methods are {', '.join(COEFFICIENT_METHODS)}"
        )
    steps = _check_int("steps", steps, 1)
    if method == "newton_schulz":
        return (JORDAN_NEWTON_SCHULZ,) * steps
    if method == "aol":
        return AOL_COEFFICIENTS.get(steps) or polar_express_coefficients(steps, lo=AOL_LO)
    if method == "polar_express":
        if steps == 5:
            return POLAR_EXPRESS_5STEP
        if steps < 5:
            return polar_express_coefficients(steps)
        return POLAR_EXPRESS_5STEP + (STEADY_STATE,) * (steps - 5)
    # method == "you"
    if steps < 5:
        raise ValueError(
            f"steps must be >= 5 for method 'you' (a fixed 5-step design), got {steps}"
        )
    return YOU_5STEP + (STEADY_STATE,) * (steps - 5)


def validate_coefficients(coefficients: Iterable) -> Coefficients:
    """Normalize a user-given sequence of (a, b, c) into a tuple of float triples.

    User-supplied schedules reach the matrix kernels as plain floats, so
    malformed input (an empty list, a bare (a, b, c) instead of [(a, b, c)],
    NaN) is rejected here with a message rather than deep inside a kernel.
    """
    try:
        items = list(coefficients)
    except TypeError:
        raise ValueError(
            f"coefficients must be a sequence of (a, b, c) triples, got {coefficients!r}"
        ) from None
    if not items:
        raise ValueError("coefficients must contain at least one (a, b, c) triple")
    out: list[tuple[float, float, float]] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, bytes)):
            raise ValueError(f"coefficients[{i}] must be an (a, b, c) triple, got {item!r}")
        try:
            triple = tuple(item)
        except TypeError:
            raise ValueError(
                f"coefficients[{i}] must be an (a, b, c) triple, got {item!r}"
            ) from None
        if len(triple) != 3:
            raise ValueError(
                f"coefficients[{i}] must have exactly 3 entries (a, b, c), got {len(triple)}"
            )
        try:
            values = tuple(float(v) for v in triple)
        except (TypeError, ValueError):
            raise ValueError(
                f"coefficients[{i}] must contain real numbers, got {item!r}"
            ) from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"coefficients[{i}] must be finite, got {values!r}")
        out.append(values)  # type: ignore[arg-type]
    return tuple(out)


def apply_scalar(coefficients: Iterable, x: np.ndarray) -> np.ndarray:
    """Push scalars through the composed polynomials, in float64.

    This is exactly what each singular value of the (normalized) input goes
    through in exact arithmetic, so it gives the reference against which the
    matrix implementations are checked.  Returns a new float64 array.
    """
    coeffs = validate_coefficients(coefficients)
    y = np.array(x, dtype=np.float64, copy=True)
    for a, b, c in coeffs:
        y2 = y * y
        y = y * (a + y2 * (b + c * y2))
    return y


def worst_case_error(
    coefficients: Iterable,
    lo: float,
    hi: float,
    *,
    scale: float = 1.0,
    n: int = 100_000,
) -> float:
    """max |apply_scalar(coefficients, x / scale) - 1| for x in [lo, hi].

    Sampled on n log-spaced points (resolving the small singular values, where
    the steep first steps vary fastest) plus n linear points (resolving the
    oscillations near 1); both include the endpoints.  ``scale`` models the
    normalization, e.g. POLAR_EXPRESS_SAFETY for the Polar Express table.
    """
    lo = _check_real("lo", lo)
    hi = _check_real("hi", hi)
    scale = _check_real("scale", scale)
    n = _check_int("n", n, 2)
    if not (math.isfinite(lo) and lo > 0):
        raise ValueError(f"lo must be finite and > 0, got {lo!r}")
    if not (math.isfinite(hi) and hi >= lo):
        raise ValueError(f"hi must be finite and >= lo, got lo={lo!r}, hi={hi!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale!r}")
    x = np.concatenate([np.geomspace(lo, hi, n), np.linspace(lo, hi, n)])
    return float(np.max(np.abs(apply_scalar(coefficients, x / scale) - 1.0)))


AOL_COEFFICIENTS.update({steps: polar_express_coefficients(steps, lo=AOL_LO) for steps in range(1, 11)})
