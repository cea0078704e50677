"""The framework-neutral optimizer rules (``fastmuon.rules``) and ``warmup_cosine``."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastmuon
from fastmuon import rules
from fastmuon.schedules import warmup_cosine


# ----------------------------------------------------------------- warmup_cosine
@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.0), (1000, 5e-5), (2000, 1e-4), (6000, 5.5e-5), (10000, 1e-5)],
)
def test_warmup_cosine_seed_vectors(step, expected):
    lr = fastmuon.warmup_cosine(step, base_lr=1e-4, warmup_steps=2000, total_steps=10000, min_ratio=0.1)
    assert lr == pytest.approx(expected, rel=1e-12, abs=1e-20)


def test_warmup_cosine_shape():
    kw = dict(base_lr=2.0, warmup_steps=10, total_steps=110, min_ratio=0.25)
    lrs = [warmup_cosine(s, **kw) for s in range(130)]
    assert all(b > a for a, b in zip(lrs[:10], lrs[1:11]))  # warm-up rises linearly
    assert lrs[5] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(lrs[10:110], lrs[11:111]))  # cosine falls
    assert lrs[60] == pytest.approx(2.0 * (0.25 + 0.75 * 0.5))  # half way: the mean
    assert lrs[110:] == [pytest.approx(0.5)] * 20  # held at min_ratio * base afterwards


def test_warmup_cosine_without_warmup_starts_at_base():
    assert warmup_cosine(0, base_lr=3.0, warmup_steps=0, total_steps=5) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(step=0, warmup_steps=-1, total_steps=10), "warmup_steps"),
        (dict(step=0, warmup_steps=10, total_steps=10), "total_steps"),
        (dict(step=0, warmup_steps=1, total_steps=10, min_ratio=1.5), "min_ratio"),
        (dict(step=-1, warmup_steps=1, total_steps=10), "step"),
    ],
)
def test_warmup_cosine_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        warmup_cosine(base_lr=1.0, **kwargs)


# ------------------------------------------------------------ check_hyperparameters
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr="0.1"), "lr"),
        (dict(lr=0.1, momentum=1.0), "momentum"),
        (dict(lr=0.1, momentum=-0.1), "momentum"),
        (dict(lr=0.1, weight_decay=-1e-3), "weight_decay"),
        (dict(lr=0.1, weight_decay=float("inf")), "weight_decay"),
        (dict(lr=0.1, adjust_lr="spectral"), "adjust_lr"),
        (dict(lr=0.1, beta2=1.0), "beta2"),
        (dict(lr=0.1, ns_steps=0), "ns_steps"),
        (dict(lr=0.1, ns_steps=2.0), "ns_steps"),
        (dict(lr=0.1, ns_steps=True), "ns_steps"),
        (dict(lr=0.1, sphere="exp"), "sphere"),
        (dict(lr=0.1, sphere="project", weight_decay=0.1), "weight_decay"),
    ],
)
def test_check_hyperparameters_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rules.check_hyperparameters(**kwargs)


def test_check_hyperparameters_accepts_good_values_and_schedules():
    rules.check_hyperparameters(lr=0.0, momentum=0.0, weight_decay=0.0, adjust_lr="original", beta2=0.0,
                                ns_steps=1, sphere=None)
    rules.check_hyperparameters(lr=lambda step: 0.1, adjust_lr="match_rms_adamw", sphere="geodesic")


# ------------------------------------------------------------ matrix views and scale
@pytest.mark.parametrize(
    "shape, view",
    [((5, 7), (1, 5, 7)), ((3, 5, 7), (3, 5, 7)), ((8, 4, 3, 3), (1, 8, 36))],
)
def test_matrix_view(shape, view):
    assert rules.matrix_view(shape) == view


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4, 5, 6)])
def test_matrix_view_rejects_and_names(shape):
    with pytest.raises(ValueError, match="layer.bias"):
        rules.matrix_view(shape, "layer.bias")


def test_shape_scale():
    assert rules.shape_scale(64, 16, "original") == pytest.approx(2.0)
    assert rules.shape_scale(16, 64, "original") == 1.0
    assert rules.shape_scale(64, 16, "match_rms_adamw") == pytest.approx(1.6)
    assert rules.shape_scale(16, 100, "match_rms_adamw") == pytest.approx(2.0)
    assert rules.shape_scale(8, 0, "original") == 1.0  # empty: no division by zero


def test_empty_matrices_step_in_both_frameworks():
    """A (8, 0) weight, and a (0, 8) one in a transposed group (its view read as (8, 0)), step
    to empty results next to a non-empty weight, which steps as it does alone (both once
    raised ZeroDivisionError in the lr scale)."""
    torch = pytest.importorskip("torch")
    from fastmuon.torch import Muon

    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    g = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    for shape, transposed in [((8, 0), False), ((0, 8), True)]:
        empty, alone, together = torch.nn.Parameter(torch.zeros(shape)), torch.nn.Parameter(w.clone()), \
            torch.nn.Parameter(w.clone())
        empty.grad, alone.grad, together.grad = torch.zeros(shape), g.clone(), g.clone()
        Muon([dict(params=[empty, together], transposed=transposed)]).step()
        Muon([dict(params=[alone], transposed=transposed)]).step()
        assert empty.shape == shape and torch.equal(together, alone)
    mx = pytest.importorskip("mlx.core")
    from fastmuon.mlx import Muon as MlxMuon

    params = {"empty": mx.zeros((8, 0)), "w": mx.array(w.numpy())}
    out = MlxMuon(0.02).apply_gradients({"empty": mx.zeros((8, 0)), "w": mx.array(g.numpy())}, params)
    assert out["empty"].shape == (8, 0) and out["w"].shape == (4, 4)


@pytest.mark.parametrize("shape", [(0, 8), (8, 0), (2, 0, 3)])
def test_normuon_state_of_empty_matrices_stays_finite(shape):
    """NorMuon's second moment of an empty weight is its mean of O^2 over an empty axis: zeros,
    not 0/0 (it was NaN in both frameworks)."""
    torch = pytest.importorskip("torch")
    from fastmuon.torch import NorMuon

    p = torch.nn.Parameter(torch.zeros(shape))
    p.grad = torch.zeros(shape)
    opt = NorMuon([p], allow_nd=True)
    opt.step()
    second = opt.state[p]["second_moment"]
    assert torch.equal(second, torch.zeros_like(second)) and opt.state[p]["skipped_steps"].item() == 0
    mx = pytest.importorskip("mlx.core")
    import numpy as np

    from fastmuon.mlx import NorMuon as MlxNorMuon

    mlx_opt = MlxNorMuon(0.02)
    mlx_opt.apply_gradients({"w": mx.zeros(shape)}, {"w": mx.zeros(shape)})
    second = np.array(mlx_opt.state["w"]["second_moment"])
    assert (second == 0).all() and mlx_opt.state["w"]["skipped_steps"].item() == 0
    with pytest.raises(ValueError, match="adjust_lr"):
        rules.shape_scale(4, 4, "none")


def test_conv_scale_uses_flattened_view():
    _, rows, cols = rules.matrix_view((32, 2, 2, 2))
    assert rules.shape_scale(rows, cols, "original") == pytest.approx(2.0)  # 32 / 8, not 32 / 2


def test_normuon_axis_and_state_shape():
    assert rules.normuon_reduce_dim(10, 4) == -1 and rules.normuon_state_shape(2, 10, 4) == (2, 10, 1)
    assert rules.normuon_reduce_dim(4, 10) == -2 and rules.normuon_state_shape(2, 4, 10) == (2, 1, 10)
    assert rules.normuon_reduce_dim(6, 6) == -1


@pytest.mark.parametrize(
    "name, excluded",
    [
        ("output.weight", True),
        ("lm_head.weight", True),
        ("embed_tokens.weight", True),
        ("model.embed_tokens.weight", True),
        ("transformer.h.0.mlp.c_fc.weight", False),
        ("encoder.layer.0.output.dense.weight", False),  # BERT's hidden "output" block
        ("classifier.head.weight", True),
        ("linear1.weight", False),
        ("scale", False),
    ],
)
def test_name_is_excluded(name, excluded):
    assert rules.name_is_excluded(name, rules.DEFAULT_EXCLUDE) is excluded


def test_sphere_modes_and_constants():
    assert rules.SPHERE_MODES == (None, "project", "geodesic")
    assert rules.ADJUST_LR == ("original", "match_rms_adamw")
    assert rules.NORMUON_EPS == 1e-10
    assert math.isclose(rules.shape_scale(9, 1, "original"), 3.0)


def test_adamw_eps_that_rounds_to_zero_in_float16_is_refused():
    """AdamW's eps must not round to 0 in a weight's dtype: in float16 the default 1e-10 does,
    and a zero gradient entry then turns its weight into NaN (0 / 0; torch.optim.AdamW does the
    same silently). Both frameworks refuse it, naming the weight; a representable eps steps."""
    assert rules.SMALLEST_SUBNORMAL["float16"] == 2.0**-24
    torch = pytest.importorskip("torch")
    from fastmuon.torch import MuonWithAdamW

    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"eps=1e-10 rounds to 0 in torch.float16, the dtype of param_groups\[0\]"):
        MuonWithAdamW([{"params": [p], "use_muon": False}])
    opt = MuonWithAdamW([{"params": [p], "use_muon": False, "eps": 1e-4}])
    p.grad = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float16)
    opt.step()
    assert torch.isfinite(p).all() and p[0].item() == 1.0
    MuonWithAdamW([{"params": [torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))], "use_muon": False}])
    mx = pytest.importorskip("mlx.core")
    import numpy as np

    import fastmuon.mlx as fm

    params = {"w": mx.ones((4, 4)), "b": mx.ones((4,), dtype=mx.float16)}
    grads = {"w": mx.ones((4, 4)), "b": mx.array([0.0, 1.0, 0.0, -1.0], dtype=mx.float16)}
    with pytest.raises(ValueError, match="eps=1e-10 rounds to 0 in mlx.core.float16, the dtype of the parameter at 'b'"):
        fm.MuonWithAdamW(0.02).apply_gradients(grads, params)
    out = fm.MuonWithAdamW(0.02, adamw_eps=1e-4).apply_gradients(grads, params)
    assert np.isfinite(np.array(out["b"].astype(mx.float32))).all()


HUGE_GRADIENT_CASES = [  # (weight dtype, gradient scale 2^exponent, compute dtype, torch impl)
    ("float64", 130, None, "auto"),  # beyond float32's range
    ("float64", 1000, None, "foreach"),
    ("float64", 1000, "bfloat16", "per_parameter"),
    ("float32", 127, "bfloat16", "auto"),  # 3.4e38, which rounds to inf in bfloat16
    ("float32", 127, None, "fused"),
]


@pytest.mark.parametrize("name", ["Muon", "NorMuon"])
@pytest.mark.parametrize("dtype, exponent, compute, impl", HUGE_GRADIENT_CASES, ids=str)
@pytest.mark.parametrize("framework", ["torch", "mlx"])
def test_huge_finite_gradients_step_as_unit_ones(framework, dtype, exponent, compute, impl, name):
    """A finite gradient too large for the compute dtype is a finite gradient: it steps (no skip,
    finite weights and state) as the same gradient at unit scale does, since the orthogonalized
    update does not depend on the scale (momentum 0: the update is the gradient's, all of it;
    float64 weights with 1e39 gradients once became NaN with
    skipped_steps 0). Bound: the error against the float64 step is at most 4x the unit-scale
    step's own (two runs' rounding errors differ by up to about 2x here)."""
    W0 = np.random.default_rng(5).standard_normal((2, 16, 24))
    G = np.random.default_rng(6).standard_normal((2, 16, 24))
    G *= 1.999 / np.abs(G).max()
    if framework == "torch":
        torch = pytest.importorskip("torch")
        import fastmuon.torch as lib
        if impl in ("fused", "foreach") and name == "NorMuon":
            pytest.skip("NorMuon steps per parameter")

        def step(scale, dtype, compute, impl):
            W = torch.nn.Parameter(torch.tensor(W0).to(getattr(torch, dtype)))
            opt = getattr(lib, name)([W], lr=0.02, momentum=0.0, ns_dtype=compute and getattr(torch, compute),
                                     impl=impl, allow_nd=True)
            W.grad = torch.tensor(G * scale).to(W.dtype)
            opt.step()
            state = {k: v.double().numpy() for k, v in opt.state[W].items()}
            return W.detach().double().numpy(), state
    else:
        mx = pytest.importorskip("mlx.core")
        import fastmuon.mlx as lib

        def step(scale, dtype, compute, impl):
            opt = getattr(lib, name)(0.02, momentum=0.0, ns_dtype=compute and getattr(mx, compute))
            params = {"w": mx.array(W0, dtype=mx.float64).astype(getattr(mx, dtype))}
            params = opt.apply_gradients({"w": mx.array(G * scale, dtype=mx.float64).astype(params["w"].dtype)},
                                         params)
            state = {k: np.array(v.astype(mx.float64)) for k, v in opt.state["w"].items()}
            return np.array(params["w"].astype(mx.float64)), state

    W, state = step(2.0**exponent, dtype, compute, impl)
    unit, _ = step(1.0, dtype, compute, impl)
    exact, _ = step(1.0, "float64", "float64", "per_parameter")
    assert np.isfinite(W).all() and all(np.isfinite(v).all() for v in state.values())
    assert state["skipped_steps"] == 0
    assert np.abs(W - exact).max() <= 4 * np.abs(unit - exact).max()
