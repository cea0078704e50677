"""Import hygiene: each entry point pulls in only its own framework."""

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_import_fastmuon_needs_no_framework():
    modules = imported_after("import fastmuon, fastmuon.coefficients")
    assert not modules & {"torch", "mlx", "triton"}


def test_fastmuon_torch_imports_only_torch():
    pytest.importorskip("torch")
    modules = imported_after("import fastmuon.torch")
    assert "torch" in modules
    assert not modules & {"mlx", "triton"}


def test_fastmuon_mlx_imports_only_mlx():
    pytest.importorskip("mlx.core")
    modules = imported_after("import fastmuon.mlx")
    assert "mlx" in modules
    assert not modules & {"torch", "triton"}


def test_cli_without_command_prints_usage():
    out = subprocess.run([sys.executable, "-m", "fastmuon"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage: python -m fastmuon" in out.stderr and "bench" in out.stderr


def test_cli_help_describes_each_command():
    out = subprocess.run([sys.executable, "-m", "fastmuon", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "bench" in out.stdout and "GPT-2-small block" in out.stdout and "make demo" in out.stdout
