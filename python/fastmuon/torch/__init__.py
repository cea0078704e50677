"""fastmuon for PyTorch: ``from fastmuon.torch import orthogonalize``, and the optimizers
``Muon``, ``NorMuon``, ``MuonWithAdamW`` (with ``muon_param_groups``) and ``SignSGD``.

Imports only torch (Triton is imported lazily by the CUDA kernels).
"""

from .ops import ba_plus_caa, xxt
from .orthogonalize import BACKENDS, orthogonalize
from .muon import Muon, MuonWithAdamW, NorMuon
from .routing import muon_param_groups
from .signsgd import SignSGD

__all__ = [
    "BACKENDS",
    "Muon",
    "MuonWithAdamW",
    "NorMuon",
    "SignSGD",
    "ba_plus_caa",
    "muon_param_groups",
    "orthogonalize",
    "xxt",
]
