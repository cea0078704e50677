"""fastmuon's MLX optimizers, with the module names of ``fastmuon.torch.optim``: ``muon`` (Muon,
NorMuon, MuonWithAdamW), ``pipeline`` (the plan of a step and ``explain``), ``local`` (its one
implementation), ``distributed`` (the replicated strategy), ``adamw`` (MuonWithAdamW's AdamW
part), ``signsgd`` and ``base`` (gradient-tree checks, state)."""

from ...route import Route
from .base import TreeMismatchError
from .muon import Muon, MuonWithAdamW, NorMuon
from .signsgd import SignSGD, embedding_signsgd_with_adamw

__all__ = ["Muon", "MuonWithAdamW", "NorMuon", "Route", "SignSGD", "TreeMismatchError", "embedding_signsgd_with_adamw"]
