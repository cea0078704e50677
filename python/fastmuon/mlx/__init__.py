"""fastmuon for MLX: ``from fastmuon.mlx import orthogonalize``. Imports only mlx."""

from .orthogonalize import BACKENDS, orthogonalize

__all__ = ["BACKENDS", "orthogonalize"]
