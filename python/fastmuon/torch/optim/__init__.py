"""fastmuon's torch optimizers: ``muon`` (Muon, NorMuon, MuonWithAdamW: the classes and the
step's dispatch), ``pipeline`` (the plan of a local step: stacks, batches, implementation),
``local`` (its three implementations), ``distributed`` (the replicated and sharded strategies),
``adamw`` (MuonWithAdamW's AdamW part), ``signsgd`` and ``base`` (group checks, counters)."""

from .muon import Muon, MuonWithAdamW, NorMuon
from ...route import Route
from .signsgd import SignSGD

__all__ = ["Muon", "MuonWithAdamW", "NorMuon", "Route", "SignSGD"]
