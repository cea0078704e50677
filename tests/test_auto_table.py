"""Where "auto" takes the Triton kernels on CUDA: the recorded table (``fastmuon.auto_table``)
and its lookup in ``select_backend``, on fake CUDA tensors (no GPU needed, triton not imported)."""

from __future__ import annotations

import importlib

import pytest

torch = pytest.importorskip("torch")

from fastmuon import auto_table  # noqa: E402

ortho = importlib.import_module("fastmuon.torch.orthogonalize")  # the module, not the function
GPU = "NVIDIA H200"


def _fake_cuda(*shape, requires_grad=False):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.empty(*shape, device="cuda", requires_grad=requires_grad)


def _rows(shape, triton_ms, reference_ms, gpu=GPU, dtype="bfloat16"):
    batch, m, n = shape
    common = dict(gpu=gpu, date="2026-12-01T00:00:00+00:00", op="orthogonalize", batch=batch, m=m, n=n, dtype=dtype)
    return [dict(common, provider="triton", ms=triton_ms), dict(common, provider="reference", ms=reference_ms)]


def test_the_table_starts_empty_and_auto_keeps_cuda_on_the_reference():
    """No GPU run has measured Triton faster anywhere yet: no entries, and "auto" sends every
    CUDA tensor to the cuBLAS reference."""
    assert auto_table.TRITON_FASTER == {}
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        assert ortho.select_backend("auto", _fake_cuda(12, 768, 3072), dtype) == "reference"


def test_buckets_round_the_wide_orientation_up_to_powers_of_two():
    assert auto_table.shape_bucket(12, 768, 3072) == (16, 1024, 4096)
    assert auto_table.shape_bucket(12, 3072, 768) == (16, 1024, 4096)  # tall: same bucket
    assert auto_table.shape_bucket(1, 1024, 1024) == (1, 1024, 1024)
    assert auto_table.shape_bucket(1, 1025, 1) == (1, 1, 2048)
    assert auto_table.shape_bucket(0, 1, 1) == (1, 1, 1)


def test_entries_need_every_shape_of_a_bucket_faster_with_triton():
    rows = (
        _rows((12, 768, 3072), 1.0, 1.2)  # faster by more than the margin
        + _rows((16, 1024, 4096), 1.0, 1.5)  # same bucket, also faster
        + _rows((1, 768, 768), 0.5, 0.3)  # slower: no entry
        + _rows((1, 2048, 8192), 0.99, 1.0)  # within the margin: no entry
        + _rows((1, 4096, 4096), 3.0, 3.5, dtype="float32")
        + _rows((1, 3000, 3000), 1.0, 2.0)[:1]  # triton alone: no pair, no entry
        + _rows((2, 256, 512), 1.0, 2.0) + _rows((2, 512, 256), 3.0, 2.0)  # one bucket, mixed: none
    )
    entries = auto_table.entries_from_rows(rows)
    assert set(entries) == {(GPU, "bfloat16", (16, 1024, 4096)), (GPU, "float32", (1, 4096, 4096))}
    entry = entries[(GPU, "bfloat16", (16, 1024, 4096))]
    assert entry["shapes"] == [[12, 768, 3072], [16, 1024, 4096]] and entry["triton_ms"] == [1.0, 1.0]
    # the printed form is the assignment to paste into the module, and reads back the same
    scope = {}
    exec("from typing import Any, Dict, Tuple\n" + auto_table.format_entries(entries), scope)
    assert scope["TRITON_FASTER"] == entries
    assert "= {}" in auto_table.format_entries({})


def test_auto_takes_triton_only_where_the_table_says(monkeypatch):
    entries = auto_table.entries_from_rows(_rows((12, 768, 3072), 1.0, 1.5))
    monkeypatch.setattr(auto_table, "TRITON_FASTER", entries)
    monkeypatch.setattr(ortho, "cuda_device_name", lambda device: GPU)
    monkeypatch.setattr(ortho, "_TRITON_FOUND", True)  # as on a CUDA machine (its torch brings triton)
    bf16 = torch.bfloat16
    assert ortho.select_backend("auto", _fake_cuda(12, 768, 3072), bf16) == "triton"
    assert ortho.select_backend("auto", _fake_cuda(3, 4, 3072, 768), bf16) == "triton"  # batch 12, tall
    assert ortho.select_backend("auto", _fake_cuda(1, 768, 3072), bf16) == "reference"  # other bucket
    assert ortho.select_backend("auto", _fake_cuda(12, 768, 3072), torch.float32) == "reference"  # other dtype
    assert ortho.select_backend("auto", _fake_cuda(12, 768, 3072, requires_grad=True), bf16) == "reference"
    assert ortho.select_backend("reference", _fake_cuda(12, 768, 3072), bf16) == "reference"
    monkeypatch.setattr(ortho, "cuda_device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    assert ortho.select_backend("auto", _fake_cuda(12, 768, 3072), bf16) == "reference"  # other GPU
    monkeypatch.setattr(ortho, "cuda_device_name", lambda device: GPU)
    monkeypatch.setattr(ortho, "_TRITON_FOUND", False)
    assert ortho.select_backend("auto", _fake_cuda(12, 768, 3072), bf16) == "reference"  # no triton


def test_cpu_tensors_never_consult_the_table(monkeypatch):
    monkeypatch.setattr(auto_table, "TRITON_FASTER", {("cpu", "float32", (1, 4, 8)): {}})
    monkeypatch.setattr(ortho, "cuda_device_name", lambda device: pytest.fail("asked a CPU tensor's GPU"))
    assert ortho.select_backend("auto", torch.ones(4, 8), torch.float32) in ("native", "reference")
