"""The fused native Muon step (``_blas.muon_step``, which the torch optimizers take on the CPU):
bitwise the torch ops it replaces, whatever the threads; nothing written when a gradient is not
finite; clear errors naming the array at fault; and the optimizer keeps the torch passes for
parameters it cannot take in place."""

from __future__ import annotations

import numpy as np
import pytest
from support.native_helpers import plan_arg

torch = pytest.importorskip("torch")

SHAPES = [(1, 192, 64), (1, 64, 64), (3, 40, 24), (1, 7, 33), (2, 16, 130)]


def _torch_step(G, M, W, momentum, nesterov, lr, weight_decay, scale, method):
    """The same step with torch ops (the list-wide path's arithmetic, one parameter)."""
    from fastmuon.torch import orthogonalize
    from fastmuon.torch.functional import decoupled_update_lists_, muon_lookahead, muon_momentum_lists_

    muon_momentum_lists_([M], [G], momentum)
    U = muon_lookahead(G, M, momentum, nesterov).clone()
    O = orthogonalize(U, method=method, backend="native")
    decoupled_update_lists_([W], [O], lr=lr, weight_decay=weight_decay, scale=scale)


@pytest.mark.parametrize("method", ["polar_express", "gram"])
@pytest.mark.parametrize("nesterov,weight_decay,momentum", [(True, 0.0, 0.95), (False, 0.1, 0.95), (True, 0.1, 0.3)])
def test_muon_step_is_bitwise_the_torch_ops(blas_ext, method, nesterov, weight_decay, momentum):
    from fastmuon.torch.functional import muon_step_scalars

    gen = torch.Generator().manual_seed(0)
    lr = 0.02
    Gs = [torch.randn(s, generator=gen) for s in SHAPES]
    M0 = [torch.randn(s, generator=gen) for s in SHAPES]
    W0 = [torch.randn(s, generator=gen) for s in SHAPES]
    scales = [1.0 + 0.25 * i for i in range(len(SHAPES))]
    Ms, Ws = [M.clone() for M in M0], [W.clone() for W in W0]
    for G, M, W, scale in zip(Gs, Ms, Ws, scales):
        _torch_step(G, M, W, momentum, nesterov, lr, weight_decay, scale, method)
    hyper = [muon_step_scalars(momentum, nesterov, lr, weight_decay, scale) for scale in scales]
    for workers in (1, 2, 3):
        m, w = [M.clone() for M in M0], [W.clone() for W in W0]
        assert blas_ext.muon_step(Gs, m, w, SHAPES, hyper, plan=plan_arg(method), workers=workers) is True
        for name, got, want in (("momentum", m, Ms), ("weight", w, Ws)):
            for i, (a, b) in enumerate(zip(got, want)):
                assert torch.equal(a, b), f"{name} {i} (shape {SHAPES[i]}), workers={workers}"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_muon_step_writes_nothing_for_a_non_finite_gradient(blas_ext, bad):
    from fastmuon.torch.functional import muon_step_scalars

    gen = torch.Generator().manual_seed(1)
    Gs = [torch.randn(s, generator=gen) for s in SHAPES]
    Gs[-1][1, 3, 7] = bad
    Ms = [torch.randn(s, generator=gen) for s in SHAPES]
    Ws = [torch.randn(s, generator=gen) for s in SHAPES]
    before = [t.clone() for t in Ms + Ws]
    hyper = [muon_step_scalars(0.95, True, 0.02, 0.1, 1.0)] * len(SHAPES)
    assert blas_ext.muon_step(Gs, Ms, Ws, SHAPES, hyper, plan=plan_arg(), workers=2) is False
    for a, b in zip(Ms + Ws, before):
        assert torch.equal(a, b)


def test_muon_step_errors_name_the_array(blas_ext):
    hyper = [{"momentum_weight": 0.05, "lookahead_weight": 0.95, "nesterov": True, "decays": False, "decay": 1.0,
              "step": -0.02}] * 2
    views = [(1, 4, 6)] * 2
    G = [torch.ones(4, 6), torch.ones(4, 6)]
    M = [torch.zeros(4, 6), torch.zeros(4, 6)]
    W = [torch.zeros(4, 6), torch.zeros(4, 6)]
    with pytest.raises(TypeError, match=r"`grads\[1\]` must have dtype float32"):
        blas_ext.muon_step([G[0], G[1].double()], M, W, views, hyper, plan_arg())
    with pytest.raises(ValueError, match=r"`weights\[1\]` must be C-contiguous"):
        blas_ext.muon_step(G, M, [W[0], torch.zeros(6, 4).T], views, hyper, plan_arg())
    with pytest.raises(ValueError, match=r"`grads\[0\]` and momenta\[0\] must have the shape of weights\[0\]"):
        blas_ext.muon_step([torch.ones(4, 5), G[1]], M, W, views, hyper, plan_arg())
    with pytest.raises(ValueError, match=r"`views\[1\]` must be \(batch, rows, cols\) holding the 24 entries"):
        blas_ext.muon_step(G, M, W, [(1, 4, 6), (2, 4, 6)], hyper, plan_arg())
    with pytest.raises(ValueError, match=r"`weights\[0\]` must not overlap"):
        blas_ext.muon_step(G, M, [M[0], W[1]], views, hyper, plan_arg())
    with pytest.raises(ValueError, match=r"one entry per gradient"):
        blas_ext.muon_step(G, M, W, views, hyper[:1], plan_arg())
    read_only = np.zeros((4, 6), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"`momenta\[0\]` is read-only"):
        blas_ext.muon_step(G, [read_only, M[1]], W, views, hyper, plan_arg())
    for t in M + W:
        assert torch.equal(t, torch.zeros(4, 6))


def test_muon_step_errors_name_the_key(blas_ext):
    """``hyper[i]`` and ``plan`` are dicts read by key: a missing or unknown key, a value of the
    wrong type or a bad plan value is refused, naming the function and the key, before anything
    is written."""
    from fastmuon.torch.functional import muon_step_scalars

    good = muon_step_scalars(0.95, True, 0.02, 0.1, 1.0)
    assert list(good) == ["momentum_weight", "lookahead_weight", "nesterov", "decays", "decay", "step"]
    views = [(1, 4, 6)] * 2
    G = [torch.ones(4, 6), torch.ones(4, 6)]
    M = [torch.zeros(4, 6), torch.zeros(4, 6)]
    W = [torch.zeros(4, 6), torch.zeros(4, 6)]

    def step(hyper, plan=None):
        return blas_ext.muon_step(G, M, W, views, hyper, plan=plan_arg() if plan is None else plan)

    for key in good:
        with pytest.raises(ValueError, match=rf"muon_step\(\): `hyper\[1\]` has no key '{key}'"):
            step([good, {k: v for k, v in good.items() if k != key}])
    with pytest.raises(ValueError, match=r"muon_step\(\): `hyper\[0\]` has an unknown key 'precondition'"):
        step([{**good, "precondition": True}, good])
    with pytest.raises(TypeError, match=r"muon_step\(\): `hyper\[0\]` must be a dict with the keys "
                                        r"'momentum_weight', 'lookahead_weight', 'nesterov', 'decays', 'decay' and 'step'"):
        step([tuple(good.values()), good])
    with pytest.raises(TypeError, match=r"`hyper\[1\]\['nesterov'\]` must be a bool, got float"):
        step([good, {**good, "nesterov": 1.0}])
    with pytest.raises(TypeError, match=r"`hyper\[1\]\['step'\]` must be a float, got str"):
        step([good, {**good, "step": "-0.02"}])
    with pytest.raises(ValueError, match=r"muon_step\(\): `plan` has no key 'gram'"):
        step([good, good], {k: v for k, v in plan_arg().items() if k != "gram"})
    with pytest.raises(ValueError, match=r"muon_step\(\): `plan` has an unknown key 'precondition'"):
        step([good, good], plan_arg(precondition=True))
    with pytest.raises(ValueError, match=r"muon_step\(\): `plan\['norm_scale'\]` must be finite and positive"):
        step([good, good], plan_arg(norm_scale=0.0))
    for t in M + W:
        assert torch.equal(t, torch.zeros(4, 6))


def test_optimizer_keeps_the_torch_passes_for_a_strided_weight(blas_ext):
    """A weight that is not C-contiguous (here a transposed view) cannot be updated in place by
    the native step; its stack takes the torch passes (explain() says so), bitwise the same as
    the per-parameter step, while the contiguous ones take the fused native step."""
    from fastmuon.torch import Muon

    gen = torch.Generator().manual_seed(2)
    start = [torch.randn(24, 16, generator=gen), torch.randn(16, 24, generator=gen).T, torch.randn(8, 40, generator=gen)]
    grads = [torch.randn(w.shape, generator=gen) for w in start]

    def run(impl: str):
        params = [torch.nn.Parameter(w.clone() if w.is_contiguous() else w.clone().T.contiguous().T) for w in start]
        assert not params[1].is_contiguous()
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt = Muon(params, weight_decay=0.1, impl=impl)
        routes = opt.explain()
        opt.step()
        return params, opt, routes

    fast, fast_opt, routes = run("auto")
    # the (24, 16) stack holds the strided weight: torch passes
    assert [(r.stack_shape, r.impl) for r in routes] == [((2, 24, 16), "foreach"), ((2, 24, 16), "foreach"),
                                                         ((1, 8, 40), "fused")]
    assert "not C-contiguous" in routes[0].why
    slow, slow_opt, _ = run("per_parameter")
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
        assert torch.equal(fast_opt.state[a]["momentum_buffer"], slow_opt.state[b]["momentum_buffer"])
    with pytest.raises(ValueError, match='impl="fused" cannot step.*not C-contiguous'):
        run("fused")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_optimizer_keeps_the_torch_passes_for_other_dtypes(blas_ext, dtype):
    """The native step takes fp32 weights only; the others step bitwise as the per-parameter path
    does. (bf16 and fp16 weights keep the per-parameter path: torch's list-wide ops round their
    scalars to those dtypes, and the weight decay came out twice too strong.)"""
    from fastmuon.torch import Muon

    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(24, 16, generator=gen).to(dtype), torch.randn(8, 40, generator=gen).to(dtype)]
    grads = [torch.randn(w.shape, generator=gen).to(dtype) for w in start]

    def run(impl: str):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt = Muon(params, weight_decay=0.1, backend="native", impl=impl)
        taken = {r.impl for r in opt.explain()}
        opt.step()
        return params, taken

    (auto, taken), (per_parameter, _) = run("auto"), run("per_parameter")
    assert taken == ({"foreach"} if dtype == torch.float64 else {"per_parameter"})
    for a, b, w in zip(auto, per_parameter, start):
        assert a.dtype == dtype and torch.equal(a, b) and not torch.equal(a, w)