"""fastmuon for PyTorch: ``from fastmuon.torch import orthogonalize``, the optimizers ``Muon``,
``NorMuon``, ``MuonWithAdamW`` (with ``muon_param_groups``) and ``SignSGD``, and
``warmup_cosine``.

Imports only torch (Triton is imported lazily by the CUDA kernels). The modules mirror
``fastmuon.mlx``: orthogonalize (checks and dispatch), reference / native / triton_backend (the
backends), ops, functional (update rules), optimizers, routing, schedules.
"""

from .ops import ba_plus_caa, xxt
from .optimizers import Muon, MuonWithAdamW, NorMuon, SignSGD
from .orthogonalize import BACKENDS, orthogonalize
from .routing import muon_param_groups
from .schedules import warmup_cosine

__all__ = [
    "BACKENDS", "Muon", "MuonWithAdamW", "NorMuon", "SignSGD", "ba_plus_caa", "muon_param_groups",
    "orthogonalize", "warmup_cosine", "xxt",
]
