"""Shared pytest fixtures and helpers for fastmuon's tests."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest


@pytest.fixture
def seed() -> int:
    """Fixed seed so failures reproduce."""
    return 0


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    """numpy Generator seeded by the ``seed`` fixture."""
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# Native extensions (fastmuon._blas, fastmuon._mlx_ext)
#
# Tests of the compiled part call ``require_native("blas")`` or
# ``require_native("mlx_ext")``. If the extension is missing they skip with a
# build hint, except when FASTMUON_REQUIRE_NATIVE=1 (CI after a build): then a
# missing extension is a failure. A missing optional framework (mlx itself)
# always skips.
# ---------------------------------------------------------------------------

_NATIVE_KINDS = ("blas", "mlx_ext")


def require_native(kind: str):
    """Return the compiled module ``fastmuon._<kind>``, or skip / fail the test."""
    if kind not in _NATIVE_KINDS:
        raise ValueError(f"kind must be one of {_NATIVE_KINDS}, got {kind!r}")
    if kind == "mlx_ext" and importlib.util.find_spec("mlx") is None:
        pytest.skip("mlx is not installed (pip install 'fastmuon[mlx]')")
    from fastmuon import native

    loader = native.blas_module if kind == "blas" else native.mlx_ext_module
    try:
        return loader()
    except ImportError as exc:
        if os.environ.get("FASTMUON_REQUIRE_NATIVE") == "1":
            pytest.fail(f"FASTMUON_REQUIRE_NATIVE=1 but fastmuon._{kind} is missing: {exc}")
        pytest.skip(f"fastmuon._{kind} not built; run `pip install -e .` (or `make test`): {exc}")


@pytest.fixture
def blas_ext():
    """``fastmuon._blas``, or skip / fail as :func:`require_native` says."""
    return require_native("blas")


@pytest.fixture
def mlx_ext():
    """``fastmuon._mlx_ext`` (mlx.core imported), or skip / fail."""
    return require_native("mlx_ext")


# ------------------------------------------------------- end native block ---
