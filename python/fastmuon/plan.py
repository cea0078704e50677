"""Framework-neutral description of one orthogonalization: what to iterate and how to normalize.

Both ``fastmuon.torch.orthogonalize`` and ``fastmuon.mlx.orthogonalize`` validate their
arguments here, so the two frameworks accept exactly the same inputs and raise the same errors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

from . import coefficients as _coef

METHODS = ("auto", "newton_schulz", "polar_express", "gram", "aol")
METHODS_DOC = """``"auto"`` (the default: ``"aol"`` on the matrices where it iterates in Gram
            space, wide or tall ones of at least 256 rows and aspect 2 with at most 5 steps, and
            ``"polar_express"`` on the others; ``fastmuon.plan.Plan.for_shape``),
            ``"newton_schulz"`` (Jordan's quintic), ``"polar_express"`` (the 5-step table, safety
            factor 1.02, on every shape), ``"gram"`` (Polar Express iterated on the
            Gram matrix) or ``"aol"`` (AOL row scaling, then Polar Express polynomials fitted for
            the interval it leaves)."""
"""The ``method`` argument, as both frameworks' ``orthogonalize`` document it."""

# What method="auto" (the default) runs on each matrix: AOL where it iterates in Gram space (the
# batches AOL_GRAM_* describe below, where it does less work than any standard iteration), Polar
# Express elsewhere, where AOL would do the same work and only move the singular vectors (AOL's
# row scaling changes the polar factor it converges to). On the quality panel (bench/results/
# quality.jsonl) this pairing is no worse than torch.optim.Muon's Newton-Schulz on any input in
# either metric in float64 and fp32; AOL 5 everywhere was 0.8% worse in spectral distance on the
# square rank-8-plus-noise input, AOL 4 5.9% worse on rank 8 plus noise.
AUTO_GRAM_METHOD = "aol"
AUTO_STANDARD_METHOD = "polar_express"

# Normalization per method: X / (||X||_F * scale + eps). Polar Express divides by its safety
# factor so that every singular value starts inside the interval its polynomials were designed for.
_NORMALIZATION = {
    "newton_schulz": (1.0, _coef.NEWTON_SCHULZ_EPS),
    "polar_express": (_coef.POLAR_EXPRESS_SAFETY, _coef.POLAR_EXPRESS_EPS),
    "gram": (_coef.POLAR_EXPRESS_SAFETY, _coef.POLAR_EXPRESS_EPS),
    # AOL rescales the rows afterwards (which makes its result independent of this scale); the
    # Frobenius normalization first keeps X X^T from overflowing and a zero matrix at zeros.
    "aol": (1.0, _coef.POLAR_EXPRESS_EPS),
}

DEFAULT_STEPS = 5

# The Gram-space iteration squares the condition number and drifts away from X_k X_k^T.
# Without restarts, fp32 results on ill-conditioned inputs were ~500x further from the exact
# iteration than the standard iteration's, bf16 several times further. Recomputing X and its Gram
# matrix after every second step brought fp32 within ~5x and bf16 level with the standard
# iteration (64x64 .. 256x768, sigma_min 1e-3 and rank-deficient), so every dtype restarts.
GRAM_RESTART_EVERY = 2

# AOL runs in Gram space where that does less work and stays as accurate: wide batches (m x n,
# n >= 2 m; the wide orientation of a tall one) of at least 256 rows, plans of at most 5 steps,
# restarted once, after the second step. Per step it then touches only m x m matrices, and X
# four times in all (AOL's Gram matrix, the restart's X and X X^T, the last product) instead of
# twice a step: at 768 x 3072 with 5 steps, 27 against 41 GFLOP (fastmuon.flops).
# Evidence in bf16 (bench/bench_quality.py, tests/test_aol_gram.py): on the quality panel its
# errors match the standard form's to 0.01; on 460 random and adversarial inputs of 2 to 512
# rows its largest singular value stayed <= 1.08. What diverged: 2 of 1,000 inputs of 2 to 8
# rows (2 x 33 with a power-law spectrum: 695), restarting after the third step instead
# (singular values of 1e3 to 1e9 on 8 of 11 small panel inputs) and Gram-space Polar Express
# restarted after the second (rank 8 plus noise: 150): spurious negative eigenvalues of R, from
# rounding, grow every step. Hence the minimum size, and the standard form elsewhere.
AOL_GRAM_MIN_ROWS = 256
AOL_GRAM_MIN_ASPECT = 2
AOL_GRAM_MAX_STEPS = 5
AOL_GRAM_RESTART_AFTER = 2


@dataclass(frozen=True)
class GramRule:
    """Where a plan iterates in Gram space: wide (m x n) batches with m >= ``min_rows`` and
    n >= ``min_aspect`` * m, recomputing X and its Gram matrix after every ``restart_every``-th
    step, at most ``restarts`` times (-1: no limit). The native kernels take the same fields
    (``fastmuon.native.kernel_plan``)."""

    min_rows: int = 0
    min_aspect: int = 1
    restart_every: int = 1
    restarts: int = -1


@dataclass(frozen=True)
class Plan:
    method: str
    coefficients: _coef.Coefficients
    norm_scale: float
    eps: float
    # method "auto": (the plan of the matrices that take its Gram form, the plan of the others or
    # None where every matrix runs the first), made with it (a cache would be traced by
    # torch.compile)
    shape_plans: Optional[Tuple["Plan", Optional["Plan"]]] = None

    def for_shape(self, m: int, n: int) -> "Plan":
        """The plan an (m x n) matrix runs (either orientation): this one, or for method "auto"
        AOL where AOL iterates in Gram space and Polar Express elsewhere, with this plan's steps
        and eps."""
        gram_plan, standard_plan = self.shape_choices()
        if standard_plan is None or gram_plan.gram_form(min(m, n), max(m, n)):
            return gram_plan
        return standard_plan

    def shape_choices(self) -> Tuple["Plan", Optional["Plan"]]:
        """(the plan, None) for a plan that is the same on every shape; for method "auto", (the
        plan of the matrices that take its Gram form, the plan of the others)."""
        if self.shape_plans is None:
            return self, None
        return self.shape_plans

    @property
    def uses_gram(self) -> bool:
        """Whether every batch iterates in Gram space (method "gram"); ``gram_form`` says it for
        one batch shape."""
        return self.method == "gram"

    @property
    def gram_rule(self) -> Optional[GramRule]:
        """Where this plan iterates in Gram space: every batch for "gram"; for "aol" of at most
        ``AOL_GRAM_MAX_STEPS`` steps, large wide batches restarted once; None otherwise."""
        if self.uses_gram:
            return GramRule(restart_every=GRAM_RESTART_EVERY)
        if self.uses_aol and len(self.coefficients) <= AOL_GRAM_MAX_STEPS:
            return GramRule(AOL_GRAM_MIN_ROWS, AOL_GRAM_MIN_ASPECT, AOL_GRAM_RESTART_AFTER, 1)
        return None

    def gram_form(self, m: int, n: int) -> bool:
        """Whether a wide (m x n, m <= n) batch iterates in Gram space (``gram_rule``)."""
        rule = self.gram_rule
        return rule is not None and m >= rule.min_rows and n >= rule.min_aspect * m

    @property
    def uses_aol(self) -> bool:
        """AOL preconditioning (Turbo-Muon): after the normalization, A = X X^T and
        X <- D X with d_i = 1 / sqrt(sum_j |A_ij|), which bounds ||X||_2 by 1 far more tightly
        than the Frobenius norm; the first step's Gram matrix is D A D, no product more."""
        return self.method == "aol"

    def restart_after(self, step: int) -> bool:
        """Whether the Gram iteration recomputes X and its Gram matrix after ``step`` (1-based)."""
        rule = self.gram_rule
        if rule is None or step >= len(self.coefficients) or step % rule.restart_every:
            return False
        return rule.restarts < 0 or step // rule.restart_every <= rule.restarts


def make_plan(method: str, steps: int, coefficients: Optional[Sequence], eps: Optional[float] = None) -> Plan:
    """Validate (method, steps, coefficients, eps) and return the iteration to run.

    ``method`` fixes the algorithm (standard or Gram-space) and the normalization; custom
    ``coefficients`` replace the method's polynomials and fix the step count themselves (with
    "auto", which runs two methods' tables, they run as "polar_express" on every shape); ``eps``
    (default: the method's) is added to the scaled norm before the division.
    """
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0
                            or eps == float("inf")):
        # eps = 0 would divide a zero matrix (a zero gradient) by 0: NaN instead of zeros
        raise ValueError(f"eps must be a finite number > 0 (it keeps a zero matrix at zeros), got {eps!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if method == "auto" and coefficients is None:
        # the fields of the plan the standard-form matrices run, and both plans for for_shape
        standard = make_plan(AUTO_STANDARD_METHOD, steps, None, eps)
        # AOL takes its Gram form only up to AOL_GRAM_MAX_STEPS: beyond, "auto" is the standard plan
        gram = make_plan(AUTO_GRAM_METHOD, steps, None, standard.eps) if steps <= AOL_GRAM_MAX_STEPS else None
        return replace(standard, method="auto", shape_plans=(standard, None) if gram is None else (gram, standard))
    if coefficients is not None:
        if method == "auto":  # one table for every shape, normalized as Polar Express
            method = "polar_express"
        coeffs = _coef.validate_coefficients(coefficients)
        if steps != DEFAULT_STEPS and steps != len(coeffs):
            raise ValueError(
                f"steps={steps!r} conflicts with the {len(coeffs)} custom coefficients; "
                "custom coefficients fix the number of steps, leave steps at its default"
            )
    else:
        base = "polar_express" if method == "gram" else method
        coeffs = _coef.coefficients_for(base, steps)
    scale, method_eps = _NORMALIZATION[method]
    return Plan(method=method, coefficients=coeffs, norm_scale=scale, eps=method_eps if eps is None else float(eps))


# The Gram-space iteration computes in 32 bits or more. In bf16 it diverged on small, well-
# conditioned inputs (3 x 40 Gaussians: 18 of 200 results had singular values of ~100 instead of
# ~1), and on the GPT-2 block it landed further from the float64 iteration than the standard
# iteration run all in bf16 (bench/bench_bf16_accuracy.py), so a default 16-bit compute dtype
# becomes fp32 for it and an explicit one is refused.
GRAM_MIN_BITS = 32


def gram_needs_wider(method: str, bits: int) -> bool:
    """Whether ``method`` cannot compute in a float of ``bits`` bits (the Gram-space iteration
    in 16-bit floats)."""
    return method == "gram" and bits < GRAM_MIN_BITS


def check_compute_bits(method: str, bits: int, dtype, name: str = "dtype") -> None:
    if gram_needs_wider(method, bits):
        raise ValueError(
            f'{name}={dtype} with method="gram": the Gram-space iteration needs float32 or float64 '
            "(in 16-bit floats it diverges on some inputs); leave it None, or use method=\"polar_express\""
        )


def choose_backend(candidates: Sequence[Tuple[str, Callable[..., Optional[str]]]], *facts) -> Tuple[Optional[str], str]:
    """What ``backend="auto"`` picks from a framework's registry: the first of ``candidates``
    ((name, refusal) in order of preference) whose ``refusal(*facts)`` is None, or None; and why
    the others refused, joined (a refusal beginning "<name> runs on" only says the backend is for
    another device, and is left out)."""
    refusals: List[str] = []
    for name, refusal in candidates:
        why = refusal(*facts)
        if why is None:
            return name, "; ".join(refusals)
        if not why.startswith(f"{name} runs on"):
            refusals.append(why)
    return None, "; ".join(refusals)


def check_backend(backend: str, valid: Sequence[str]) -> str:
    if backend not in valid:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(valid)}")
    return backend


def check_matrix_shape(shape: Sequence[int], name: str = "G") -> None:
    if len(shape) < 2:
        raise ValueError(
            f"{name} must be a matrix or a batch of matrices with shape (..., m, n); "
            f"got shape {tuple(shape)}"
        )
