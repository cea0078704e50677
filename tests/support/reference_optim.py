"""Muon and NorMuon written from their definitions in numpy: the reference that both
frameworks' optimizer tests compare against (float64), and the plain baseline whose own error
sets their tolerances (float32).

Independent of fastmuon's code except for ``fastmuon.plan`` (which coefficients and which
normalization a method means), so a wrong rule in the library cannot also be in the reference.
"""

from __future__ import annotations

import math

import numpy as np

NORMUON_EPS = 1e-10


def T(A: np.ndarray) -> np.ndarray:
    return np.swapaxes(A, -1, -2)


def matrix_view(shape) -> tuple:
    """(batch, rows, cols): 2-D as is, 3-D a stack, 4-D conv flattened to (out, in*kh*kw)."""
    if len(shape) == 2:
        return (1,) + tuple(shape)
    if len(shape) == 3:
        return tuple(shape)
    return (1, shape[0], int(np.prod(shape[1:])))


def shape_scale(rows: int, cols: int, adjust_lr: str) -> float:
    return math.sqrt(max(1.0, rows / cols)) if adjust_lr == "original" else 0.2 * math.sqrt(max(rows, cols))


def orthogonalize(U: np.ndarray, plan) -> np.ndarray:
    """The polynomial iteration on (b, r, c), in U's dtype: wide orientation,
    X / (||X||_F s + eps), with ``plan.uses_aol`` then X <- D X (d_i = 1 / sqrt(sum_j |A_ij|),
    A = X X^T, the sums floored at ``plan.aol_floor`` where given, else at the smallest normal),
    then X <- a X + (b A + c A A) X with A = X X^T. For ``plan.uses_gram`` the
    Gram-space form (Q, R = X X^T, restart after every second step): the same map in exact
    arithmetic with its own rounding, so a float32 baseline has it. A plan with ``for_shape``
    (method "auto") runs the plan of U's matrix shape."""
    if hasattr(plan, "for_shape"):
        plan = plan.for_shape(U.shape[-2], U.shape[-1])
    tall = U.shape[-2] > U.shape[-1]
    X = T(U) if tall else U
    X = X / (np.linalg.norm(X, axis=(-2, -1), keepdims=True) * plan.norm_scale + plan.eps)
    if getattr(plan, "uses_aol", False):
        row_sums = np.sum(np.abs(X @ T(X)), axis=-1, keepdims=True)
        X = X / np.sqrt(np.maximum(row_sums, getattr(plan, "aol_floor", np.finfo(X.dtype).tiny)))
    if not plan.uses_gram:
        for a, b, c in plan.coefficients:
            A = X @ T(X)
            X = a * X + (b * A + c * A @ A) @ X
    else:
        eye = np.eye(X.shape[-2], dtype=X.dtype)
        R, Q = X @ T(X), eye
        for step, (a, b, c) in enumerate(plan.coefficients, start=1):
            Z = b * R + c * R @ R
            Q = Q @ Z + a * Q
            RZ = R @ Z + a * R
            R = Z @ RZ + a * RZ
            if step % 2 == 0 and step < len(plan.coefficients):
                X, Q = Q @ X, eye
                R = X @ T(X)
        X = Q @ X
    return T(X) if tall else X


def normuon_state(view: tuple, dtype=np.float64) -> np.ndarray:
    b, r, c = view
    return np.zeros((b, r, 1) if r >= c else (b, 1, c), dtype)


def normuon_normalize(O: np.ndarray, s: np.ndarray, beta2: float):
    """(O', s', kappa): one second moment per row (rows >= cols) or column, O / sqrt(s)
    rescaled to ||O||_F; kappa is the spread of the per-neuron factors (for allowances)."""
    axis = -1 if O.shape[-2] >= O.shape[-1] else -2
    # an empty matrix has mean 0 (not 0 / 0), and a zero O stays zero after the rescale
    m = np.mean(O * O, axis=axis, keepdims=True) if O.shape[axis] else np.zeros(s.shape)
    s = beta2 * s + (1 - beta2) * m
    factor = 1.0 / np.sqrt(np.maximum(s, NORMUON_EPS))
    On = O * factor
    before, after = np.linalg.norm(O, axis=(-2, -1), keepdims=True), np.linalg.norm(On, axis=(-2, -1), keepdims=True)
    On = On * (before / np.maximum(after, 1e-300))
    return On, s, float(factor.max() / factor.min()) if factor.size else 1.0


def decoupled_update(W, D, lr: float, wd: float, scale: float, cautious: bool):
    """W after the update D with decoupled weight decay (only where D and W agree in sign when
    ``cautious``)."""
    if wd == 0:
        return W - lr * scale * D
    if cautious:
        return W - lr * wd * (D * W >= 0) * W - lr * scale * D
    return W * (1 - lr * wd) - lr * scale * D


def muon_step(W, M, s, G, hp: dict, plan):
    """One Muon step (NorMuon when ``hp["beta2"]`` is set) on one weight, in the arrays' dtype.

    ``hp``: lr, momentum, nesterov, weight_decay, adjust_lr, cautious_weight_decay, beta2.
    W, M, G have the weight's shape; s is NorMuon's state on the matrix view (or None).
    Returns (W, M, s, O, info) with O the update on the matrix view after NorMuon.
    """
    beta, lr, wd = hp["momentum"], hp["lr"], hp["weight_decay"]
    M = beta * M + (1 - beta) * G
    U = (1 - beta) * G + beta * M if hp["nesterov"] else M
    b, R, C = matrix_view(W.shape)
    O = orthogonalize(U.reshape(b, R, C), plan)
    kappa = 1.0
    if hp.get("beta2") is not None:
        O, s, kappa = normuon_normalize(O, s, hp["beta2"])
    scale = shape_scale(R, C, hp["adjust_lr"])
    D = O.reshape(W.shape)
    W = decoupled_update(W, D, lr, wd, scale, hp["cautious_weight_decay"])
    return W, M, s, O, dict(scale=scale, kappa=kappa, rows=R, cols=C, U_norm=float(np.linalg.norm(U)))
