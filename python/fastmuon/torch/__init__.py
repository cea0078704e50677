"""fastmuon for PyTorch: ``from fastmuon.torch import orthogonalize``.

Imports only torch (Triton is imported lazily by the CUDA kernels).
"""

from .orthogonalize import BACKENDS, orthogonalize

__all__ = ["BACKENDS", "orthogonalize"]
