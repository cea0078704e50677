"""Shared pytest fixtures and helpers for fastmuon's tests."""

from __future__ import annotations

import numpy as np
import pytest

from support.native_helpers import require_native


@pytest.fixture
def seed() -> int:
    """Fixed seed so failures reproduce."""
    return 0


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    """numpy Generator seeded by the ``seed`` fixture."""
    return np.random.default_rng(seed)


@pytest.fixture
def blas_ext():
    """``fastmuon._blas``, or skip / fail as :func:`require_native` says."""
    return require_native("blas")


@pytest.fixture
def mlx_ext():
    """``fastmuon._mlx_ext`` (mlx.core imported), or skip / fail."""
    return require_native("mlx_ext")

