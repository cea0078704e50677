"""Helpers shared by the tests of the compiled kernels (``fastmuon._blas``,
``fastmuon._mlx_ext``): the derived rounding bound for dot-product kernels and
small array utilities.

Tolerance (derived, not tuned). An entry C_ij = sum_l a_il b_lj (k terms),
possibly scaled and added to another term, evaluated in floating point with
unit roundoff u in *any* summation order (blocked BLAS kernels, FMA included)
satisfies

    |fl(C) - C| <= gamma_k * (|A| |B|)_ij,   gamma_k = k u / (1 - k u)

(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5);
a scaling or one further addition counts as one more term. We assert the
error is within TOL_MULT = 2 times k u |A||B|: the factor 2 covers
1 / (1 - k u) <= 1.01 for the sizes here and the float64 reference's own error
(about 2^-29 of the fp32 bound). An output rounded to a 16-bit type adds
u_out |C| (plus half the smallest subnormal spacing, for results that land in
the subnormal range).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

TOL_MULT = 2.0
U32 = 2.0**-24

# (dtype name, unit roundoff of the output, half the smallest subnormal spacing)
MLX_DTYPES = [
    ("float32", 0.0, 0.0),
    ("bfloat16", 2.0**-8, 2.0**-134),
    ("float16", 2.0**-11, 2.0**-25),
]


def assert_within_dot_bound(c, ref, scale, k: int, u_out: float = 0.0, eta_out: float = 0.0) -> None:
    """Assert |c - ref| <= TOL_MULT k u32 scale (1 + u_out) + u_out |ref| + eta_out elementwise,
    where ``ref`` is the float64 value and ``scale`` the matching sum of absolute terms."""
    c = np.asarray(c, dtype=np.float64)
    bound = TOL_MULT * k * U32 * scale * (1.0 + u_out) + u_out * np.abs(ref) + eta_out
    err = np.abs(c - ref)
    assert c.shape == ref.shape
    assert np.all(np.isfinite(c)), "non-finite entries in the result"
    if c.size == 0:
        return
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (
        f"error {err[worst]:.3e} > bound {bound[worst]:.3e} at {worst} (k={k})"
    )


def assert_exactly_symmetric(c) -> None:
    c = np.asarray(c)
    assert np.array_equal(c, np.swapaxes(c, -1, -2)), "result is not exactly symmetric"


def mx_to_np(a) -> np.ndarray:
    """An mlx array as a float32 (or wider) numpy array."""
    import mlx.core as mx

    return np.array(a.astype(mx.float32)) if a.dtype not in (mx.float32, mx.float64) else np.array(a)


def plan_arg(plan="polar_express", **changes) -> dict:
    """The extensions' ``plan`` argument: ``fastmuon.native.kernel_plan`` of ``plan`` (a Plan, or
    a method name for its 5-step plan), with the entries of ``changes`` set (a bad value, a
    restart period, an extra key)."""
    from fastmuon.native import kernel_plan
    from fastmuon.plan import make_plan

    if isinstance(plan, str):
        plan = make_plan(plan, 5, None)
    return {**kernel_plan(plan), **changes}


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


