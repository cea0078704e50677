"""fastmuon for PyTorch: ``from fastmuon.torch import orthogonalize``, the optimizers ``Muon``,
``NorMuon``, ``MuonWithAdamW`` (with ``muon_param_groups``) and ``SignSGD``, and
``warmup_cosine``.

Imports only torch (Triton is imported lazily by the CUDA kernels). The modules mirror
``fastmuon.mlx``: orthogonalize (checks, dispatch and the backend registry), reference / native /
triton_backend (the backends), ops, functional (update rules), optim (the optimizers), routing,
schedules.
"""

try:
    import torch  # noqa: F401  (checked first, for the hint)
except ImportError as error:
    raise ImportError(
        "fastmuon.torch needs PyTorch, which failed to import: pip install 'fastmuon[torch]' "
        "(for a CPU-only torch, first: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
    ) from error

from .ops import ba_plus_caa, xxt
from .optim import Muon, MuonWithAdamW, NorMuon, Route, SignSGD
from .orthogonalize import BACKENDS, orthogonalize
from .routing import muon_param_groups
from .schedules import warmup_cosine

__all__ = [
    "BACKENDS", "Muon", "MuonWithAdamW", "NorMuon", "Route", "SignSGD", "ba_plus_caa", "muon_param_groups",
    "orthogonalize", "warmup_cosine", "xxt",
]
