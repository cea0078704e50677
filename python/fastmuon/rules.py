"""Framework-neutral parts of the Muon-family optimizers: hyperparameter checks, how
a weight is viewed as matrices, the learning-rate shape scale and the routing of parameters by
name.

``fastmuon.torch`` and ``fastmuon.mlx`` optimizers both use these (and ``fastmuon.options``, the
Muon options), so their defaults, errors and semantics cannot drift apart. The update rules themselves are each framework's
``functional.py``.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Optional, Sequence, Tuple


ADJUST_LR = ("original", "match_rms_adamw")
# nGPT weights kept on the unit sphere: every row of the matrix view (the last axis; for a
# torch nn.Linear weight (out, in), one unit vector per output feature) has norm 1. With the
# step D = lr * scale * O, "project" sets W <- normalize_rows(W - D); "geodesic" normalizes the
# rows of W, takes D_t = D - (D . w) w per row and theta = ||D_t||, and sets
# W <- w cos(theta) - (D_t / theta) sin(theta).
SPHERE_MODES = (None, "project", "geodesic")
DEFAULT_EXCLUDE = ("embed", "lm_head", "head", "output")

# NorMuon: floor on the per-neuron second moment before the division.
NORMUON_EPS = 1e-10
NORMUON_BETA2 = 0.95  # the NorMuon paper's code; modded-nanogpt uses 0.9

# The AdamW half of MuonWithAdamW (torch.optim.AdamW's rule), for both frameworks.
ADAMW_DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)


def is_real(value) -> bool:
    """A real number (Python's or numpy's), not a bool: what a numeric hyperparameter must be."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def plain(value):
    """A numpy scalar as Python's bool, int or float (what the kernels and the list-wide and
    framework ops take: numpy's leak into their arithmetic or fail their type checks); any other
    value as it is."""
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # numpy 2 / 1
        return bool(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_adamw_options(betas, eps, weight_decay, prefix: str = "", where: str = "") -> tuple:
    """Raise ValueError naming the first bad AdamW option (``prefix`` "adamw_" for the
    constructors' argument names, ``where`` e.g. "param_groups[1]" for a group's); return them
    as plain Python numbers: ((beta1, beta2), eps, weight_decay)."""
    def fail(name: str, expected: str, value) -> None:
        label = f"{prefix}{name}" + (f" ({where})" if where else "")
        raise ValueError(f"{label} must be {expected}, got {value!r}")

    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(is_real(b) and 0.0 <= b < 1.0 for b in betas)):
        fail("betas", "a pair (beta1, beta2) of numbers in [0, 1)", betas)
    if not (is_real(eps) and math.isfinite(eps) and eps >= 0):
        fail("eps", "a finite number >= 0", eps)
    if not (is_real(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
        fail("weight_decay", "a finite number >= 0", weight_decay)
    return (float(betas[0]), float(betas[1])), float(eps), float(weight_decay)


# The smallest positive (subnormal) value of each float dtype: a positive number at or below half
# of it rounds to zero there.
SMALLEST_SUBNORMAL = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149, "float64": 2.0**-1074}


def check_adamw_eps(eps: float, dtype_name: str, name: str) -> None:
    """Raise ValueError if AdamW's ``eps`` > 0 rounds to zero in a weight's dtype (float16 below
    about 3e-8, e.g. the default 1e-10): the update of a zero gradient entry would be 0 / 0 and
    its weight NaN (as with torch.optim.AdamW on float16 weights), with no warning."""
    smallest = SMALLEST_SUBNORMAL.get(dtype_name.rpartition(".")[2])
    if smallest is not None and 0 < eps <= smallest / 2:
        raise ValueError(
            f"AdamW eps={eps!r} rounds to 0 in {dtype_name}, the dtype of {name}: a zero gradient entry "
            "would make its weight NaN (0 / 0); use eps >= 6e-8 for float16 weights (1e-4 is common), "
            "or keep float32 weights"
        )


def check_hyperparameters(
    *,
    lr: float,
    momentum: Optional[float] = None,
    weight_decay: float = 0.0,
    adjust_lr: Optional[str] = None,
    beta2: Optional[float] = None,
    ns_steps: Optional[int] = None,
    sphere: Optional[str] = None,
) -> None:
    """Raise ValueError naming the first bad hyperparameter. ``lr`` may be a callable
    (a schedule), which is checked where it is evaluated."""
    if not callable(lr) and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be a finite number >= 0 (or a schedule), got {lr!r}")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if adjust_lr is not None and adjust_lr not in ADJUST_LR:
        raise ValueError(f"Adjust learning rate function {adjust_lr} is not supported: adjust_lr must be one of "
                         f"{', '.join(ADJUST_LR)}, got {adjust_lr!r}")
    if beta2 is not None and not 0.0 <= beta2 < 1.0:
        raise ValueError(f"beta2 must be in [0, 1), got {beta2!r}")
    if ns_steps is not None and (isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1):
        raise ValueError(f"ns_steps must be an int >= 1, got {ns_steps!r}")
    if sphere not in SPHERE_MODES:
        raise ValueError(f"sphere must be one of None, 'project', 'geodesic', got {sphere!r}")
    if sphere is not None and weight_decay != 0:
        raise ValueError(
            f"weight_decay must be 0 with sphere={sphere!r} (rows are kept at unit norm, so a "
            f"decay would only be undone), got {weight_decay!r}"
        )


def matrix_view(shape: Sequence[int], name: str = "parameter") -> Tuple[int, int, int]:
    """How a weight of ``shape`` is orthogonalized: (batch, rows, cols).

    2-D (out, in) is one matrix; 3-D (E, a, b), e.g. stacked MoE experts, is E matrices of
    (a, b) each; 4-D conv (out, in, kh, kw) is one (out, in*kh*kw) matrix. Others raise.
    """
    shape = tuple(map(int, shape))
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    if len(shape) == 4:
        return 1, shape[0], shape[1] * shape[2] * shape[3]
    raise ValueError(
        f"{name} has shape {shape}: Muon orthogonalizes 2-D weights, 3-D stacks of matrices and "
        "4-D conv weights; route 0-D/1-D parameters (biases, norms, scalars) to AdamW"
    )


def shape_scale(rows: int, cols: int, adjust_lr: str) -> float:
    """Learning-rate multiplier for an orthogonalized (rows, cols) update.

    "original" (Keller Jordan): sqrt(max(1, rows / cols)); "match_rms_adamw" (Moonshot):
    0.2 sqrt(max(rows, cols)), which gives the update the RMS of a typical AdamW update.
    """
    if adjust_lr == "original":  # an empty matrix (no columns) has an empty update: any scale
        return math.sqrt(max(1.0, rows / cols)) if cols else 1.0
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr must be one of {', '.join(ADJUST_LR)}, got {adjust_lr!r}")


def normuon_reduce_dim(rows: int, cols: int) -> int:
    """Axis of a (..., rows, cols) orthogonalized update over which NorMuon averages O^2: the
    smaller dimension, so -1 (one second moment per row) when rows >= cols, else -2 (one per
    column)."""
    return -1 if rows >= cols else -2


def normuon_state_shape(batch: int, rows: int, cols: int) -> Tuple[int, int, int]:
    """Shape of NorMuon's second-moment state for a (batch, rows, cols) matrix view."""
    return (batch, rows, 1) if rows >= cols else (batch, 1, cols)


def name_is_excluded(name: str, exclude: Iterable[str]) -> bool:
    """Whether a parameter's dotted path names an embedding, head or output layer.

    Only the top-level module and the module that owns the parameter are looked at, so
    ``output.weight`` and ``lm_head.weight`` match while a hidden ``encoder.layer.0.output.dense``
    (BERT) does not; a word matches a component that contains it (``"embed"`` in
    ``"embed_tokens"``). Embedding modules are recognised by type by the framework routers.
    """
    parts = name.lower().split(".")
    candidates = {parts[0], parts[-2]} if len(parts) > 1 else {parts[0]}
    return any(word.lower() in part for part in candidates for word in exclude)
