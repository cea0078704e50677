"""fastmuon for MLX: ``from fastmuon.mlx import orthogonalize``. Imports only mlx."""

from .ops import ba_plus_caa, xxt
from .orthogonalize import BACKENDS, orthogonalize
from .optim import Muon, NorMuon, SignSGD, TreeMismatchError
from .routing import MuonWithAdamW, embedding_signsgd_with_adamw, muon_filter
from .schedules import warmup_cosine

__all__ = ["BACKENDS", "ba_plus_caa", "orthogonalize", "xxt"]
__all__ += [
    "Muon",
    "MuonWithAdamW",
    "NorMuon",
    "SignSGD",
    "TreeMismatchError",
    "embedding_signsgd_with_adamw",
    "muon_filter",
    "warmup_cosine",
]
