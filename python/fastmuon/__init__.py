"""fastmuon: fast, tested Muon-family optimizers for PyTorch and MLX.

``import fastmuon`` needs only numpy. Framework code lives in ``fastmuon.torch`` (imports torch)
and ``fastmuon.mlx`` (imports mlx); the compiled kernels are loaded on first use.
"""

from . import coefficients
from .plan import METHODS
from .schedules import warmup_cosine

__version__ = "0.1.0"

__all__ = ["METHODS", "coefficients", "warmup_cosine", "__version__"]
