"""The functional core of the MLX optimizers: pure per-step update rules.

Each function takes arrays and hyperparameters and returns new arrays; nothing here touches
optimizer state. The Optimizer classes (``optimizers.py``) gather arrays, call these, and commit
the results (or keep the old values where a gradient was not finite). ``fastmuon.torch.functional``
holds the same rules under the same names, so both frameworks give the same weights.

Matrix arguments named ``O``, ``v`` or ``W`` are matrix views ``(batch, rows, cols)`` (see
``fastmuon.rules.matrix_view``); elementwise rules take any shape. ``lr`` may be an array (a
scheduled learning rate), so the rules compile with ``mx.compile``.
"""

from __future__ import annotations

from typing import Tuple

import mlx.core as mx

from ..rules import NORMUON_EPS, normuon_reduce_dim


def all_finite(x: mx.array) -> mx.array:
    """Whether every entry of ``x`` is finite, as a 0-D bool array: x * 0 is 0 where x is finite
    and NaN where it is infinite or NaN, and a sum of zeros cannot overflow. The same answer as
    ``mx.all(mx.isfinite(x))`` in a third of the time on the CPU (the GPT-2 block's four fp32
    gradients: 5.2 against 15.6 ms; mx.isfinite alone took 11)."""
    return mx.isfinite(mx.sum(x * 0))


def muon_momentum(M: mx.array, G: mx.array, momentum: float, nesterov: bool) -> Tuple[mx.array, mx.array]:
    """EMA momentum and the array to orthogonalize.

    M' = beta M + (1 - beta) G; U = (1 - beta) G + beta M' with Nesterov, else U = M'.
    Returns (M', U).
    """
    fresh = (1.0 - momentum) * G  # formed once: eager mlx would compute it twice
    M_new = momentum * M + fresh
    U = fresh + momentum * M_new if nesterov else M_new
    return M_new, U


def normuon_normalize(O: mx.array, v: mx.array, beta2: float) -> Tuple[mx.array, mx.array]:
    """NorMuon's per-neuron normalization of an orthogonalized update ``O`` (batch, R, C).

    m = mean(O^2) over the smaller dimension (one value per row when R >= C, else per column);
    v' = beta2 v + (1 - beta2) m; O' = O / sqrt(max(v', NORMUON_EPS)), rescaled to O's Frobenius
    norm (per matrix). A zero O gives zeros. Returns (O', v'), v' in v's dtype.
    """
    axis = normuon_reduce_dim(O.shape[-2], O.shape[-1])
    # an empty view (a zero-length axis) has mean 0 here, not 0/0
    m = (mx.mean if O.shape[axis] else mx.sum)(O * O, axis=axis, keepdims=True)
    v_new = (beta2 * v + (1.0 - beta2) * m).astype(v.dtype)
    normalized = O / mx.sqrt(mx.maximum(v_new, NORMUON_EPS)).astype(O.dtype)
    norm_before = mx.sqrt(mx.sum(O * O, axis=(-2, -1), keepdims=True))
    norm_after = mx.sqrt(mx.sum(normalized * normalized, axis=(-2, -1), keepdims=True))
    tiny = mx.finfo(O.dtype).smallest_normal  # a zero O stays zero instead of 0/0
    return normalized * (norm_before / mx.maximum(norm_after, tiny)), v_new


def decoupled_update(W: mx.array, O: mx.array, *, lr, weight_decay: float, scale: float, cautious: bool) -> mx.array:
    """W (1 - lr wd) - lr scale O, decoupled weight decay.

    With ``cautious`` the decay applies only where update and weight agree in sign,
    mask = (O * W) >= 0: W - lr wd mask W - lr scale O.
    """
    step = (lr * scale) * O
    if weight_decay == 0.0:
        return W - step
    if cautious:
        return W - (lr * weight_decay) * mx.where((O * W) >= 0, W, mx.zeros_like(W)) - step
    return W * (1.0 - lr * weight_decay) - step


def signsgd_update(W: mx.array, G: mx.array, *, lr, weight_decay: float) -> mx.array:
    """W (1 - lr wd) - lr sign(G)."""
    return W * (1.0 - lr * weight_decay) - lr * mx.sign(G).astype(W.dtype)


def rows_touched(G: mx.array) -> mx.array:
    """Boolean mask, broadcastable against G, of the rows (index along axis 0) holding any
    non-zero entry (a 0-D G: itself). A row containing a NaN counts as touched."""
    axes = tuple(range(1, G.ndim))
    return mx.any(G != 0, axis=axes, keepdims=True) if axes else G != 0
