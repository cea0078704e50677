"""fastmuon.options.MuonOptions: every Muon option checked in one place, for type and range,
with the option's name in the error, the same in both frameworks; MLX takes every option torch
has or refuses it by name; and the public impl=/explain() switch."""

from __future__ import annotations

import numpy as np
import pytest

from fastmuon.options import IMPLS, MLX_IMPLS, MuonOptions

# (options, the word the ValueError must contain): wrong types that once reached the step
# (a nanobind signature dump, a TypeError from deep inside) and out-of-range values.
BAD_TYPES = [
    (dict(momentum="0.9"), "momentum"),
    (dict(momentum=None), "momentum"),
    (dict(weight_decay=None), "weight_decay"),
    (dict(weight_decay="0.1"), "weight_decay"),
    (dict(nesterov="no"), "nesterov"),
    (dict(nesterov=1), "nesterov"),
    (dict(ns_steps=2.5), "ns_steps"),
    (dict(cautious_weight_decay="yes"), "cautious_weight_decay"),
    (dict(impl="fast"), "impl"),
    (dict(impl=None), "impl"),
    (dict(eps=-1.0), "eps"),
    (dict(eps="1e-7"), "eps"),
    (dict(ns_coefficients=(3.0, -4.0)), "ns_coefficients"),
    (dict(ns_coefficients=("a", "b", "c")), "ns_coefficients"),
]


@pytest.mark.parametrize("options,word", BAD_TYPES)
def test_options_object_names_the_bad_option(options, word):
    if "ns_coefficients" in options:
        options = dict(options, method="newton_schulz")
    with pytest.raises(ValueError, match=word):
        MuonOptions(**options).check(("auto",))


def test_options_object_accepts_its_defaults_and_numpy_scalars():
    MuonOptions().check(("auto",))
    MuonOptions(momentum=np.float32(0.9), nesterov=np.bool_(False), ns_steps=np.int64(3)).check(("auto",))


@pytest.mark.parametrize("options,word", BAD_TYPES)
def test_torch_optimizers_refuse_bad_options_by_name(options, word):
    torch = pytest.importorskip("torch")
    from fastmuon.torch import Muon

    p = torch.nn.Parameter(torch.zeros(4, 6))
    with pytest.raises(ValueError, match=rf"{word}.*param_groups\[0\]|{word}"):
        Muon([p], **options)


@pytest.mark.parametrize("options,word", [o for o in BAD_TYPES if "impl" not in o[0]])
def test_mlx_optimizers_refuse_bad_options_by_name(options, word):
    pytest.importorskip("mlx.core")
    from fastmuon.mlx import Muon

    with pytest.raises(ValueError, match=word):
        Muon(**options)


def test_mlx_takes_every_torch_option_or_refuses_it_by_name():
    mx = pytest.importorskip("mlx.core")
    torch = pytest.importorskip("torch")
    import fastmuon.mlx as fm
    import fastmuon.torch as ft

    with pytest.raises(ValueError, match="sphere.*fastmuon.torch only"):
        fm.Muon(sphere="project")
    with pytest.raises(ValueError, match="allow_nd"):
        fm.Muon(allow_nd=False)
    with pytest.raises(ValueError, match="torch only"):
        fm.Muon(impl="foreach")
    assert set(MLX_IMPLS) < set(IMPLS)
    # eps and ns_coefficients reach the orthogonalization in both frameworks alike
    rng = np.random.default_rng(11)
    w, g = rng.standard_normal((12, 20)), rng.standard_normal((12, 20))
    options = dict(ns_coefficients=(3.0, -3.2, 1.2), eps=0.5, ns_steps=3)
    out = {}
    for name, fw_options in (("default", {}), ("custom", options)):
        W = mx.array(w.astype(np.float32))
        new = fm.Muon(0.1, **fw_options).apply_gradients({"w": mx.array(g.astype(np.float32))}, {"w": W})["w"]
        p = torch.nn.Parameter(torch.tensor(w, dtype=torch.float32))
        p.grad = torch.tensor(g, dtype=torch.float32)
        ft.Muon([p], lr=0.1, ns_dtype=torch.float32, **fw_options).step()
        out[name] = (np.array(new), p.detach().numpy())
    np.testing.assert_allclose(out["custom"][0], out["custom"][1], rtol=0, atol=1e-5)
    assert np.abs(out["custom"][0] - out["default"][0]).max() > 1e-3  # the options changed the step


def test_explicit_impl_that_cannot_run_says_why():
    torch = pytest.importorskip("torch")
    from fastmuon.torch import Muon, NorMuon

    p = torch.nn.Parameter(torch.randn(8, 12, dtype=torch.bfloat16))
    p.grad = torch.randn(8, 12, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match='impl="foreach" cannot step.*bfloat16 weights'):
        Muon([p], impl="foreach").step()
    q = torch.nn.Parameter(torch.randn(8, 12))
    q.grad = torch.randn(8, 12)
    with pytest.raises(ValueError, match="impl=\"fused\" cannot step.*NorMuon's second moment"):
        NorMuon([q], impl="fused").step()
    routes = NorMuon([q]).explain()
    assert [(r.impl, r.kind) for r in routes] == [("foreach", "muon")]
    assert "not fused: NorMuon's second moment" in routes[0].why
    routes = NorMuon([q], sphere="project", weight_decay=0.0).explain()
    assert [(r.impl, r.kind) for r in routes] == [("per_parameter", "muon")] and "sphere=" in routes[0].why


def test_explain_changes_nothing():
    torch = pytest.importorskip("torch")
    from fastmuon.torch import Muon

    p = torch.nn.Parameter(torch.randn(8, 12))
    p.grad = torch.randn(8, 12)
    opt = Muon([p])
    before = p.detach().clone()
    opt.explain()
    assert not opt.state and torch.equal(p.detach(), before)


@pytest.mark.parametrize("framework", ["torch", "mlx"])
def test_eps_zero_is_refused_where_a_zero_matrix_would_divide_by_zero(framework):
    """orthogonalize(zeros, eps=0) gave NaN (a zero matrix must give zeros), and Muon(eps=0)
    turned every weight with an all-zero gradient into NaN, with skipped_steps 0."""
    if framework == "torch":
        torch = pytest.importorskip("torch")
        from fastmuon.torch import Muon, orthogonalize

        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            orthogonalize(torch.zeros(4, 6), eps=0)
        with pytest.raises(ValueError, match="eps"):
            Muon([torch.nn.Parameter(torch.zeros(4, 6))], eps=0.0)
        assert torch.equal(orthogonalize(torch.zeros(4, 6), eps=1e-30), torch.zeros(4, 6))
    else:
        mx = pytest.importorskip("mlx.core")
        from fastmuon.mlx import Muon, orthogonalize

        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            orthogonalize(mx.zeros((4, 6)), eps=0)
        with pytest.raises(ValueError, match="eps"):
            Muon(eps=0.0)


def test_sparse_input_gets_a_clear_type_error():
    torch = pytest.importorskip("torch")
    from fastmuon.torch import orthogonalize

    with pytest.raises(TypeError, match="G must be a dense \\(strided\\) tensor, got layout torch.sparse_coo"):
        orthogonalize(torch.eye(4).to_sparse())


BAD_ADAMW = [
    (dict(adamw_betas=(0.9,)), "adamw_betas"),
    (dict(adamw_betas=(0.9, 0.95, 0.99)), "adamw_betas"),
    (dict(adamw_betas=None), "adamw_betas"),
    (dict(adamw_betas=("a", "b")), "adamw_betas"),
    (dict(adamw_eps=None), "adamw_eps"),
    (dict(adamw_weight_decay=None), "adamw_weight_decay"),
    (dict(adamw_weight_decay="0.1"), "adamw_weight_decay"),
]


@pytest.mark.parametrize("options,word", BAD_ADAMW)
def test_adamw_options_of_the_wrong_type_are_named(options, word):
    """A raw unpacking or comparison error from deep inside once answered these."""
    torch = pytest.importorskip("torch")
    from fastmuon.torch import MuonWithAdamW

    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=word):
        MuonWithAdamW([{"params": [p], "use_muon": False}], **options)
    group = {k.removeprefix("adamw_"): v for k, v in options.items()}
    with pytest.raises(ValueError, match=rf"{word.removeprefix('adamw_')} \(param_groups\[0\]\)"):
        MuonWithAdamW([{"params": [p], "use_muon": False, **group}])
    mx = pytest.importorskip("mlx.core")
    import fastmuon.mlx as fm

    with pytest.raises(ValueError, match=word):
        fm.MuonWithAdamW(**options)


@pytest.mark.parametrize("impl", ["auto", "per_parameter"])
def test_a_gradient_that_is_its_weights_memory_is_named(impl):
    torch = pytest.importorskip("torch")
    from fastmuon.torch import Muon

    p = torch.nn.Parameter(torch.randn(4, 6))
    p.grad = p.data
    opt = Muon([{"params": [p], "param_names": ["block.w"]}], impl=impl)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="the gradient of block.w is its weight's own memory"):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_mlx_learning_rate_of_several_values_is_named():
    mx = pytest.importorskip("mlx.core")
    import fastmuon.mlx as fm

    with pytest.raises(ValueError, match=r"learning_rate must be .* got an array of shape \(2,\)"):
        fm.Muon(mx.array([0.1, 0.2]))
    fm.Muon(mx.array(0.1))  # a 1-element array is a learning rate
