"""Loader for fastmuon's compiled extensions.

Two extensions are built from ``csrc/``:

* ``fastmuon._blas``: CPU kernels on the BLAS (scipy-openblas32 / Accelerate)
  for numpy arrays and torch CPU tensors. Needs neither torch nor mlx.
* ``fastmuon._mlx_ext``: MLX primitives; needs ``mlx`` (it links libmlx and
  shares MLX's nanobind domain, so ``mlx.core`` is imported first).

Both link the same OpenBLAS (scipy-openblas32 on Linux), which is started
with a short spin (``OPENBLAS_SPIN_CYCLES``, unless the user set
``OPENBLAS_THREAD_TIMEOUT``): by default OpenBLAS's idle threads spin about
0.1 s after every multi-threaded call, taking a core from the torch or MLX
work that follows (``tests/test_native_threads.py`` checks the spin is gone).

Every extension function that runs the iteration takes it as one argument, ``plan``: the dict
that :func:`kernel_plan` builds from a :class:`fastmuon.plan.Plan` (read by key in C++,
``csrc/plan_args.h``).

Both are imported lazily, on first use, and the outcome is cached. A missing
or broken build never breaks ``import fastmuon``: the accessors raise
:class:`NativeExtensionMissing` (an ``ImportError``) with a build hint, and the
``*_available()`` helpers return ``False``; the first failure also warns
(:class:`NativeFallbackWarning`), since ``backend="auto"`` then runs the reference path
(a missing mlx, for the MLX extension, is a torch-only install: no warning). An MLX other than
the one ``fastmuon._mlx_ext`` was built against is named before the extension is loaded.
This module imports neither torch nor mlx at import time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from types import ModuleType
from typing import Any, Dict

from .plan import GramRule, Plan

__all__ = [
    "NativeExtensionMissing",
    "NativeFallbackWarning",
    "blas_available",
    "blas_module",
    "kernel_plan",
    "mlx_ext_available",
    "mlx_ext_module",
]

_BUILD_HINT = (
    "From a source checkout, build the extensions with `pip install -e .` "
    "(or `make test`); a wheel of fastmuon for your platform contains them."
)


# OPENBLAS_THREAD_TIMEOUT is log2 of the cycles an idle OpenBLAS thread spins before it sleeps
# (OpenBLAS reads it once, when the library loads; its default, 28, is about 0.1 s). 2^20 cycles
# (about 0.3 ms) still bridges the gaps between the BLAS calls of one orthogonalization.
OPENBLAS_SPIN_CYCLES = 20


@contextlib.contextmanager
def _short_blas_spin():
    """OPENBLAS_THREAD_TIMEOUT set while our OpenBLAS loads, and restored after, so that it
    reaches only that library (not, say, numpy's OpenBLAS, should it load later). Kept by hand:
    OpenBLAS reads the spin only from the environment, at load, so threadpoolctl (which sets
    thread counts of loaded libraries) cannot set it; the thread counts themselves are set per
    call by the kernels (``fastmuon.threads``)."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        yield
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(OPENBLAS_SPIN_CYCLES)
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_THREAD_TIMEOUT", None)


def kernel_plan(plan: Plan, normalize: bool = True) -> Dict[str, Any]:
    """``plan`` as the extensions take it (their ``plan`` argument): a dict with exactly the
    fields of the C++ ``fastmuon::OrthogonalizePlan`` (``csrc/iteration.h``), read by key in
    ``csrc/plan_args.h``; a new field is one key here and one there.

    ``coefficients`` are the plan's (a, b, c) rows, a tuple of float triples (the extensions
    also take a (steps, 3) float64 array). Plain Python values, so that torch.compile folds the
    dict into constants; numpy calls here would be traced into the graph as tensor ops.
    ``normalize=False`` tells the kernels that the caller has normalized the input (a float64
    input is normalized before it is rounded to the kernels' float32, so that it cannot overflow).
    For method "auto" the fields are those of its Gram-form plan, and ``standard_coefficients``
    and ``standard_norm_scale`` those of the plan the other matrices run (``Plan.for_shape``);
    empty for every other plan.
    """
    plan, standard = plan.shape_choices()  # method "auto": the kernels choose per matrix
    rule = plan.gram_rule
    gram = rule is not None
    rule = rule or GramRule()  # the fields' neutral values where nothing runs in Gram space
    return {
        "coefficients": plan.coefficients,
        "norm_scale": plan.norm_scale,
        "eps": plan.eps,
        "gram": gram,
        "aol": plan.uses_aol,
        "gram_restart_every": rule.restart_every,
        "gram_restarts": rule.restarts,
        "gram_min_rows": rule.min_rows,
        "gram_min_aspect": rule.min_aspect,
        "normalize": normalize,
        "standard_coefficients": () if standard is None else standard.coefficients,
        "standard_norm_scale": 1.0 if standard is None else standard.norm_scale,
    }


class NativeExtensionMissing(ImportError):
    """A compiled fastmuon extension could not be imported."""


class NativeFallbackWarning(RuntimeWarning):
    """A compiled extension that is installed failed to load, so ``backend="auto"`` runs the
    reference path (warned once per process and extension)."""


def _built_against_mlx() -> str | None:
    """The MLX version ``fastmuon._mlx_ext`` was built against (written by CMakeLists.txt into
    ``fastmuon/_mlx_ext_build.py``), or None where it is unknown (a source tree without a build)."""
    try:
        return importlib.import_module("fastmuon._mlx_ext_build").MLX_VERSION
    except ImportError:
        return None


def _not_built_reason() -> str | None:
    """Why this install has no compiled extensions (CMakeLists.txt writes ``fastmuon/_native_build.py``
    when it finds no working C++20 compiler and installs the Python package alone), or None."""
    try:
        return importlib.import_module("fastmuon._native_build").NOT_BUILT_REASON
    except ImportError:
        return None


# The wheels share the OpenMP runtime that torch ships (libgomp.so.1, csrc/parallel.h) instead of
# bundling a second one, so without torch loaded the system's libgomp must provide it.
_LIBGOMP_HINT = (
    "fastmuon's wheels do not bundle the OpenMP runtime libgomp.so.1: they use the one torch "
    "brings (import torch first) or the system's (Debian/Ubuntu: apt install libgomp1; "
    "Fedora/RHEL: dnf install libgomp)."
)


def _preload_openblas() -> None:
    """Map scipy-openblas32's library by its full path before an extension that needs it loads.

    The extensions find it through RPATH ``$ORIGIN/../scipy_openblas32/lib``, which holds only
    where both packages share one folder; with fastmuon elsewhere (``pip install --target``, a
    ``--user`` install beside a system one, PYTHONPATH) the loader then matches the already-mapped
    library by its soname. Where scipy-openblas32 is missing (macOS: Accelerate) nothing happens."""
    try:
        import scipy_openblas32
    except ImportError:
        return
    import ctypes

    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(fullname=True))
    try:
        ctypes.CDLL(path)
    except OSError:
        pass  # the extension's own import then fails and names the problem


def _mlx_version_mismatch() -> str | None:
    """Why ``fastmuon._mlx_ext`` cannot work with the installed MLX, or None."""
    import mlx.core as mx

    built = _built_against_mlx()
    if built is None or built == mx.__version__:
        return None
    return (f"fastmuon._mlx_ext was built against MLX {built} but MLX {mx.__version__} is installed; libmlx has "
            f"no stable ABI, so the two must match: install mlx=={built} (pip install 'fastmuon[mlx]'), or "
            "rebuild fastmuon against the installed MLX (pip install --no-binary fastmuon --force-reinstall fastmuon)")


def _load(name: str, prerequisite: str | None, missing_prereq_hint: str) -> ModuleType:
    outcome = _import(name, prerequisite, missing_prereq_hint)
    if isinstance(outcome, NativeExtensionMissing):
        # A fresh instance per raise: re-raising the cached one would keep
        # growing its traceback.
        raise NativeExtensionMissing(str(outcome)) from outcome.__cause__
    return outcome


@functools.cache  # one import attempt (and one warning) per extension and process
def _import(
    name: str, prerequisite: str | None, missing_prereq_hint: str
) -> ModuleType | NativeExtensionMissing:
    if prerequisite is not None:
        try:
            importlib.import_module(prerequisite)
        except ImportError as exc:
            err = NativeExtensionMissing(
                f"fastmuon.{name} needs {prerequisite!r}, which failed to import "
                f"({type(exc).__name__}: {exc}). {missing_prereq_hint}"
            )
            err.__cause__ = exc
            return err
    mismatch = _mlx_version_mismatch() if name == "_mlx_ext" else None
    if mismatch is not None:
        return _fallback(NativeExtensionMissing(mismatch))
    try:
        with _short_blas_spin():
            _preload_openblas()
            return importlib.import_module(f"fastmuon.{name}")
    except ImportError as exc:
        not_built = _not_built_reason()
        if not_built is not None:
            err = NativeExtensionMissing(
                f"fastmuon's compiled extension fastmuon.{name} was not built: {not_built} (the install "
                "fell back to the pure-Python package). Install a C++20 compiler and reinstall fastmuon "
                "(pip install --force-reinstall --no-deps --no-binary fastmuon fastmuon), or install a "
                "fastmuon wheel for your platform."
            )
        else:
            hint = _LIBGOMP_HINT if "libgomp" in str(exc) else _BUILD_HINT
            err = NativeExtensionMissing(
                f"fastmuon's compiled extension fastmuon.{name} is not available "
                f"({type(exc).__name__}: {exc}). {hint}"
            )
        err.__cause__ = exc
        return _fallback(err)


def _fallback(err: NativeExtensionMissing) -> NativeExtensionMissing:
    """Warn (once: the outcome is cached) that ``backend="auto"`` will not find this extension."""
    warnings.warn(f"{err} Until then backend=\"auto\" runs the reference path.", NativeFallbackWarning, stacklevel=5)
    return err


def blas_module() -> ModuleType:
    """Return ``fastmuon._blas`` (BLAS CPU kernels for numpy / torch CPU).

    Raises:
        NativeExtensionMissing: the extension is not built or fails to load.
    """
    return _load("_blas", None, "")


def mlx_ext_module() -> ModuleType:
    """Return ``fastmuon._mlx_ext`` (MLX primitives), importing ``mlx.core`` first.

    Raises:
        NativeExtensionMissing: mlx is not installed, or the extension is not
            built or fails to load.
    """
    return _load(
        "_mlx_ext",
        "mlx.core",
        "Install MLX with `pip install 'fastmuon[mlx]'`.",
    )


def blas_available() -> bool:
    """Whether ``fastmuon._blas`` can be imported."""
    try:
        blas_module()
    except ImportError:
        return False
    return True


def mlx_ext_available() -> bool:
    """Whether mlx and ``fastmuon._mlx_ext`` can be imported."""
    try:
        mlx_ext_module()
    except ImportError:
        return False
    return True
