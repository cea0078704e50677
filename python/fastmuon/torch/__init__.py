"""fastmuon for PyTorch: ``from fastmuon.torch import orthogonalize``.

Imports only torch (Triton is imported lazily by the CUDA kernels).
"""

from .ops import ba_plus_caa, xxt
from .orthogonalize import BACKENDS, orthogonalize

__all__ = ["BACKENDS", "ba_plus_caa", "orthogonalize", "xxt"]
