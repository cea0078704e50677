"""Shared pytest fixtures and helpers for fastmuon's tests."""

from __future__ import annotations

import os

# The CPU default compute dtype follows the hardware (bf16 where the CPU has bf16 matrix units,
# fastmuon.cpu). The suite pins it to fp32 so that results and allowances do not depend on
# which CPU runs it; tests of the bf16 default set FASTMUON_CPU_BF16=1 themselves.
os.environ.setdefault("FASTMUON_CPU_BF16", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from support.native_helpers import require_native  # noqa: E402


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

