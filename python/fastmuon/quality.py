"""A quality panel for orthogonalizers: how close each preset lands to the exact polar factor.

Framework-neutral: numpy float64 only, so that tests and benches of every framework share it.
``bench/bench_quality.py`` runs the panel on every backend and compute dtype that runs on a
machine; ``tests/test_quality.py`` runs its quick version.

The panel
---------
``PRESETS``
    Named (method, steps) pairs. ``newton_schulz5`` (Keller Jordan's quintic, 5 steps: what
    ``torch.optim.Muon`` and Jordan's reference Muon run) is the anchor, ``ANCHOR``: a preset is
    judged by the ratio of its error to the anchor's on the same input, backend and dtype.

``panel_inputs``
    Deterministic float64 inputs (see its docstring for exactly what each one is): Gaussian,
    power-law spectra of condition 1e2 and 1e4, rank 8 plus small noise, a 3-D stack of
    differently conditioned and scaled matrices, and the momentum buffers of a small 2-layer
    MLP trained with SGD-momentum on synthetic data (``mlp_momenta``), recomputed on each call.

``metrics``
    Against P = U V^T (``polar_factor``, float64 SVD of the input): ``rel_fro`` =
    ||O - P||_F / ||P||_F, ``spectral`` = ||O - P||_2, and the smallest and largest singular
    values of O (``sigma_min``, ``sigma_max``). On a stack, each matrix is measured alone and the
    worst is reported (largest distances, smallest sigma_min, largest sigma_max).

``evaluate``
    Runs an orthogonalize function on the inputs for one or more presets (taking turns when
    timed) and returns one row (a dict) per (preset, input).

References for checks: ``scalar_metrics`` gives the metrics the exact iteration must reach for a
scalar-normalized method (every method but AOL maps each normalized singular value through the
scalar polynomials and keeps the singular vectors), and ``numpy_orthogonalize`` is an
independent float64 matrix iteration whose AOL row-sum exponent can be changed (a deliberately
wrong AOL, to show that the panel notices).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .coefficients import apply_scalar
from .plan import Plan, make_plan

__all__ = [
    "ANCHOR",
    "PRESETS",
    "Preset",
    "preset",
    "DEFAULT_SIZES",
    "QUICK_SIZES",
    "panel_inputs",
    "input_kind",
    "mlp_momenta",
    "polar_factor",
    "metrics",
    "scalar_metrics",
    "numpy_orthogonalize",
    "evaluate",
    "ratios_to_anchor",
    "METRICS",
]

# ------------------------------------------------------------------ presets

PRESETS: Dict[str, Tuple[str, int]] = {
    "newton_schulz5": ("newton_schulz", 5),  # torch.optim.Muon's / Jordan's: the anchor
    "auto5": ("auto", 5),  # fastmuon's default: aol5 where it runs in Gram space, else polar_express5
    "polar_express5": ("polar_express", 5),  # what auto5 runs on square and small matrices
    "polar_express4": ("polar_express", 4),
    "aol3": ("aol", 3),
    "aol4": ("aol", 4),  # the steps "aol" is designed for
    "aol5": ("aol", 5),
    "gram5": ("gram", 5),
}

ANCHOR = "newton_schulz5"

METRICS = ("rel_fro", "spectral")
"""The two distances to the polar factor the panel compares presets by."""


@dataclass(frozen=True)
class Preset:
    """One orthogonalizer: ``method`` and ``steps`` as ``orthogonalize`` takes them, and custom
    ``coefficients`` (None: the method's own). A perturbed preset keeps its method and gets a
    name of its own."""

    name: str
    method: str
    steps: int
    coefficients: Optional[Tuple[Tuple[float, float, float], ...]] = None

    def plan(self) -> Plan:
        return make_plan(self.method, self.steps, self.coefficients)

    def kwargs(self) -> Dict[str, Any]:
        """The keyword arguments of ``orthogonalize`` (fastmuon.torch / fastmuon.mlx)."""
        return {"method": self.method, "steps": self.steps, "coefficients": self.coefficients}

    def with_coefficients(self, coefficients, name: str) -> "Preset":
        coefficients = tuple(tuple(float(v) for v in abc) for abc in coefficients)
        return Preset(name, self.method, len(coefficients), coefficients)


def preset(name_or_preset: Union[str, Preset]) -> Preset:
    """The ``Preset`` named in ``PRESETS`` (a ``Preset`` is returned as it is)."""
    if isinstance(name_or_preset, Preset):
        return name_or_preset
    if name_or_preset not in PRESETS:
        raise ValueError(f"unknown preset {name_or_preset!r}; presets: {', '.join(PRESETS)}")
    method, steps = PRESETS[name_or_preset]
    return Preset(name_or_preset, method, steps)


# ------------------------------------------------------------------ inputs

DEFAULT_SIZES = ((768, 768), (768, 2304), (768, 3072))
QUICK_SIZES = ((64, 128), (96, 192))
DEFAULT_STACK = (4, 256, 768)
QUICK_STACK = (4, 32, 96)

# Rank-8 inputs: the noise's spectral norm, relative to the largest singular value (1).
RANK8_NOISE = 1e-3

# The MLP that produces the momentum-like inputs (``mlp_momenta``).
MLP_STEPS = 300
MLP_BATCH = 64
MLP_LR = 0.02
MLP_MOMENTUM = 0.95  # Muon's default momentum
MLP_TEACHER_HIDDEN = 16


def _orthonormal(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """n x r with orthonormal columns (QR of a Gaussian, signs fixed so that it is Haar)."""
    Q, R = np.linalg.qr(rng.standard_normal((n, r)))
    return Q * np.sign(np.diag(R))


def _with_spectrum(rng: np.random.Generator, m: int, n: int, sigma: np.ndarray) -> np.ndarray:
    r = min(m, n)
    return (_orthonormal(rng, m, r) * sigma) @ _orthonormal(rng, n, r).T


def _matrix(rng: np.random.Generator, kind: str, m: int, n: int) -> np.ndarray:
    r = min(m, n)
    if kind == "gaussian":
        return rng.standard_normal((m, n))
    if kind == "powerlaw_1e2":
        return _with_spectrum(rng, m, n, np.logspace(0, -2, r))
    if kind == "powerlaw_1e4":
        return _with_spectrum(rng, m, n, np.logspace(0, -4, r))
    if kind == "rank8_noise":
        k = min(8, r)
        low = (_orthonormal(rng, m, k) * np.logspace(0, -1, k)) @ _orthonormal(rng, n, k).T
        # a Gaussian m x n matrix has spectral norm about sqrt(m) + sqrt(n)
        return low + rng.standard_normal((m, n)) * (RANK8_NOISE / (np.sqrt(m) + np.sqrt(n)))
    raise ValueError(kind)


MATRIX_KINDS = ("gaussian", "powerlaw_1e2", "powerlaw_1e4", "rank8_noise")
# The stack's matrices: every kind once, each at its own scale (normalization is per matrix).
STACK_SCALES = (1.0, 10.0, 0.1, 3.0)


def _shape_name(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def input_kind(name: str) -> str:
    """The kind of a panel input ("gaussian", "stack", "momentum_fc1", ...) from its name."""
    return name.split("/", 1)[0]


def panel_inputs(
    seed: int = 0,
    sizes: Sequence[Tuple[int, int]] = DEFAULT_SIZES,
    quick: bool = False,
    stack: Optional[Tuple[int, int, int]] = None,
    momentum: bool = True,
) -> Dict[str, np.ndarray]:
    """The panel's inputs, float64, by name "<kind>/<shape>", in a fixed order.

    For every (m, n) in ``sizes`` (``QUICK_SIZES`` with ``quick=True``):

    - ``gaussian``: i.i.d. N(0, 1) entries.
    - ``powerlaw_1e2``, ``powerlaw_1e4``: U diag(s) V^T with U, V Haar-random orthonormal and s
      log-spaced from 1 down to 1e-2 (1e-4), i.e. condition number 1e2 (1e4).
    - ``rank8_noise``: a rank-8 matrix (random orthonormal factors, singular values log-spaced
      from 1 to 0.1) plus i.i.d. Gaussian noise scaled to spectral norm about 1e-3
      (``RANK8_NOISE``): a low stable rank, as gradients have, but full rank.

    Then ``stack`` (default (4, 256, 768), quick (4, 32, 96)): a 3-D batch holding one matrix of
    each kind above, scaled by 1, 10, 0.1 and 3 (``STACK_SCALES``).

    Then, with ``momentum``, ``momentum_fc1`` (h x d) and ``momentum_fc2`` (d x h), where (d, h)
    is the last of ``sizes`` (768 x 3072 by default): the momentum buffers of the two weights
    of a 2-layer ReLU MLP after ``MLP_STEPS`` steps of SGD with momentum, ``mlp_momenta``.

    Every input comes from its own generator, seeded from (seed, its position), so that leaving
    one out changes no other. Nothing is stored: the MLP is retrained on every call (5-10 s in
    numpy for the default sizes on 2 cores, well under 1 s for the quick ones), deterministically
    for a given numpy/BLAS build (the BLAS's summation order fixes the last bits).
    """
    if quick:
        sizes = QUICK_SIZES if tuple(map(tuple, sizes)) == DEFAULT_SIZES else sizes
        stack = stack or QUICK_STACK
    stack = stack or DEFAULT_STACK
    out: Dict[str, np.ndarray] = {}
    position = 0

    def rng_for() -> np.random.Generator:
        nonlocal position
        position += 1
        return np.random.default_rng([seed, position])

    for m, n in sizes:
        for kind in MATRIX_KINDS:
            out[f"{kind}/{_shape_name((m, n))}"] = _matrix(rng_for(), kind, m, n)
    b, m, n = stack
    rng = rng_for()
    mats = [STACK_SCALES[i % len(STACK_SCALES)] * _matrix(rng, MATRIX_KINDS[i % len(MATRIX_KINDS)], m, n)
            for i in range(b)]
    out[f"stack/{_shape_name(stack)}"] = np.stack(mats)
    if momentum:
        d, h = sizes[-1]
        fc1, fc2 = mlp_momenta(d, h, seed=int(rng_for().integers(2**31)))
        out[f"momentum_fc1/{_shape_name(fc1.shape)}"] = fc1
        out[f"momentum_fc2/{_shape_name(fc2.shape)}"] = fc2
    return out


def mlp_momenta(d: int, hidden: int, *, seed: int = 0, steps: int = MLP_STEPS, batch: int = MLP_BATCH,
                lr: float = MLP_LR, momentum: float = MLP_MOMENTUM, return_losses: bool = False):
    """Momentum buffers (fc1: hidden x d, fc2: d x hidden) of a 2-layer MLP after ``steps``
    steps of SGD with momentum, in numpy float64.

    Data: x = (z * s) R^T with z ~ N(0, I_d), s_j = (j + 1)^-1/2 (a power-law covariance, as
    real features have) and R a random rotation. Targets: a random teacher
    y = tanh(x A^T) B^T (A: 16 x d with N(0, 4/d) entries, B: d x 16 with N(0, 1/16) entries)
    plus N(0, 0.01^2) label noise. Student: y_hat = relu(x W1^T) W2^T, no biases, W1
    (hidden x d) with N(0, 2/d) and W2 (d x hidden) with N(0, 1/hidden) entries; loss
    0.5 * mean over the batch of ||y_hat - y||^2. Each step draws a fresh batch of ``batch``
    samples and updates buf <- momentum * buf + grad, W <- W - lr * buf (torch.optim.SGD's
    momentum, no dampening, no Nesterov). The buffers of the last step are returned, and with
    ``return_losses`` the loss of every step."""
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(np.arange(1, d + 1))
    R = _orthonormal(rng, d, d)
    A = rng.standard_normal((MLP_TEACHER_HIDDEN, d)) * (2.0 / np.sqrt(d))
    B = rng.standard_normal((d, MLP_TEACHER_HIDDEN)) / np.sqrt(MLP_TEACHER_HIDDEN)
    W1 = rng.standard_normal((hidden, d)) * np.sqrt(2.0 / d)
    W2 = rng.standard_normal((d, hidden)) / np.sqrt(hidden)
    buf1 = np.zeros_like(W1)
    buf2 = np.zeros_like(W2)
    losses = []
    for _ in range(steps):
        x = (rng.standard_normal((batch, d)) * s) @ R.T
        y = np.tanh(x @ A.T) @ B.T + 0.01 * rng.standard_normal((batch, d))
        pre = x @ W1.T
        h = np.maximum(pre, 0.0)
        err = h @ W2.T - y
        losses.append(0.5 * float(np.sum(err * err)) / batch)
        dy = err / batch
        g2 = dy.T @ h
        g1 = ((dy @ W2) * (pre > 0)).T @ x
        buf1 = momentum * buf1 + g1
        buf2 = momentum * buf2 + g2
        W1 -= lr * buf1
        W2 -= lr * buf2
    return (buf1, buf2, losses) if return_losses else (buf1, buf2)


# ------------------------------------------------------------------ metrics


def polar_factor(G: np.ndarray) -> np.ndarray:
    """U V^T of every matrix of G (..., m, n), from the float64 SVD."""
    U, _, Vt = np.linalg.svd(np.asarray(G, dtype=np.float64), full_matrices=False)
    return U @ Vt


def _singular_values(X: np.ndarray, eigvalsh: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Singular values (ascending) of every matrix of a (batch, m, n) X, from the eigenvalues of
    the smaller Gram matrix of X / max|X| (no overflow however large X is); a matrix with a
    non-finite entry gets infinities."""
    finite = np.all(np.isfinite(X), axis=(-2, -1))
    X = np.where(finite[:, None, None], X, 0.0)
    peak = np.max(np.abs(X), axis=(-2, -1), keepdims=True)
    peak = np.where(peak > 0, peak, 1.0)
    Y = X / peak
    Yt = np.swapaxes(Y, -1, -2)
    gram = Y @ Yt if Y.shape[-2] <= Y.shape[-1] else Yt @ Y
    sigma = np.sqrt(np.maximum(eigvalsh(gram), 0.0)) * peak[:, :, 0]
    return np.where(finite[:, None], sigma, np.inf)


def metrics(O, G: Optional[np.ndarray] = None, P: Optional[np.ndarray] = None,
            eigvalsh: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> Dict[str, float]:
    """Distances of O (..., m, n) to the polar factor P of G (given, or ``polar_factor(G)``).

    ``rel_fro`` = ||O - P||_F / ||P||_F and ``spectral`` = ||O - P||_2, per matrix, the worst
    of a stack; ``sigma_min`` / ``sigma_max``: the extreme singular values of O over the stack.
    Spectral norms and singular values come from the eigenvalues of the smaller Gram matrix
    (``eigvalsh``: numpy's by default; the bench passes a faster one), accurate to ~1e-16 / sigma
    in sigma, far below anything the panel compares."""
    eigvalsh = eigvalsh or np.linalg.eigvalsh
    O = np.asarray(O, dtype=np.float64)
    if P is None:
        if G is None:
            raise ValueError("metrics needs G or its polar factor P")
        P = polar_factor(G)
    if O.shape != P.shape:
        raise ValueError(f"O has shape {O.shape}, the polar factor {P.shape}")
    O = O.reshape(-1, *O.shape[-2:])
    P = np.asarray(P, dtype=np.float64).reshape(O.shape)
    D = O - P
    spectral = _singular_values(D, eigvalsh)[:, -1]
    sigma = _singular_values(O, eigvalsh)
    with np.errstate(over="ignore", invalid="ignore"):
        rel = np.linalg.norm(D, axis=(-2, -1)) / np.linalg.norm(P, axis=(-2, -1))
    rel = np.where(np.isfinite(spectral), rel, np.inf)  # a non-finite O is infinitely far
    return {
        "rel_fro": float(np.max(rel)),
        "spectral": float(np.max(spectral)),
        "sigma_min": float(np.min(sigma[:, 0])),
        "sigma_max": float(np.max(sigma[:, -1])),
    }


def scalar_metrics(which: Union[str, Preset], G: np.ndarray) -> Dict[str, float]:
    """The metrics the exact iteration of a scalar-normalized preset (any method but "aol")
    reaches on G: with G = U S V^T, the output is U p(S / (||G||_F * scale + eps)) V^T, so
    O - P = U (p(x) - 1) V^T and every metric follows from the scalars y = p(x)."""
    p = preset(which)
    plan = p.plan().for_shape(*np.shape(G)[-2:])
    if plan.uses_aol:
        raise ValueError("AOL's row scaling changes the singular vectors: no scalar prediction "
                         "(use numpy_orthogonalize as the float64 reference)")
    S = np.linalg.svd(np.asarray(G, dtype=np.float64), compute_uv=False)
    S = S.reshape(-1, S.shape[-1])
    x = S / (np.sqrt(np.sum(S * S, axis=-1, keepdims=True)) * plan.norm_scale + plan.eps)
    y = apply_scalar(plan.coefficients, x)
    err = np.abs(y - 1.0)
    return {
        "rel_fro": float(np.max(np.sqrt(np.mean(err * err, axis=-1)))),
        "spectral": float(np.max(err)),
        "sigma_min": float(np.min(np.abs(y))),
        "sigma_max": float(np.max(np.abs(y))),
    }


def numpy_orthogonalize(G: np.ndarray, method: str = "polar_express", steps: int = 5,
                        coefficients=None, *, aol_exponent: float = 0.5) -> np.ndarray:
    """An independent float64 re-implementation of ``orthogonalize`` (the standard iteration for
    every method; "gram" is the same map in exact arithmetic; "auto" the method it chooses for
    G's shape): wide orientation, X / (||X||_F *
    scale + eps), for "aol" X <- D X with d_i = (sum_j |(X X^T)_ij|)^-aol_exponent, then
    X <- a X + (b A + c A^2) X with A = X X^T per step. ``aol_exponent`` != 0.5 is a wrong AOL
    (its bound ||D X||_2 <= 1 holds only for 0.5), kept for checks that must fail."""
    X = np.asarray(G, dtype=np.float64)
    plan = make_plan(method, steps, coefficients).for_shape(*X.shape[-2:])
    tall = X.shape[-2] > X.shape[-1]
    if tall:
        X = np.swapaxes(X, -1, -2)
    norm = np.sqrt(np.sum(X * X, axis=(-2, -1), keepdims=True))
    X = X / (norm * plan.norm_scale + plan.eps)
    if plan.uses_aol:
        rows = np.sum(np.abs(X @ np.swapaxes(X, -1, -2)), axis=-1, keepdims=True)
        X = X * np.maximum(rows, np.finfo(np.float64).tiny) ** -aol_exponent
    with np.errstate(over="ignore", invalid="ignore"):  # a wrong AOL may overflow: inf, not a warning
        for a, b, c in plan.coefficients:
            A = X @ np.swapaxes(X, -1, -2)
            X = a * X + (b * A + c * (A @ A)) @ X
    return np.swapaxes(X, -1, -2) if tall else X


# ------------------------------------------------------------------ evaluation


def evaluate(
    orthogonalize_fn: Callable[..., Any],
    which: Union[str, Preset, Sequence[Union[str, Preset]]],
    inputs: Mapping[str, np.ndarray],
    *,
    repeats: int = 0,
    prepare: Optional[Callable[[np.ndarray], Any]] = None,
    to_numpy: Optional[Callable[[Any], np.ndarray]] = None,
    polars: Optional[Mapping[str, np.ndarray]] = None,
    eigvalsh: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    clock: Callable[[], float] = time.perf_counter,
) -> List[Dict[str, Any]]:
    """One row per (preset, input): the metrics of ``orthogonalize_fn(prepare(G), method=...,
    steps=..., coefficients=...)`` (``to_numpy`` brings the result back; default
    ``np.asarray(..., float64)``) and its time in seconds.

    ``which``: a preset name, a ``Preset``, or a sequence of them. ``prepare`` (default: the
    float64 array itself) runs once per input, outside the timing. With ``repeats`` = 0 the one
    call that gives the result is timed; otherwise that call is an untimed warm-up and
    ``seconds`` is the median of ``repeats`` further calls, the presets taking turns in every
    repeat (noise then falls on all of them alike). ``polars``: precomputed polar factors by
    input name (computed here when missing)."""
    presets = [preset(which)] if isinstance(which, (str, Preset)) else [preset(w) for w in which]
    prepare = prepare or (lambda G: G)
    to_numpy = to_numpy or (lambda O: np.asarray(O, dtype=np.float64))
    rows = []
    for name, G in inputs.items():
        X = prepare(G)
        calls = {p.name: (lambda p=p: orthogonalize_fn(X, **p.kwargs())) for p in presets}
        outputs, times = {}, {p.name: [] for p in presets}
        for key, call in calls.items():
            start = clock()
            outputs[key] = call()
            if repeats == 0:
                times[key].append(clock() - start)
        for _ in range(repeats):
            for key, call in calls.items():
                start = clock()
                call()
                times[key].append(clock() - start)
        P = polars[name] if polars is not None and name in polars else polar_factor(G)
        for p in presets:
            row = {
                "preset": p.name,
                "method": p.method,
                "steps": p.steps,
                "input": name,
                "kind": input_kind(name),
                "shape": list(G.shape),
                "seconds": float(statistics.median(times[p.name])),
            }
            row.update(metrics(to_numpy(outputs[p.name]), P=P, eigvalsh=eigvalsh))
            rows.append(row)
    return rows


def ratios_to_anchor(rows: Sequence[Mapping[str, Any]], anchor: str = ANCHOR,
                     group: Sequence[str] = ()) -> Dict[Tuple, Dict[str, Any]]:
    """Per (group values..., preset): the worst ratio over inputs of the preset's error to the
    anchor's on the same input (and group, e.g. backend and dtype), for each of ``METRICS``,
    the input where it is reached, and ``no_worse``: every ratio of both metrics <= 1."""
    base = {tuple(r[g] for g in group) + (r["input"],): r for r in rows if r["preset"] == anchor}
    out: Dict[Tuple, Dict[str, Any]] = {}
    for r in rows:
        ref = base.get(tuple(r[g] for g in group) + (r["input"],))
        if ref is None:
            continue
        key = tuple(r[g] for g in group) + (r["preset"],)
        entry = out.setdefault(key, {"inputs": 0, "no_worse": True,
                                     **{f"worst_{m}": 0.0 for m in METRICS},
                                     **{f"worst_{m}_input": None for m in METRICS}})
        entry["inputs"] += 1
        for m in METRICS:
            ratio = r[m] / ref[m] if ref[m] > 0 else (1.0 if r[m] == 0 else float("inf"))
            if ratio > entry[f"worst_{m}"]:
                entry[f"worst_{m}"] = ratio
                entry[f"worst_{m}_input"] = r["input"]
            if not ratio <= 1.0:
                entry["no_worse"] = False
    return out
