"""What a user sees when part of an install is missing or mismatched: a framework module without
its framework names the extra to install; a compiled extension that fails to load warns once
that backend="auto" runs the reference path; an MLX other than the one the MLX extension was
built against is named with both versions."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from fastmuon import native


@pytest.mark.parametrize("framework, blocked, extra", [("torch", "torch", "fastmuon[torch]"),
                                                       ("mlx", "mlx.core", "fastmuon[mlx]")])
def test_a_framework_module_without_its_framework_names_the_extra(framework, blocked, extra):
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"  # the import then raises ImportError
            f"try:\n    import fastmuon.{framework}\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"fastmuon.{framework} needs" in out and extra in out


@pytest.fixture
def fresh_loader():
    """The loader's cache emptied for the test and after it (the next use imports again)."""
    native._import.cache_clear()
    yield
    native._import.cache_clear()


def test_a_broken_extension_warns_once_and_auto_falls_back(fresh_loader, monkeypatch):
    real_import = native.importlib.import_module

    def broken(name, *args):
        if name == "fastmuon._blas":
            raise ImportError("libscipy_openblas.so: cannot open shared object file")
        return real_import(name, *args)

    monkeypatch.setattr(native.importlib, "import_module", broken)
    with pytest.warns(native.NativeFallbackWarning, match=r"fastmuon\._blas .*libscipy_openblas.*reference path"):
        assert not native.blas_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert not native.blas_available()
        with pytest.raises(native.NativeExtensionMissing, match="libscipy_openblas"):
            native.blas_module()


def test_an_mlx_other_than_the_build_one_is_named(fresh_loader, monkeypatch):
    mx = pytest.importorskip("mlx.core")
    monkeypatch.setattr(native, "_built_against_mlx", lambda: "0.1.0")
    with pytest.warns(native.NativeFallbackWarning):
        with pytest.raises(native.NativeExtensionMissing, match=rf"built against MLX 0\.1\.0 but MLX {mx.__version__}"):
            native.mlx_ext_module()


def test_the_build_records_its_mlx():
    mx = pytest.importorskip("mlx.core")
    built = native._built_against_mlx()
    if built is None:
        if os.environ.get("FASTMUON_REQUIRE_NATIVE") == "1":
            pytest.fail("FASTMUON_REQUIRE_NATIVE=1 but fastmuon/_mlx_ext_build.py, written by the build, is missing")
        pytest.skip("no build record in this tree (an in-place copy of the extensions)")
    assert built == mx.__version__
