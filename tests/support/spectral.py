"""Float64 references for orthogonalization tests: matrices with controlled spectra, the
exact output the polynomial iteration must produce, and rounding allowances derived from it.

Every orthogonalizer applies odd polynomials p_k to a normalized X = U S V^T, which maps each
singular value through the scalar composition and leaves U, V alone. So the exact float64
answer for a given input is U p(S / norm) V^T, and how far a finite-precision run may stray from
it follows from the same polynomials (see ``rounding_allowance``).
"""

from __future__ import annotations

import numpy as np

from fastmuon.coefficients import apply_scalar

SPECTRA = ("well_conditioned", "sigma_min_1e-3", "rank_deficient")

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def spectrum(kind: str, r: int) -> np.ndarray:
    if kind == "well_conditioned":
        return np.linspace(0.3, 1.0, r)
    if kind == "sigma_min_1e-3":
        return np.logspace(-3, 0, r)
    if kind == "rank_deficient":
        keep = (r + 1) // 2
        return np.concatenate([np.logspace(-2, 0, keep), np.zeros(r - keep)])
    raise ValueError(kind)


def matrix_with_spectrum(rng: np.random.Generator, shape: tuple, kind: str) -> np.ndarray:
    """A float64 array of ``shape`` (..., m, n) whose matrices have the given singular values."""
    *batch, m, n = shape
    r = min(m, n)
    out = np.empty(shape)
    for index in np.ndindex(*batch):
        U, _ = np.linalg.qr(rng.standard_normal((m, r)))
        V, _ = np.linalg.qr(rng.standard_normal((n, r)))
        out[index] = (U * spectrum(kind, r)) @ V.T
    return out


def exact_iteration(G: np.ndarray, coefficients, norm_scale: float, eps: float, aol: bool = False):
    """For each matrix of ``G`` (float64, (..., m, n)): the exact output U p(S/norm) V^T, the
    normalized singular values x and the output singular values p(x).

    With ``aol``, the rows of the normalized wide orientation X are first scaled by
    d_i = 1 / sqrt(sum_j |(X X^T)_ij|) (AOL), in float64; U S V^T is then that matrix's SVD."""
    if aol:
        tall = G.shape[-2] > G.shape[-1]
        X = np.swapaxes(G, -1, -2) if tall else G
        X = X / (np.linalg.norm(X, axis=(-2, -1), keepdims=True) * norm_scale + eps)
        row_sums = np.sum(np.abs(X @ np.swapaxes(X, -1, -2)), axis=-1, keepdims=True)
        X = X / np.sqrt(np.maximum(row_sums, np.finfo(np.float64).tiny))
        U, x, Vt = np.linalg.svd(X, full_matrices=False)
        y = apply_scalar(coefficients, x)
        O = (U * y[..., None, :]) @ Vt
        return (np.swapaxes(O, -1, -2) if tall else O), x, y
    U, S, Vt = np.linalg.svd(G, full_matrices=False)
    norm = np.sqrt(np.sum(S * S, axis=-1, keepdims=True))
    x = S / (norm * norm_scale + eps)
    y = apply_scalar(coefficients, x)
    return (U * y[..., None, :]) @ Vt, x, y


def _derivative(a: float, b: float, c: float, t: np.ndarray) -> np.ndarray:
    return a + 3 * b * t**2 + 5 * c * t**4


def amplification(coefficients, x_max: float) -> float:
    """First-order growth of rounding errors through the iteration, in units of u.

    A perturbation E of X before step j leaves step j with norm at most L_j ||E||, where L_j is
    the largest |p_j'| on [0, x_max] (it bounds every divided difference of the odd polynomial,
    hence the Frechet derivative of the matrix map). Step k itself rounds terms of size
    M_k = |a| x + |b| x^3 + |c| x^5 (x = largest singular value entering it) to relative u, and
    the normalization rounds X itself (M_0 = x_max). The result is sum_k M_k prod_{j>k} L_j.
    """
    coefficients = list(coefficients)
    grid = np.linspace(0.0, 1.0, 2001)
    local, gain = [x_max], []
    top = x_max
    for a, b, c in coefficients:
        t = grid * top
        gain.append(float(np.max(np.abs(_derivative(a, b, c, t)))))
        local.append(abs(a) * top + abs(b) * top**3 + abs(c) * top**5)
        top = float(np.max(np.abs(apply_scalar([(a, b, c)], t))))
    total = 0.0
    for k, m_k in enumerate(local):
        total += m_k * float(np.prod(gain[k:]))
    return total


def rounding_allowance(coefficients, x_max: float, compute: str, output: str, m: int) -> float:
    """How far (spectral norm) a run in ``compute`` precision, cast to ``output``, may stray
    from the exact iteration: 4 u A (the stated multiple of the first-order model above; runs up
    to 768 x 768 measured 0.001-0.7 u A) plus the output rounding u_out ||O||_F <= u_out sqrt(m)
    (exact bound: ||E||_2 <= ||E||_F, with ||O||_2 <= ~1.2 covered by the factor 2)."""
    allowance = 4 * UNIT_ROUNDOFF[compute] * amplification(coefficients, x_max)
    if output != "float64" and UNIT_ROUNDOFF[output] > UNIT_ROUNDOFF[compute]:
        allowance += 2 * UNIT_ROUNDOFF[output] * np.sqrt(m)
    return allowance


def spectral_error(O: np.ndarray, rank: int) -> float:
    """max |sigma_i(O) - 1| over the ``rank`` largest singular values of each matrix."""
    sigma = np.linalg.svd(O, compute_uv=False)
    return float(np.max(np.abs(sigma[..., :rank] - 1.0)))
