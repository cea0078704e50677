"""fastmuon for MLX: ``from fastmuon.mlx import orthogonalize``, the optimizers ``Muon``,
``NorMuon``, ``MuonWithAdamW`` (with ``muon_filter``) and ``SignSGD``, and ``warmup_cosine``.

Imports only mlx. The modules mirror ``fastmuon.torch``: orthogonalize (checks and dispatch),
reference / native / metal_backend (the backends), ops, functional (update rules), optim (the
optimizers), routing, schedules.
"""

try:
    import mlx.core  # noqa: F401  (checked first, for the hint)
except ImportError as error:
    raise ImportError(
        "fastmuon.mlx needs MLX, which failed to import: pip install 'fastmuon[mlx]' "
        "(mlx[cpu] on Linux, mlx on macOS, at the version fastmuon pins)"
    ) from error

from .ops import ba_plus_caa, xxt
from .optim import (
    Muon,
    MuonWithAdamW,
    NorMuon,
    Route,
    SignSGD,
    TreeMismatchError,
    embedding_signsgd_with_adamw,
)
from .orthogonalize import BACKENDS, orthogonalize
from .routing import muon_filter
from .schedules import warmup_cosine

__all__ = [
    "BACKENDS", "Muon", "MuonWithAdamW", "NorMuon", "Route", "SignSGD", "TreeMismatchError", "ba_plus_caa",
    "embedding_signsgd_with_adamw", "muon_filter", "orthogonalize", "warmup_cosine", "xxt",
]
