"""Choosing the Metal backend, and what happens where Metal is missing (runs everywhere).

``select_backend`` (fastmuon/mlx/orthogonalize.py) is the one place backends are chosen:
"auto" takes the Metal kernels on an Apple GPU default device, the native kernels on the CPU;
an explicit ``backend="metal"`` without Metal raises a RuntimeError that names the backend and
the reason. A GPU default device is simulated here by patching ``mx.default_device``.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from fastmuon.mlx import BACKENDS, ba_plus_caa, orthogonalize, xxt  # noqa: E402
from fastmuon.mlx.backends import metal_kernels  # noqa: E402

# the module (fastmuon.mlx.orthogonalize, the attribute, is the function)
orth = importlib.import_module("fastmuon.mlx.orthogonalize")

no_metal = pytest.mark.skipif(mx.metal.is_available(), reason="Metal is available here")


def test_metal_is_a_backend():
    assert "metal" in BACKENDS


@no_metal
@pytest.mark.parametrize(
    "call",
    [lambda: orthogonalize(mx.ones((3, 4)), backend="metal"),
     lambda: xxt(mx.ones((3, 4)), backend="metal"),
     lambda: ba_plus_caa(mx.ones((3, 3)), alpha=1.0, beta=0.0, backend="metal"),
     lambda: metal_kernels.xxt(mx.ones((3, 4)))],
    ids=["orthogonalize", "xxt", "ba_plus_caa", "metal_kernels.xxt"],
)
def test_metal_without_metal_says_why(call):
    with pytest.raises(RuntimeError, match=r"mx\.metal\.is_available\(\) is False") as info:
        call()
    assert "metal" in str(info.value) and "Apple" in str(info.value)


def test_metal_rejects_float64_before_anything_else():
    with pytest.raises(ValueError, match='backend="metal".*float64'):
        orthogonalize(mx.ones((3, 4), dtype=mx.float64), backend="metal", dtype=mx.float64)
    with pytest.raises(ValueError, match='backend="metal" computes in float32'):
        xxt(mx.ones((3, 4), dtype=mx.float64), backend="metal")


def test_metal_kernels_check_their_arguments():
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        metal_kernels.xxt(mx.ones((3, 4), dtype=mx.int32))
    with pytest.raises(ValueError, match="shape"):
        metal_kernels.xxt(mx.ones((3,)))
    with pytest.raises(ValueError, match="square"):
        metal_kernels.ba_plus_caa(mx.ones((3, 4)), 1.0, 0.0)


def test_kernels_are_built_once():
    """Building an mx.fast.metal_kernel needs no GPU; fastmuon builds each once."""
    for name in metal_kernels.KERNELS:
        assert metal_kernels.kernel(name) is metal_kernels.kernel(name)


class _FakeGpu:
    type = mx.DeviceType.gpu


@pytest.mark.parametrize(
    "metal,dtype,expected",
    [(True, mx.bfloat16, "metal"), (True, mx.float32, "metal"), (True, mx.float16, "metal"),
     (True, mx.float64, "reference"), (False, mx.bfloat16, "reference")],
)
def test_auto_on_a_gpu_default_device(monkeypatch, metal, dtype, expected):
    monkeypatch.setattr(mx, "default_device", lambda: _FakeGpu())
    monkeypatch.setattr(metal_kernels, "metal_unavailable_reason", lambda: None if metal else "no Metal")
    assert orth.select_backend("auto", dtype) == expected
    assert orth.default_compute_dtype() == mx.bfloat16


def test_auto_on_the_cpu_is_unchanged():
    from fastmuon.native import mlx_ext_available

    assert mx.default_device().type == mx.DeviceType.cpu
    assert orth.select_backend("auto", mx.float32) == ("native" if mlx_ext_available() else "reference")
    assert orth.select_backend("auto", mx.bfloat16) == "reference"


def test_explicit_metal_checks_dtype_then_availability(monkeypatch):
    monkeypatch.setattr(metal_kernels, "metal_unavailable_reason", lambda: None)
    assert orth.select_backend("metal", mx.bfloat16) == "metal"
    with pytest.raises(ValueError, match="float64"):
        orth.select_backend("metal", mx.float64)
    monkeypatch.setattr(metal_kernels, "metal_unavailable_reason", lambda: "the reason")
    with pytest.raises(RuntimeError, match="the reason"):
        orth.select_backend("metal", mx.float32)


def test_reference_still_runs_everywhere():
    G = mx.array(np.random.default_rng(0).standard_normal((6, 9)).astype(np.float32))
    O = orthogonalize(G, backend="reference")
    assert O.shape == G.shape
