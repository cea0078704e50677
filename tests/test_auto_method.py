"""method="auto", the default: AOL where it iterates in Gram space, Polar Express elsewhere
(``fastmuon.plan.Plan.for_shape``). Every backend and entry point must run exactly the plan it
chooses for each matrix, and the pairing must be no worse than torch.optim.Muon's Newton-Schulz
on the quality panel's kinds of input in float64."""

from __future__ import annotations

import numpy as np
import pytest

from fastmuon import quality
from fastmuon.options import MUON_DEFAULTS
from fastmuon.plan import make_plan
from support.native_helpers import require_native

torch = pytest.importorskip("torch")

from fastmuon.torch import Muon, orthogonalize  # noqa: E402
from fastmuon.torch.orthogonalize import orthogonalize_stacks  # noqa: E402

GRAM_SHAPES = [(256, 768), (768, 256), (3, 256, 512)]  # AOL in Gram space
STANDARD_SHAPES = [(256, 256), (128, 768), (300, 500)]  # too small or too square: Polar Express


def test_auto_is_the_default_and_chooses_by_shape():
    assert MUON_DEFAULTS["method"] == "auto"
    auto = make_plan("auto", 5, None)
    for shape in GRAM_SHAPES:
        assert auto.for_shape(*shape[-2:]) == make_plan("aol", 5, None)
    for shape in STANDARD_SHAPES:
        assert auto.for_shape(*shape[-2:]) == make_plan("polar_express", 5, None)
    # AOL's Gram form stops at 5 steps, so with more "auto" is Polar Express everywhere
    assert make_plan("auto", 6, None).for_shape(768, 3072) == make_plan("polar_express", 6, None)
    assert make_plan("auto", 4, None, eps=1e-5).for_shape(256, 768) == make_plan("aol", 4, None, eps=1e-5)
    assert make_plan("polar_express", 5, None).for_shape(256, 768) == make_plan("polar_express", 5, None)


def test_custom_coefficients_with_auto_run_as_polar_express():
    """One table for every shape, normalized as Polar Express."""
    table = [(3.0, -3.2, 1.2)] * 3
    assert make_plan("auto", 5, table) == make_plan("polar_express", 5, table)
    G = torch.randn(256, 768, generator=torch.Generator().manual_seed(0))
    assert torch.equal(orthogonalize(G, coefficients=table), orthogonalize(G, method="polar_express",
                                                                           coefficients=table))
    # torch.optim.Muon's ns_coefficients still mean Newton-Schulz with them
    opt = Muon([torch.nn.Parameter(torch.randn(4, 8))], ns_coefficients=(3.0, -3.0, 1.0))
    assert opt.param_groups[0]["method"] == "newton_schulz"


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for shape in GRAM_SHAPES + STANDARD_SHAPES]


def _expected_method(G) -> str:
    return "aol" if tuple(G.shape) in GRAM_SHAPES else "polar_express"


@pytest.mark.parametrize("backend,dtype", [("reference", torch.float32), ("reference", torch.bfloat16),
                                           ("reference", torch.float64), ("native", None)])
def test_torch_auto_runs_the_chosen_method_bitwise(backend, dtype):
    if backend == "native":
        require_native("blas")
    for G in _inputs():
        got = orthogonalize(G, backend=backend, dtype=dtype)
        want = orthogonalize(G, method=_expected_method(G), backend=backend, dtype=dtype)
        assert torch.equal(got, want), tuple(G.shape)


def test_native_float64_inputs_take_the_chosen_normalization():
    """float64 inputs are normalized in Python before the kernel (so that they cannot overflow
    fp32): with the scale of the method chosen for their shape."""
    require_native("blas")
    Gs = [G.double() for G in _inputs(1)]
    for G, O in zip(Gs, orthogonalize_stacks(Gs, backend="native")):
        assert torch.equal(O, orthogonalize(G, method=_expected_method(G), backend="native")), tuple(G.shape)


def test_native_stacks_mix_both_methods_in_one_call():
    require_native("blas")
    Gs = _inputs(2)
    for G, O in zip(Gs, orthogonalize_stacks(Gs, backend="native")):
        assert torch.equal(O, orthogonalize(G, method=_expected_method(G), backend="native")), tuple(G.shape)


def test_fused_step_with_both_methods_equals_the_per_parameter_step():
    """The fused native step takes one plan for all its parameters; the kernels choose the
    method per matrix, as the per-parameter step does."""
    require_native("blas")
    shapes = [(256, 768), (256, 256), (768, 256)]

    def run(impl):
        g = torch.Generator().manual_seed(3)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        opt = Muon(params, impl=impl, backend="native")
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return [p.detach().clone() for p in params]

    fused, per_parameter = run("fused"), run("per_parameter")
    for a, b, shape in zip(fused, per_parameter, shapes):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), (shape, (a - b).abs().max())


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_mlx_auto_runs_the_chosen_method_bitwise(backend):
    mx = pytest.importorskip("mlx.core")
    from fastmuon.mlx import orthogonalize as mlx_orthogonalize

    if backend == "native":
        require_native("mlx_ext")
    for G in _inputs():
        X = mx.array(G.numpy())
        got = np.array(mlx_orthogonalize(X, backend=backend))
        want = np.array(mlx_orthogonalize(X, method=_expected_method(G), backend=backend))
        assert np.array_equal(got, want), tuple(G.shape)


# ------------------------------------------------------------------ quality in float64

PANEL_SIZES = ((256, 768), (256, 512), (256, 256))  # Gram form, Gram form, standard form


@pytest.fixture(scope="module")
def panel():
    inputs = quality.panel_inputs(sizes=PANEL_SIZES, stack=(2, 256, 768), momentum=False)
    return inputs, {name: quality.polar_factor(G) for name, G in inputs.items()}


def _worst_ratios(fn, panel, name="auto5"):
    inputs, polars = panel
    rows = quality.evaluate(fn, [quality.ANCHOR, name], inputs, polars=polars)
    return quality.ratios_to_anchor(rows)[(name,)]


def _torch_float64(G, **kwargs):
    return orthogonalize(torch.from_numpy(G), backend="reference", dtype=torch.float64, **kwargs).numpy()


def test_auto_no_worse_than_newton_schulz5_in_float64(panel):
    """Every kind of panel input at 256 rows (AOL's smallest Gram-form batches, and a square one
    where Polar Express runs): both distances to the polar factor no larger than Newton-Schulz 5's
    (observed worst ratios 0.91 Frobenius, 0.992 spectral on rank 8 plus noise)."""
    entry = _worst_ratios(_torch_float64, panel)
    assert entry["no_worse"], entry


def test_auto_with_a_wrong_aol_scaling_fails_the_same_check(panel):
    """The check above can fail: AOL with d_i = rowsum_i^-0.75 (the bound holds only for -1/2)
    passes the spectrum beyond the polynomials' interval."""

    def wrong(G, **kwargs):
        return quality.numpy_orthogonalize(G, aol_exponent=0.75, **kwargs)

    def right(G, **kwargs):
        return quality.numpy_orthogonalize(G, **kwargs)

    assert _worst_ratios(right, panel)["no_worse"]
    entry = _worst_ratios(wrong, panel)
    assert not entry["no_worse"] and entry["worst_spectral"] > 10, entry


def test_auto_compiles_in_one_graph_without_warnings():
    """torch.compile(fullgraph=True) traces the per-shape choice (plain Python on the plan, no
    cache for dynamo to warn about) and computes what eager mode does."""
    import warnings

    G = torch.randn(256, 768, generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(lambda X: orthogonalize(X, backend="reference", dtype=torch.float32), fullgraph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compiled(G)
    assert not [w for w in caught if "lru_cache" in str(w.message)], [str(w.message) for w in caught]
    want = orthogonalize(G, method="aol", backend="reference", dtype=torch.float32)
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()


def test_explain_names_the_method_each_matrix_runs():
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(256, 768), (256, 256)]]
    for p in params:
        p.grad = torch.ones(p.shape)
    assert [r.method for r in Muon(params).explain()] == ["aol", "polar_express"]
    assert [r.method for r in Muon(params, method="newton_schulz").explain()] == ["newton_schulz"] * 2

    mx = pytest.importorskip("mlx.core")
    from fastmuon.mlx import Muon as MlxMuon

    grads = {"wide": mx.zeros((768, 256)), "square": mx.zeros((256, 256)), "bias": mx.zeros((8,))}
    assert [r.method for r in MlxMuon().explain(grads)] == ["aol", "polar_express", ""]
