"""fastmuon.mlx's fused Muon step (``impl="fused"``, which ``"auto"`` takes for float32 matrix
parameters of plain Muon on the native kernels): bitwise the per-parameter MLX step it replaces,
whatever the options, shapes, layouts and threads; the same non-finite policy; a refusal naming
the parameter where it cannot run; and ``explain()`` saying which parameters take it."""

from __future__ import annotations

import numpy as np
import pytest
from support.native_helpers import plan_arg, require_native

mx = pytest.importorskip("mlx.core")

# 2-D wide and tall, square, a 3-D stack, a 4-D conv weight, and 256x512 (the Gram form of AOL
# under method="auto")
SHAPES = {"tall": (96, 32), "square": (32, 32), "stack": (2, 40, 24), "conv": (16, 3, 3, 4), "wide": (256, 512)}


@pytest.fixture(autouse=True)
def _native():
    require_native("mlx_ext")


def _train(impl, steps=3, seed=0, non_finite=None, dtype=None, **options):
    """Weights and state after ``steps`` steps of Muon from the same seeded weights and gradients
    (float32, or ``dtype``); ``non_finite`` (name, step, value) puts value into that gradient at
    that step."""
    from fastmuon.mlx import Muon

    rng = np.random.default_rng(seed)
    dtype = dtype or mx.float32
    params = {name: mx.array(0.1 * rng.standard_normal(shape).astype(np.float32)).astype(dtype)
              for name, shape in SHAPES.items()}
    opt = Muon(options.pop("lr", 0.02), impl=impl, **options)
    for step in range(steps):
        grads = {name: mx.array(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
                 for name, shape in SHAPES.items()}
        if non_finite is not None and non_finite[1] == step:
            name, _, value = non_finite
            grads[name] = mx.where(mx.arange(grads[name].size).reshape(grads[name].shape) == 5, value, grads[name])
        params = opt.apply_gradients(grads, params)
        mx.eval(params, opt.state)
    return params, opt


def _assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for name in SHAPES:
        assert mx.array_equal(pa[name], pb[name]).item(), f"weight {name}"
        assert mx.array_equal(oa.state[name]["momentum"], ob.state[name]["momentum"]).item(), f"momentum {name}"
        assert oa.state[name]["skipped_steps"].item() == ob.state[name]["skipped_steps"].item(), name


@pytest.mark.parametrize("options", [
    {},
    {"nesterov": False},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "cautious_weight_decay": True},
    {"adjust_lr": "match_rms_adamw", "momentum": 0.5},
    {"method": "polar_express"},
    {"method": "aol", "ns_steps": 4},
    {"method": "gram"},
    {"ns_coefficients": (3.4445, -4.7750, 2.0315)},
    {"lr": lambda step: 0.02 / (1.0 + step)},
], ids=lambda options: ",".join(f"{k}" for k in options) or "defaults")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_step_is_bitwise_the_per_parameter_step(options, dtype):
    dtype = getattr(mx, dtype)
    fused = _train("fused", dtype=dtype, **dict(options))
    _assert_same(fused, _train("per_parameter", dtype=dtype, **dict(options)))
    params, opt = fused
    assert all(params[name].dtype == dtype and opt.state[name]["momentum"].dtype == dtype for name in SHAPES)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_gradient_skips_its_parameter_alone(value, dtype):
    fused, per_parameter = (_train(impl, non_finite=("stack", 1, value), dtype=getattr(mx, dtype))
                            for impl in ("fused", "per_parameter"))
    _assert_same(fused, per_parameter)
    params, opt = fused
    assert {name: opt.state[name]["skipped_steps"].item() for name in SHAPES} == {
        name: int(name == "stack") for name in SHAPES}
    assert all(bool(mx.all(mx.isfinite(params[name])).item()) for name in SHAPES)


def test_a_non_finite_learning_rate_skips_every_parameter():
    from fastmuon.mlx import Muon

    opt = Muon(lambda step: mx.array(float("nan")), impl="fused")
    params = {"w": mx.ones((6, 10)), "v": mx.ones((4, 4))}
    out = opt.apply_gradients({"w": mx.ones((6, 10)), "v": mx.ones((4, 4))}, params)
    mx.eval(out, opt.state)
    for name in params:
        assert mx.array_equal(out[name], params[name]).item()
        assert opt.state[name]["skipped_steps"].item() == 1
        assert not mx.any(opt.state[name]["momentum"]).item()


def test_strided_gradients_and_weights_give_the_same_step():
    """Transposed and sliced arrays go in as they are; the primitive packs them."""
    from fastmuon.mlx import Muon

    rng = np.random.default_rng(3)
    weight = mx.array(rng.standard_normal((48, 80)).astype(np.float32)).T  # (80, 48), transposed
    grad = mx.array(rng.standard_normal((80, 96)).astype(np.float32))[:, ::2]  # (80, 48), every other column
    results = []
    for impl in ("fused", "per_parameter"):
        opt = Muon(0.05, impl=impl, weight_decay=0.1)
        out = opt.apply_gradients({"p": grad}, {"p": weight})
        mx.eval(out, opt.state)
        results.append((out["p"], opt.state["p"]["momentum"]))
    assert mx.array_equal(results[0][0], results[1][0]).item()
    assert mx.array_equal(results[0][1], results[1][1]).item()


def test_compiled_fused_step_equals_the_eager_one():
    from fastmuon.mlx import Muon

    rng = np.random.default_rng(4)
    shapes = {"a": (64, 96), "b": (96, 64)}
    grads = [{k: mx.array(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()} for _ in range(3)]
    start = {k: mx.array(0.1 * rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
    results = []
    for compiled in (False, True):
        opt = Muon(0.02, impl="fused", weight_decay=0.01)
        params = dict(start)
        opt.init(params)

        def step(grads, params):
            return opt.apply_gradients(grads, params)

        run = mx.compile(step, inputs=opt.state, outputs=opt.state) if compiled else step
        for g in grads:
            params = run(g, params)
            mx.eval(params, opt.state)
        results.append(params)
    for k in shapes:
        assert mx.array_equal(results[0][k], results[1][k]).item(), k


def test_fused_is_refused_by_name_where_it_cannot_run():
    from fastmuon.mlx import Muon, NorMuon

    grads = {"w": mx.ones((8, 12))}
    cases = [
        (NorMuon(0.02, impl="fused"), grads, {"w": mx.ones((8, 12))}, "NorMuon normalizes"),
        (Muon(0.02, impl="fused", backend="reference"), grads, {"w": mx.ones((8, 12))}, "reference backend"),
        (Muon(0.02, impl="fused"), {"w": mx.ones((8, 12), mx.float16)}, {"w": mx.ones((8, 12), mx.float16)},
         "all float32 or all bfloat16"),
        (Muon(0.02, impl="fused"), {"w": mx.ones((8, 12))}, {"w": mx.ones((8, 12), mx.bfloat16)},
         "all float32 or all bfloat16"),
        (Muon(0.02, impl="fused", ns_dtype=mx.bfloat16), grads, {"w": mx.ones((8, 12))}, "in bfloat16"),
        (Muon(0.02, impl="fused"), {"bias": mx.ones((12,))}, {"bias": mx.ones((12,))}, "0-D/1-D"),
    ]
    for opt, g, p, why in cases:
        name = next(iter(g))
        with pytest.raises(ValueError, match=rf"impl=\"fused\" cannot step '{name}'.*{why}"):
            opt.apply_gradients(g, p)


def test_explain_says_which_parameters_take_the_fused_step():
    from fastmuon.mlx import Muon, NorMuon

    grads = {"w": mx.zeros((256, 512)), "v": mx.zeros((32, 32)), "bias": mx.zeros((32,)),
             "half": mx.zeros((16, 16), mx.float16), "brain": mx.zeros((16, 16), mx.bfloat16)}
    routes = {route.name: route for route in Muon(0.02).explain(grads)}
    for name in ("w", "v", "brain"):
        assert (routes[name].impl, routes[name].backend, routes[name].call) == ("fused", "native", 0)
    assert routes["w"].method == "aol" and routes["v"].method == "polar_express"
    assert routes["w"].stack != routes["v"].stack
    assert routes["bias"].impl == "per_parameter" and "0-D/1-D" in routes["bias"].why
    assert routes["half"].impl == "per_parameter" and "float32" in routes["half"].why
    assert routes["half"].call == 1  # after the fused call
    assert all(route.impl == "per_parameter" for route in Muon(0.02, impl="per_parameter").explain(grads))
    normuon = NorMuon(0.02).explain(grads)
    assert all(route.impl == "per_parameter" and "NorMuon" in route.why for route in normuon)


def test_auto_takes_the_fused_step_and_leaves_the_others_to_mlx_ops():
    """A tree with a float32 matrix, a float16 matrix and a bias: "auto" steps each as
    "per_parameter" would (the fused part bitwise)."""
    from fastmuon.mlx import Muon

    rng = np.random.default_rng(5)
    params = {"w": mx.array(rng.standard_normal((24, 40)).astype(np.float32)),
              "h": mx.array(rng.standard_normal((16, 16)).astype(np.float32)).astype(mx.float16),
              "b": mx.array(rng.standard_normal(40).astype(np.float32))}
    grads = {k: mx.array(rng.standard_normal(v.shape).astype(np.float32)).astype(v.dtype) for k, v in params.items()}
    outs = []
    for impl in ("auto", "per_parameter"):
        opt = Muon(0.02, impl=impl)
        out = opt.apply_gradients(grads, params)
        mx.eval(out, opt.state)
        outs.append(out)
    for k in params:
        assert mx.array_equal(outs[0][k], outs[1][k]).item(), k


def test_the_primitive_names_the_argument_at_fault():
    ext = require_native("mlx_ext")
    plan = plan_arg("polar_express")
    lr, g, m, w, s = mx.array(0.02), mx.ones((4, 6)), mx.zeros((4, 6)), mx.ones((4, 6)), mx.array(0, mx.int32)
    good = dict(views=[(1, 4, 6)], scales=[1.0], plan=plan, momentum=0.95, nesterov=True, weight_decay=0.0,
                cautious=False)
    with pytest.raises(ValueError, match="one entry per gradient"):
        ext.muon_step(lr, [g], [m], [w, w], [s], **good)
    with pytest.raises(ValueError, match=r"momenta\[0\] and weights\[0\] must be all float32 or all bfloat16"):
        ext.muon_step(lr, [g], [m.astype(mx.bfloat16)], [w], [s], **good)
    with pytest.raises(ValueError, match=r"must be all float32 or all bfloat16, got float16"):
        ext.muon_step(lr, [g.astype(mx.float16)], [m.astype(mx.float16)], [w.astype(mx.float16)], [s], **good)
    with pytest.raises(ValueError, match="lr must be float32"):
        ext.muon_step(lr.astype(mx.bfloat16), [g], [m], [w], [s], **good)
    with pytest.raises(ValueError, match=r"grads\[0\] and momenta\[0\] must have the shape of weights\[0\]"):
        ext.muon_step(lr, [mx.ones((6, 4))], [m], [w], [s], **good)
    with pytest.raises(ValueError, match=r"views\[0\]"):
        ext.muon_step(lr, [g], [m], [w], [s], **{**good, "views": [(1, 4, 5)]})
    with pytest.raises(ValueError, match=r"skipped\[0\]"):
        ext.muon_step(lr, [g], [m], [w], [mx.array(0.0)], **good)
    with pytest.raises(ValueError, match="lr must hold one value"):
        ext.muon_step(mx.array([0.1, 0.2]), [g], [m], [w], [s], **good)
    outs = ext.muon_step(lr, [g], [m], [w], [s], **good)
    assert [o.shape for o in outs] == [(4, 6), (4, 6), ()] and outs[2].dtype == mx.int32


def test_explain_names_a_backend_that_cannot_run_here_without_raising():
    """explain() reports an explicit backend as it is; the step, not the plan, refuses it."""
    from fastmuon.mlx import Muon

    if mx.metal.is_available():
        pytest.skip("Metal runs here")
    opt = Muon(0.02, backend="metal")
    route = opt.explain({"w": mx.zeros((8, 12))})[0]
    assert route.impl == "per_parameter" and route.backend == "metal" and "metal backend" in route.why
    with pytest.raises(RuntimeError, match="Metal"):
        opt.apply_gradients({"w": mx.ones((8, 12))}, {"w": mx.ones((8, 12))})
