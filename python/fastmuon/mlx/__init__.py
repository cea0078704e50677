"""fastmuon for MLX: ``from fastmuon.mlx import orthogonalize``. Imports only mlx."""

from .ops import ba_plus_caa, xxt
from .orthogonalize import BACKENDS, orthogonalize

__all__ = ["BACKENDS", "ba_plus_caa", "orthogonalize", "xxt"]
