"""fastmuon.torch optimizers, step by step against independent float64 re-implementations
(numpy, tests/support/reference_optim.py) and against torch.optim.Muon.

Tolerances. The float64 runs differ from the numpy reference only by rounding, and the
orthogonalization is what amplifies it: ``spectral.rounding_allowance`` bounds one
orthogonalization's spectral-norm error (4 u A, A the first-order amplification of the
method's polynomials), so after t steps the weights may differ by at most
sum_t lr * scale * allowance (spectral norm, which bounds every entry), plus the rounding of the
elementwise update itself. NorMuon's row rescaling can stretch a relative error by the spread
of its row factors, kappa = sqrt(max s / min s), which the reference measures (factor 2 kappa).
"""

from __future__ import annotations

import importlib
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import fastmuon
from fastmuon import coefficients as coef
from fastmuon.native import blas_available
from fastmuon.plan import make_plan
from fastmuon.rules import matrix_view, normuon_state_shape
from fastmuon.torch import Muon, MuonWithAdamW, NorMuon, SignSGD, muon_param_groups
from support import reference_optim as reference
from support.bad_options import BAD_MUON_OPTIONS
from support.spectral import UNIT_ROUNDOFF, amplification, rounding_allowance

# the module (fastmuon.torch.orthogonalize, the attribute, is the function); the optimizers call
# its orthogonalize_stacks, which tests wrap to count matrices
ortho_module = importlib.import_module("fastmuon.torch.orthogonalize")
pipeline = importlib.import_module("fastmuon.torch.optim.pipeline")


def stacks_by_call(opt) -> dict:
    """{call: sorted stack shapes} of the next step, from ``explain()``."""
    calls: dict = {}
    for route in opt.explain():
        if route.kind == "muon":
            calls.setdefault(route.call, {})[route.stack] = route.stack_shape
    return {call: sorted(stacks.values()) for call, stacks in calls.items()}


def impls(opt) -> list:
    return [route.impl for route in opt.explain()]


def step_through(opt, params, grads) -> list:
    """Step ``opt`` once per entry of ``grads`` (a list of gradients per step, one per parameter,
    cloned in); the set of impls ``explain()`` gave before each step."""
    taken = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        taken.append(set(impls(opt)))
        opt.step()
    return taken

# ------------------------------------------------------------------------------------------
# Float64 reference (numpy)
# ------------------------------------------------------------------------------------------

MUON_HP = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, method="polar_express", ns_steps=5,
               adjust_lr="original", cautious_weight_decay=False, beta2=None)


def ref_orthogonalize(U, method, steps):
    return reference.orthogonalize(U, make_plan(method, steps, None))


def ref_muon_step(W, M, s, G, hp):
    """One Muon / NorMuon step on float64 arrays. Returns (W, M, s, info)."""
    W, M, s, _, info = reference.muon_step(W, M, s, G, hp, make_plan(hp["method"], hp["ns_steps"], None))
    return W, M, s, info


def ref_state(shape, beta2):
    s = None if beta2 is None else reference.normuon_state(reference.matrix_view(shape))
    return np.zeros(shape), s


def step_allowance(info, hp, compute, W_max):
    """Largest entrywise deviation one step may add (see the module docstring)."""
    plan = make_plan(hp["method"], hp["ns_steps"], None)
    m = min(info["rows"], info["cols"])
    ortho = rounding_allowance(plan.coefficients, 1.0 / plan.norm_scale, compute, compute, m)
    normuon = 2 * info["kappa"] if hp["beta2"] is not None else 1.0
    return hp["lr"] * info["scale"] * ortho * normuon + 4 * UNIT_ROUNDOFF[compute] * W_max


def gradients(rng, shapes, steps):
    return [[rng.standard_normal(shape) for shape in shapes] for _ in range(steps)]


SHAPES = [(16, 24), (16, 24), (24, 16), (3, 12, 20), (32, 2, 2, 2)]


def run_ours(optimizer_cls, shapes, W0, grads, dtype, **kwargs):
    params = [nn.Parameter(torch.tensor(w, dtype=dtype)) for w in W0]
    opt = optimizer_cls(params, allow_nd=True, **kwargs)  # the shapes include 3-D stacks and 4-D convs
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        history.append([p.detach().to(torch.float64).numpy().copy() for p in params])
    return params, opt, history


@pytest.mark.parametrize(
    "hp",
    [
        dict(),
        dict(method="newton_schulz", nesterov=False, weight_decay=0.1),
        dict(method="gram", adjust_lr="match_rms_adamw", weight_decay=0.05, cautious_weight_decay=True),
        dict(beta2=0.95),
        dict(beta2=0.9, method="newton_schulz", momentum=0.9, cautious_weight_decay=True, weight_decay=0.1,
             adjust_lr="match_rms_adamw"),
    ],
    ids=["default", "ns-plain-momentum-wd", "gram-rms-cautious", "normuon", "normuon-ns-cautious"],
)
def test_float64_steps_match_reference(hp, rng):
    hp = {**MUON_HP, "lr": 0.05, **hp}
    steps = 5
    W0 = [rng.standard_normal(shape) * 0.2 for shape in SHAPES]
    grads = gradients(rng, SHAPES, steps)
    cls = Muon if hp["beta2"] is None else NorMuon
    kwargs = {k: v for k, v in hp.items() if k != "beta2" or v is not None}
    params, opt, history = run_ours(cls, SHAPES, W0, grads, torch.float64, ns_dtype=torch.float64, **kwargs)

    ref = [(w, *ref_state(w.shape, hp["beta2"])) for w in W0]
    allowance = [0.0] * len(SHAPES)
    for t in range(steps):
        for i, (W, M, s) in enumerate(ref):
            W, M, s, info = ref_muon_step(W, M, s, grads[t][i], hp)
            ref[i] = (W, M, s)
            allowance[i] += step_allowance(info, hp, "float64", np.abs(W).max())
            deviation = np.abs(history[t][i] - W).max()
            assert deviation <= allowance[i], f"step {t} param {i}: {deviation:.3e} > {allowance[i]:.3e}"
    for p, (W, M, s) in zip(params, ref):
        state = opt.state[p]
        np.testing.assert_allclose(state["momentum_buffer"].numpy(), M, rtol=0, atol=1e-14)
        if s is not None:
            np.testing.assert_allclose(state["second_moment"].numpy(), s, rtol=1e-9, atol=0)
        assert state["skipped_steps"].item() == 0


def test_float32_default_matches_reference(rng):
    """The default fp32 run (Polar Express, native backend where built) within the fp32
    allowance; a run with Newton-Schulz's coefficients would be far outside it."""
    hp = dict(MUON_HP)
    steps = 4
    W0 = [np.float32(rng.standard_normal(shape) * 0.2).astype(np.float64) for shape in SHAPES]
    grads = [[np.float32(g).astype(np.float64) for g in gs] for gs in gradients(rng, SHAPES, steps)]
    _, _, history = run_ours(Muon, SHAPES, W0, grads, torch.float32)
    _, _, history_ns = run_ours(Muon, SHAPES, W0, grads, torch.float32, method="newton_schulz")
    ref = [(w, *ref_state(w.shape, None)) for w in W0]
    allowance = [0.0] * len(SHAPES)
    for t in range(steps):
        for i, (W, M, s) in enumerate(ref):
            W, M, s, info = ref_muon_step(W, M, s, grads[t][i], hp)
            ref[i] = (W, M, s)
            # fp32 momentum perturbs the input by a few u: a second allowance covers it.
            allowance[i] += 2 * step_allowance(info, hp, "float32", np.abs(W).max())
            assert np.abs(history[t][i] - W).max() <= allowance[i]
    assert max(np.abs(history_ns[-1][i] - ref[i][0]).max() - allowance[i] for i in range(len(SHAPES))) > 0


# ------------------------------------------------------------------------------------------
# torch.optim.Muon
# ------------------------------------------------------------------------------------------

TORCH_MUON_SHAPES = [(16, 24), (24, 16)]
TORCH_MUON_EPS = 1e-7  # torch.optim.Muon normalizes by max(||X||_F, eps); fastmuon by ||X||_F + eps


def torch_ns_float64(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz exactly as in torch/optim/_muon.py, but in float64."""
    a, b, c = ns_coefficients
    X = grad.to(torch.float64)
    if grad.size(0) > grad.size(1):
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(ns_steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    if grad.size(0) > grad.size(1):
        X = X.T
    return X


def run_torch_muon(W0, grads, dtype, **kwargs):
    params = [nn.Parameter(torch.tensor(w, dtype=dtype)) for w in W0]
    opt = torch.optim.Muon(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return [p.detach().to(torch.float64).numpy() for p in params]


@pytest.mark.parametrize("adjust_lr", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_rule_matches_torch_optim_muon_in_float64(monkeypatch, rng, adjust_lr, nesterov):
    """torch.optim.Muon with its Newton-Schulz run in float64 (its bf16 cast removed, nothing else
    changed) against fastmuon's Muon(method="newton_schulz") in float64: momentum, Nesterov,
    decoupled decay and the lr adjustment agree. The only other difference is the normalization
    eps, a relative change delta = 1e-7 / ||U||_F of the input, which the iteration amplifies by
    at most A (``spectral.amplification``); the allowance per step is lr scale (A delta + 4 u A)."""
    monkeypatch.setattr(torch.optim._muon, "_zeropower_via_newtonschulz", torch_ns_float64)
    hp = dict(MUON_HP, method="newton_schulz", weight_decay=0.1, nesterov=nesterov, adjust_lr=adjust_lr)
    steps = 5
    W0 = [rng.standard_normal(shape) * 0.2 for shape in TORCH_MUON_SHAPES]
    grads = gradients(rng, TORCH_MUON_SHAPES, steps)
    theirs = run_torch_muon(W0, grads, torch.float64, lr=hp["lr"], weight_decay=0.1, momentum=0.95,
                            nesterov=nesterov, adjust_lr_fn=adjust_lr)
    _, _, history = run_ours(Muon, TORCH_MUON_SHAPES, W0, grads, torch.float64, ns_dtype=torch.float64,
                             method="newton_schulz", weight_decay=0.1, nesterov=nesterov, adjust_lr=adjust_lr)
    A = amplification(make_plan("newton_schulz", 5, None).coefficients, 1.0)
    for i, W in enumerate(W0):
        M, allowance = np.zeros_like(W), 0.0
        for t in range(steps):
            W, M, _, info = ref_muon_step(W, M, None, grads[t][i], hp)
            delta = TORCH_MUON_EPS / info["U_norm"]
            allowance += hp["lr"] * info["scale"] * (A * delta + 4 * UNIT_ROUNDOFF["float64"] * A)
        deviation = np.abs(history[-1][i] - theirs[i]).max()
        assert deviation <= allowance, f"{deviation:.3e} > {allowance:.3e}"
        assert np.abs(theirs[i] - W0[i]).max() > 1000 * allowance  # the steps did move the weights


def with_adamw_groups(params, **options):
    """MuonWithAdamW over one Muon group of ``params``."""
    return MuonWithAdamW([{"params": params, "use_muon": True}], **options)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("cls", [Muon, NorMuon, with_adamw_groups])
def test_resumes_a_torch_optim_muon_checkpoint(rng, cls):
    """A state_dict saved by torch.optim.Muon loads into the drop-in, whose own defaults differ:
    the groups take torch's hyperparameters (adjust_lr_fn as adjust_lr, ns_coefficients as
    Newton-Schulz with them), the momenta carry over, and the next step equals that of the
    drop-in built with the same options from that momentum, bitwise."""
    shapes = [(8, 16), (24, 8)]
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes] for _ in range(3)]
    theirs = [nn.Parameter(w.clone()) for w in start]
    torch_opt = torch.optim.Muon(theirs, lr=0.03, weight_decay=0.05, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    for step_grads in grads[:2]:
        for p, g in zip(theirs, step_grads):
            p.grad = g.clone()
        torch_opt.step()
    saved = io.BytesIO()
    torch.save(torch_opt.state_dict(), saved)

    def resumed(load: bool):
        params = [nn.Parameter(p.detach().clone()) for p in theirs]
        if load:
            opt = cls(params)  # fastmuon's defaults: lr 0.02, no decay, Polar Express
            saved.seek(0)
            opt.load_state_dict(torch.load(saved))
        else:
            opt = cls(params, lr=0.03, weight_decay=0.05, momentum=0.9, adjust_lr="match_rms_adamw",
                      ns_coefficients=coef.JORDAN_NEWTON_SCHULZ, eps=TORCH_MUON_EPS)
            for p, q in zip(params, theirs):  # a first step's state, with torch's momentum
                opt.state[p]["momentum_buffer"] = torch_opt.state[q]["momentum_buffer"].clone()
                opt.state[p]["skipped_steps"] = torch.zeros((), dtype=torch.int64)
                if cls is NorMuon:
                    opt.state[p]["second_moment"] = torch.zeros(normuon_state_shape(*matrix_view(p.shape)))
        for p, g in zip(params, grads[2]):
            p.grad = g.clone()
        opt.step()
        return opt, params

    loaded, ours = resumed(True)
    group = loaded.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"], group["adjust_lr"], group["method"]) == \
        (0.03, 0.05, 0.9, "match_rms_adamw", "newton_schulz")
    built, expected = resumed(False)
    for p, q in zip(ours, expected):
        assert torch.equal(p, q)
        assert torch.equal(loaded.state[p]["momentum_buffer"], built.state[q]["momentum_buffer"])
        assert loaded.state[p]["skipped_steps"].item() == 0


def test_matches_torch_optim_muon_bf16(rng):
    """The real torch.optim.Muon (Newton-Schulz in bf16) against fastmuon's fp32 Muon.

    Per step the weights may move apart by lr scale ||O_torch - O_ours||_2, and O_torch's error
    is bf16 rounding in the iteration, which the first-order bound overstates (4 u A > 1 for
    bf16). So the budget is the bf16 iteration's own measured error on these very inputs:
    ||NS_torch(U_t) - NS_float64(U_t)||_2, doubled (its rounding on the slightly different U of
    torch's run differs), plus the fp32 allowance of ours. A rule error (Nesterov off) is
    checked to fall outside it."""
    hp = dict(MUON_HP, method="newton_schulz", weight_decay=0.1)
    steps = 3
    W0 = [np.float32(rng.standard_normal(shape) * 0.2).astype(np.float64) for shape in TORCH_MUON_SHAPES]
    grads = [[np.float32(g).astype(np.float64) for g in gs] for gs in gradients(rng, TORCH_MUON_SHAPES, steps)]
    theirs = run_torch_muon(W0, grads, torch.float32, lr=hp["lr"], weight_decay=0.1, momentum=0.95)
    _, _, ours = run_ours(Muon, TORCH_MUON_SHAPES, W0, grads, torch.float32, method="newton_schulz",
                          weight_decay=0.1)
    _, _, wrong = run_ours(Muon, TORCH_MUON_SHAPES, W0, grads, torch.float32, method="newton_schulz",
                           weight_decay=0.1, nesterov=False)
    plan = make_plan("newton_schulz", 5, None)
    for i, W in enumerate(W0):
        M, budget = np.zeros_like(W), 0.0
        for t in range(steps):
            M_next = 0.95 * M + 0.05 * grads[t][i]
            U = 0.05 * grads[t][i] + 0.95 * M_next
            O_bf16 = torch.optim._muon._zeropower_via_newtonschulz(
                torch.tensor(U, dtype=torch.float32), coef.JORDAN_NEWTON_SCHULZ, 5, TORCH_MUON_EPS
            ).double().numpy()
            bf16_error = np.linalg.norm(O_bf16 - ref_orthogonalize(U[None], "newton_schulz", 5)[0], ord=2)
            W, M, _, info = ref_muon_step(W, M, None, grads[t][i], hp)
            fp32 = rounding_allowance(plan.coefficients, 1.0, "float32", "float32", min(W.shape))
            budget += hp["lr"] * info["scale"] * (2 * bf16_error + fp32)
        deviation = np.linalg.norm(ours[-1][i] - theirs[i], ord=2)
        assert deviation <= budget, f"{deviation:.3e} > {budget:.3e}"
        assert budget < 0.2 * hp["lr"] * info["scale"] * steps  # the budget is well below the steps
        assert np.linalg.norm(wrong[-1][i] - theirs[i], ord=2) > budget


# ------------------------------------------------------------------------------------------
# Shapes, stacking, validation
# ------------------------------------------------------------------------------------------


def test_same_shape_matrices_are_stacked_into_one_call(rng):
    """On the CPU the stacks of every shape go in one orthogonalization call (explain() says so,
    and the call itself is wrapped to count them); the fused native step takes each parameter
    where it lies, all in one call."""
    calls = []
    real = ortho_module.orthogonalize_stacks

    def counting(stacks, **kwargs):
        calls.append([tuple(U.shape) for U in stacks])
        return real(stacks, **kwargs)

    shapes = [(16, 24), (24, 16), (16, 24), (4, 16, 24), (8, 3, 3, 3), (24, 16)]
    params = [nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=torch.float32)) for s in shapes]
    grads = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    reference_params = [nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(reference_params, grads):
        p.grad = g.clone()
    opt = Muon(reference_params, allow_nd=True, backend="reference")
    expected = sorted([(6, 16, 24), (2, 24, 16), (1, 8, 27)])
    assert stacks_by_call(opt) == {0: expected}
    assert {route.backend for route in opt.explain()} == {"reference"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ortho_module, "orthogonalize_stacks", counting)
        opt.step()
    assert len(calls) == 1 and sorted(calls[0]) == expected
    if blas_available():  # the fused native step: one call, each parameter where it lies
        opt = Muon(params, allow_nd=True, backend="native")
        routes = opt.explain()
        assert {(r.impl, r.backend, r.call) for r in routes} == {("fused", "native", 0)}
        assert "fp32 on the native kernels" in routes[0].why

    # Stacking changes nothing: each parameter stepped alone gives bitwise the same weights.
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    stacked = [nn.Parameter(w.clone()) for w in start]
    for p, g in zip(stacked, grads):
        p.grad = g.clone()
    Muon(stacked, allow_nd=True).step()
    for w, g, p in zip(start, grads, stacked):
        alone = nn.Parameter(w.clone())
        alone.grad = g.clone()
        Muon([alone], allow_nd=True).step()
        assert torch.equal(alone, p)


def test_3d_stack_is_each_matrix_on_its_own(rng):
    w = torch.tensor(rng.standard_normal((3, 12, 20)), dtype=torch.float64)
    g = torch.tensor(rng.standard_normal((3, 12, 20)), dtype=torch.float64)
    stack = nn.Parameter(w.clone())
    stack.grad = g.clone()
    Muon([stack], ns_dtype=torch.float64, allow_nd=True).step()
    for e in range(3):
        q = nn.Parameter(w[e].clone())
        q.grad = g[e].clone()
        Muon([q], ns_dtype=torch.float64).step()
        torch.testing.assert_close(stack[e], q, rtol=0, atol=1e-15)


def test_conv_scale_uses_the_flattened_shape(rng):
    """(32, 2, 2, 2) is orthogonalized as (32, 8): scale sqrt(32/8) = 2, not sqrt(32/2)."""
    hp = dict(MUON_HP, lr=0.05)
    w = rng.standard_normal((32, 2, 2, 2)) * 0.2
    g = rng.standard_normal((32, 2, 2, 2))
    _, _, history = run_ours(Muon, None, [w], [[g]], torch.float64, lr=0.05, ns_dtype=torch.float64)
    W, _, _, info = ref_muon_step(w, np.zeros_like(w), None, g, hp)
    assert info["scale"] == pytest.approx(2.0)
    np.testing.assert_allclose(history[0][0], W, rtol=0, atol=1e-12)
    wrong = w + (W - w) * (math.sqrt(32 / 2) / 2)  # the update with scale sqrt(out / in) = 4
    assert np.abs(history[0][0] - wrong).max() > 1e-3


def test_low_dimensional_params_are_rejected_by_name():
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5))
    with pytest.raises(ValueError, match=r"0\.bias.*AdamW"):
        Muon(model.named_parameters())
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\]"):
        Muon([nn.Parameter(torch.zeros(3, 3)), nn.Parameter(torch.zeros(()))])


@pytest.mark.parametrize(
    "kwargs, match",
    BAD_MUON_OPTIONS + [
        (dict(lr=-0.1), "lr"),
        (dict(lr=lambda step: 0.1), "lr"),
        (dict(ns_dtype=torch.int32), "ns_dtype"),
        (dict(method="gram", ns_dtype=torch.bfloat16), r"\['ns_dtype'\]=torch.bfloat16 with method=\"gram\""),
        (dict(sphere="exp"), "sphere"),
        (dict(sphere="project", weight_decay=0.1), "weight_decay"),
        (dict(distributed="yes"), "distributed"),
    ],
)
def test_muon_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([nn.Parameter(torch.zeros(4, 4))], **kwargs)


def test_normuon_and_adamw_groups_reject_bad_hyperparameters():
    p = nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="beta2"):
        NorMuon([p], beta2=1.0)
    with pytest.raises(ValueError, match="beta2"):
        NorMuon([p], beta2=None)
    with pytest.raises(ValueError, match="use_muon"):
        MuonWithAdamW([p])
    with pytest.raises(ValueError, match="betas"):
        MuonWithAdamW([{"params": [p], "use_muon": False, "betas": (0.9, 1.0)}])
    with pytest.raises(ValueError, match="eps"):
        MuonWithAdamW([{"params": [p], "use_muon": False}], adamw_eps=-1.0)
    with pytest.raises(ValueError, match="MuonWithAdamW"):
        Muon([{"params": [p], "use_muon": False}])
    with pytest.raises(ValueError, match="lr"):
        SignSGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        SignSGD([p], weight_decay=float("nan"))


def test_add_param_group_validates_and_keeps_per_group_options(rng):
    a, b = nn.Parameter(torch.ones(8, 8)), nn.Parameter(torch.ones(8, 8))
    opt = Muon([a], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [b], "momentum": 2.0})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r"size: torch.Size\(\[8\]\) \(param_groups\[1\]\['params'\]\[0\]\)"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(8))]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "lr": 0.01, "method": "newton_schulz"})
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[1]["momentum"] == 0.95
    g = torch.tensor(rng.standard_normal((8, 8)), dtype=torch.float32)
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    # Same gradient, lr 10x apart (and different methods): both moved, by different amounts.
    da, db = (1 - a).abs().max().item(), (1 - b).abs().max().item()
    assert da > 5 * db > 0


# ------------------------------------------------------------------------------------------
# Non-finite gradients
# ------------------------------------------------------------------------------------------


def snapshot(opt, params):
    return ([p.detach().clone() for p in params],
            {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params})


@pytest.mark.parametrize("cls, kwargs", [(Muon, {}), (NorMuon, dict(cautious_weight_decay=True, weight_decay=0.1))])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_skips_the_parameter(rng, cls, kwargs, bad):
    shapes = [(16, 24), (16, 24), (8, 3, 3, 3)]
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes] for _ in range(3)]
    poisoned = [g.clone() for g in grads[1]]
    poisoned[0][3, 5] = bad  # parameter 0 shares its stack with parameter 1
    poisoned[2][1, 0, 0, 0] = bad

    def run(sequence):
        params = [nn.Parameter(w.clone()) for w in start]
        opt = cls(params, allow_nd=True, **kwargs)
        snaps = []
        for step_grads in sequence:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            before = snapshot(opt, params) if opt.state else None
            opt.step()
            snaps.append((before, snapshot(opt, params)))
        return params, opt, snaps

    params, opt, snaps = run([grads[0], poisoned, grads[2]])
    (before_w, before_s), (after_w, after_s) = snaps[1]
    for i in (0, 2):  # skipped: bitwise unchanged, counted
        assert torch.equal(before_w[i], after_w[i])
        for key, value in before_s[id(params[i])].items():
            if key != "skipped_steps":
                assert torch.equal(value, after_s[id(params[i])][key]), key
    assert not torch.equal(before_w[1], after_w[1])  # its stack-mate still stepped
    assert [opt.state[p]["skipped_steps"].item() for p in params] == [1, 0, 1]
    assert all(torch.isfinite(p).all() for p in params)
    # Later steps proceed: the skipped parameters end exactly where a run that never saw the
    # poisoned step ends; the parameter sharing the stack matches a run without skips.
    ref_skip, _, _ = run([grads[0], grads[2]])
    ref_full, _, _ = run(grads)
    assert torch.equal(params[0], ref_skip[0]) and torch.equal(params[2], ref_skip[2])
    assert torch.equal(params[1], ref_full[1])


def test_non_finite_gradient_in_adamw_and_signsgd_groups(rng):
    emb = nn.Parameter(torch.tensor(rng.standard_normal((10, 4)), dtype=torch.float32))
    w = nn.Parameter(torch.tensor(rng.standard_normal((4, 4)), dtype=torch.float32))
    opt = MuonWithAdamW([{"params": [w], "use_muon": True}, {"params": [emb], "use_muon": False}])
    emb.grad = torch.ones_like(emb)
    w.grad = torch.ones_like(w)
    opt.step()
    state = {k: v.clone() for k, v in opt.state[emb].items()}
    before = emb.detach().clone()
    emb.grad = torch.full_like(emb, float("nan"))
    opt.step()
    assert torch.equal(emb, before)
    assert all(torch.equal(state[k], opt.state[emb][k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert opt.state[emb]["skipped_steps"].item() == 1

    sgd = SignSGD([emb])
    emb.grad = torch.zeros_like(emb)
    emb.grad[2, 1] = float("inf")
    sgd.step()
    assert torch.equal(emb, before)


def test_callers_gradient_is_not_modified(rng):
    p = nn.Parameter(torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32))
    g = torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32)
    g[0, 0] = float("nan")
    p.grad = g
    kept = g.clone()
    NorMuon([p]).step()
    assert p.grad is g and torch.allclose(g, kept, equal_nan=True)
    q = nn.Parameter(torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32))
    q.grad = torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32)
    kept = q.grad.clone()
    MuonWithAdamW([{"params": [q], "use_muon": False}]).step()
    assert torch.equal(q.grad, kept)


# ------------------------------------------------------------------------------------------
# What users expect of a torch optimizer
# ------------------------------------------------------------------------------------------


class SeedModel(nn.Module):
    """A small example model: embedding -> linear1 -> linear2 -> output."""

    def __init__(self, vocab=32, dim=16, hidden=24):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.output = nn.Linear(dim, vocab)

    def forward(self, x):
        return self.output(self.linear2(torch.relu(self.linear1(self.embedding(x)))))


def batches(n, seed=0, vocab=32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab, (4, 6), generator=g), torch.randint(0, vocab, (4, 6), generator=g))
            for _ in range(n)]


def loss_fn(model, x, y):
    return nn.functional.cross_entropy(model(x).reshape(-1, 32), y.reshape(-1))


def make_training(seed=0):
    torch.manual_seed(seed)
    model = SeedModel()
    opt = MuonWithAdamW(muon_param_groups(model), lr=0.02, weight_decay=0.01, cautious_weight_decay=True,
                        beta2=0.95, adamw_lr=1e-3, adamw_weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: fastmuon.warmup_cosine(s, base_lr=1.0, warmup_steps=2, total_steps=8))
    return model, opt, sched


def train(model, opt, sched, data):
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        opt.step()
        sched.step()


def test_seed_example_routing():
    groups = muon_param_groups(SeedModel())
    by_kind = {g["use_muon"]: g["param_names"] for g in groups}
    assert by_kind[True] == ["linear1.weight", "linear2.weight"]
    assert by_kind[False] == ["embedding.weight", "linear1.bias", "linear2.bias", "output.weight", "output.bias"]


def test_routing_tied_weights_first_layer_norms_and_options():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.wte = nn.Embedding(20, 8)
            self.block = nn.Linear(8, 8, bias=False)
            self.norm = nn.LayerNorm(8)
            self.gain = nn.Parameter(torch.ones(()))
            self.decoder = nn.Linear(8, 20, bias=False)
            self.decoder.weight = self.wte.weight  # tied
            self.frozen = nn.Linear(8, 8, bias=False)
            self.frozen.weight.requires_grad_(False)

    model = Tied()
    groups = muon_param_groups(model, muon_options={"lr": 0.05}, adamw_options={"lr": 1e-3})
    muon, adamw = groups
    assert muon["use_muon"] and muon["lr"] == 0.05 and adamw["lr"] == 1e-3
    assert muon["param_names"] == ["stem.weight", "block.weight"]
    # named_parameters order: the root's own parameters first
    assert adamw["param_names"] == ["gain", "stem.bias", "wte.weight", "norm.weight", "norm.bias"]
    assert sum(p is model.wte.weight for g in groups for p in g["params"]) == 1
    first = {g["use_muon"]: g["param_names"] for g in muon_param_groups(model, exclude_first=True)}
    assert first[True] == ["block.weight"] and "stem.weight" in first[False]
    opt = MuonWithAdamW(groups)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 1e-3]
    assert opt.param_groups[1]["betas"] == (0.9, 0.95)
    # Muon's options stay out of AdamW groups; their momentum is their own beta1, not Muon's 0.95
    assert opt.param_groups[1]["momentum"] == 0.9 and "ns_steps" not in opt.param_groups[1]


def test_resume_is_bit_identical():
    data = batches(8)
    model, opt, sched = make_training()
    train(model, opt, sched, data)

    model2, opt2, sched2 = make_training()
    train(model2, opt2, sched2, data[:4])
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    model3, opt3, sched3 = make_training(seed=123)  # different init, all of it overwritten
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    train(model3, opt3, sched3, data[4:])
    for (name, a), b in zip(model.named_parameters(), model3.parameters()):
        assert torch.equal(a, b), name
    assert opt3.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_lr_scheduler_drives_the_step(rng):
    w0 = torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32)
    g = torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32)
    p = nn.Parameter(w0.clone())
    opt = Muon([p], lr=0.1, momentum=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: fastmuon.warmup_cosine(s, base_lr=1.0, warmup_steps=4, total_steps=10))
    assert opt.param_groups[0]["lr"] == 0.0
    opt.step()  # no gradients yet: nothing happens
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    p.grad = g
    opt.step()
    q = nn.Parameter(w0.clone())
    q.grad = g
    Muon([q], lr=0.025, momentum=0.0).step()
    assert torch.equal(p, q)


def test_closure_zero_grad_and_params_without_grads(rng):
    model = SeedModel()
    opt = MuonWithAdamW(muon_param_groups(model))
    x, y = batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n != "embedding.weight")
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    # Params without grads are skipped: nothing moves, no state is created for new ones.
    extra = nn.Parameter(torch.ones(6, 6))
    opt.add_param_group({"params": [extra], "param_names": ["extra"], "use_muon": True})
    now = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    assert all(torch.equal(now[n], p) for n, p in model.named_parameters())
    assert torch.equal(extra, torch.ones(6, 6)) and extra not in opt.state


def test_grad_scaler(rng):
    """Unscaling by a power of two is exact, so a GradScaler run is bitwise the plain run; a step
    with an overflow is skipped by the scaler."""
    data = batches(3)

    def run(use_scaler):
        torch.manual_seed(0)
        model = SeedModel()
        opt = MuonWithAdamW(muon_param_groups(model))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=use_scaler)
        for x, y in data:
            opt.zero_grad()
            scaler.scale(loss_fn(model, x, y)).backward()
            scaler.step(opt)
            scaler.update()
        return model, opt, scaler

    plain, _, _ = run(False)
    scaled, opt, scaler = run(True)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        assert torch.equal(a, b)
    before = [p.detach().clone() for p in scaled.parameters()]
    x, y = data[0]
    opt.zero_grad()
    scaler.scale(loss_fn(scaled, x, y) * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 2.0**10
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.parameters()))


# ------------------------------------------------------------------------------------------
# MuonWithAdamW's AdamW part, SignSGD, sphere
# ------------------------------------------------------------------------------------------


def test_adamw_groups_match_reference_and_torch_adamw(rng):
    shape, steps = (6, 5), 5
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.99), 1e-8, 0.1
    w0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(steps)]
    p64 = nn.Parameter(torch.tensor(w0))
    opt = MuonWithAdamW([{"params": [p64], "use_muon": False}], adamw_lr=lr, adamw_betas=(b1, b2),
                        adamw_eps=eps, adamw_weight_decay=wd)
    p32 = nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    torch_adamw = torch.optim.AdamW([p32], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    q32 = nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    ours32 = MuonWithAdamW([{"params": [q32], "use_muon": False, "lr": lr, "betas": (b1, b2), "eps": eps,
                             "weight_decay": wd}])
    W, m, v = w0.copy(), np.zeros(shape), np.zeros(shape)
    for t, g in enumerate(grads, start=1):
        for p in (p64, p32, q32):
            p.grad = torch.tensor(g, dtype=p.dtype)
        opt.step(), torch_adamw.step(), ours32.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        W = W * (1 - lr * wd) - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        # float64 weights: state and bias corrections in float64 too.
        np.testing.assert_allclose(p64.detach().numpy(), W, rtol=0, atol=1e-13)
    # fp32: each step moves each entry by at most about lr, rounded to fp32 a few times.
    np.testing.assert_allclose(q32.detach().numpy(), p32.detach().numpy(), rtol=0, atol=steps * 8 * 2.0**-24)


def test_muon_part_of_muon_with_adamw_is_muon(rng):
    w0 = torch.tensor(rng.standard_normal((12, 16)), dtype=torch.float32)
    grads = [torch.tensor(rng.standard_normal((12, 16)), dtype=torch.float32) for _ in range(3)]
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    bias = nn.Parameter(torch.zeros(16))
    opt_a = NorMuon([a], weight_decay=0.1, cautious_weight_decay=True)
    opt_b = MuonWithAdamW([{"params": [b], "use_muon": True}, {"params": [bias], "use_muon": False}],
                          beta2=0.95, weight_decay=0.1, cautious_weight_decay=True)
    for g in grads:
        a.grad, b.grad, bias.grad = g.clone(), g.clone(), torch.ones(16)
        opt_a.step(), opt_b.step()
    assert torch.equal(a, b)


def test_signsgd_seed_vector():
    p = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    p.grad = torch.tensor([0.3, -5.0], dtype=torch.float64)
    SignSGD([p], lr=0.1, weight_decay=0.01).step()
    np.testing.assert_allclose(p.detach().numpy(), [0.899, 2.098], rtol=0, atol=1e-15)


def test_signsgd_sparse_updates_only_touched_rows(rng):
    torch.manual_seed(0)
    dense_emb = nn.Embedding(12, 4)
    sparse_emb = nn.Embedding(12, 4, sparse=True)
    sparse_emb.weight.data.copy_(dense_emb.weight.data)
    w0 = dense_emb.weight.detach().clone().numpy().astype(np.float64)
    ids = torch.tensor([[1, 3, 3], [7, 1, 10]])
    touched = sorted(set(ids.flatten().tolist()))
    for emb in (dense_emb, sparse_emb):
        emb(ids).pow(2).sum().backward()
    assert sparse_emb.weight.grad.is_sparse
    full = nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    full.grad = dense_emb.weight.grad.clone()
    SignSGD([dense_emb.weight], lr=0.1, weight_decay=0.1, sparse=True).step()
    SignSGD([sparse_emb.weight], lr=0.1, weight_decay=0.1, sparse=True).step()
    SignSGD([full], lr=0.1, weight_decay=0.1, sparse=False).step()
    expected = w0.copy()
    g = full.grad.double().numpy()
    expected[touched] = w0[touched] * (1 - 0.01) - 0.1 * np.sign(g[touched])
    for got in (dense_emb.weight, sparse_emb.weight):
        np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=0, atol=2e-7)
        untouched = [r for r in range(12) if r not in touched]
        assert torch.equal(got[untouched], torch.tensor(w0[untouched], dtype=torch.float32))
    # sparse=False decays every row.
    np.testing.assert_allclose(full.detach().double().numpy()[0], w0[0] * 0.99, rtol=0, atol=2e-7)


@pytest.mark.parametrize("mode", ["project", "geodesic"])
def test_sphere_modes_match_reference_and_stay_on_the_sphere(rng, mode):
    shape, lr, steps = (12, 20), 0.1, 4
    w0 = rng.standard_normal(shape)  # rows not yet unit: the first step puts them on the sphere
    grads = gradients(rng, [shape], steps)
    _, _, history = run_ours(Muon, None, [w0], grads, torch.float64, lr=lr, sphere=mode, ns_dtype=torch.float64)
    _, _, h32 = run_ours(Muon, None, [w0], grads, torch.float32, lr=lr, sphere=mode)
    W, M = w0.copy(), np.zeros(shape)
    for t in range(steps):
        M = 0.95 * M + 0.05 * grads[t][0]
        U = 0.05 * grads[t][0] + 0.95 * M
        D = lr * 1.0 * ref_orthogonalize(U[None], "polar_express", 5)[0]  # scale 1 for 12 x 20
        if mode == "project":
            W = W - D
            W = W / np.linalg.norm(W, axis=-1, keepdims=True)
        else:
            w = W / np.linalg.norm(W, axis=-1, keepdims=True)
            D_t = D - np.sum(D * w, axis=-1, keepdims=True) * w
            theta = np.linalg.norm(D_t, axis=-1, keepdims=True)
            W = w * np.cos(theta) - D_t / theta * np.sin(theta)
        np.testing.assert_allclose(history[t][0], W, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(history[t][0], axis=-1), 1.0, rtol=0, atol=1e-14)
        np.testing.assert_allclose(np.linalg.norm(h32[t][0], axis=-1), 1.0, rtol=0, atol=1e-6)
    assert np.abs(W - w0).max() > 0.05  # it moved


def test_geodesic_and_projection_agree_to_first_order(rng):
    w0 = rng.standard_normal((8, 16))
    w0 /= np.linalg.norm(w0, axis=-1, keepdims=True)
    g = rng.standard_normal((8, 16))
    out = {}
    for mode in ("project", "geodesic"):
        _, _, h = run_ours(Muon, None, [w0], [[g]], torch.float64, lr=1e-3, sphere=mode, ns_dtype=torch.float64)
        out[mode] = h[0][0]
    step = np.abs(out["project"] - w0).max()
    assert np.abs(out["project"] - out["geodesic"]).max() < 10 * step**2


def test_big_stacks_are_orthogonalized_in_bounded_chunks(monkeypatch, rng):
    """A stack larger than STACK_BYTES is split into several calls (bounded workspace), with
    bitwise the same weights and state as one call for the whole stack."""
    shapes = [(16, 24)] * 5 + [(24, 16)] * 3
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes] for _ in range(2)]

    def run(stack_bytes):
        monkeypatch.setattr(pipeline, "STACK_BYTES", stack_bytes)
        calls = []
        real = ortho_module.orthogonalize_stacks
        monkeypatch.setattr(ortho_module, "orthogonalize_stacks",
                            lambda stacks, **kw: calls.extend(U.shape[0] for U in stacks) or real(stacks, **kw))
        params = [nn.Parameter(w.clone()) for w in start]
        opt = NorMuon(params, weight_decay=0.1)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            planned = stacks_by_call(opt)
            opt.step()
        monkeypatch.setattr(ortho_module, "orthogonalize_stacks", real)
        return params, opt, calls, planned

    whole, whole_opt, whole_calls, whole_plan = run(2**30)
    chunked, chunked_opt, chunked_calls, chunked_plan = run(2 * 16 * 24 * 4)  # two fp32 matrices a chunk
    assert whole_plan == {0: [(3, 24, 16), (5, 16, 24)]}
    assert sorted(s for stacks in chunked_plan.values() for s in stacks) == sorted(
        [(2, 16, 24), (2, 16, 24), (1, 16, 24), (2, 24, 16), (1, 24, 16)])
    assert sorted(whole_calls) == [3, 3, 5, 5]
    assert sorted(chunked_calls) == [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)
        for key in ("momentum_buffer", "second_moment"):
            assert torch.equal(whole_opt.state[a][key], chunked_opt.state[b][key])


# ------------------------------------------------------------------------------------------
# torch.optim.Muon's signature
# ------------------------------------------------------------------------------------------


def test_positional_arguments_are_torch_optim_muons(rng):
    """Muon(params, lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
    adjust_lr_fn): the same names, order and meanings as torch.optim.Muon."""
    import inspect

    ours = list(inspect.signature(Muon.__init__).parameters)[:10]
    theirs = list(inspect.signature(torch.optim.Muon.__init__).parameters)
    assert ours == theirs
    p = nn.Parameter(torch.zeros(4, 6))
    opt = Muon([p], 0.01, 0.2, 0.9, False, (3.0, -3.2, 1.2), 1e-5, 3, "match_rms_adamw")
    g = opt.param_groups[0]
    assert (g["lr"], g["weight_decay"], g["momentum"], g["nesterov"]) == (0.01, 0.2, 0.9, False)
    assert (g["ns_coefficients"], g["eps"], g["ns_steps"], g["adjust_lr"]) == ((3.0, -3.2, 1.2), 1e-5, 3, "match_rms_adamw")
    assert g["method"] == "newton_schulz"


def test_ns_coefficients_and_eps_are_the_iteration_run(monkeypatch, rng):
    """Given ns_coefficients, every step uses them, normalized with eps; matches the float64
    reference iteration with those coefficients."""
    coeffs, eps, steps = (3.4445, -4.7750, 2.0315), 1e-3, 4
    W0, G = rng.standard_normal((12, 20)) * 0.1, rng.standard_normal((12, 20)) * 1e-3  # a small norm: eps shows
    p = nn.Parameter(torch.tensor(W0))
    p.grad = torch.tensor(G)
    Muon([p], lr=0.1, ns_coefficients=coeffs, eps=eps, ns_steps=steps, ns_dtype=torch.float64,
         nesterov=False).step()
    plan = make_plan("newton_schulz", steps, [coeffs] * steps, eps)
    O = reference.orthogonalize((0.05 * G)[None], plan)[0]
    np.testing.assert_allclose(p.detach().numpy(), W0 - 0.1 * O, rtol=0, atol=1e-13)
    default_eps = make_plan("newton_schulz", steps, [coeffs] * steps)
    assert np.abs(reference.orthogonalize((0.05 * G)[None], default_eps)[0] - O).max() > 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(ns_coefficients=(1.0, 2.0)), "coefficient"),
    (dict(ns_coefficients=(3.0, -3.2, 1.2), method="gram"), "ns_coefficients"),
    (dict(eps=-1.0), "eps"),
    (dict(adjust_lr_fn="spectral"), "adjust_lr"),
    (dict(adjust_lr_fn="original", adjust_lr="match_rms_adamw"), "disagree"),
    (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
])
def test_torch_muon_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Muon([nn.Parameter(torch.zeros(4, 4))], **kwargs)


def test_tensor_lr_equals_float_lr_and_follows_in_place_changes(rng):
    W0 = torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32)
    grads = [torch.tensor(rng.standard_normal((8, 12)), dtype=torch.float32) for _ in range(3)]
    runs = {}
    for name, lr in (("float", 0.02), ("tensor", torch.tensor(0.02))):
        p = nn.Parameter(W0.clone())
        opt = Muon([p], lr=lr, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        for g in grads:
            p.grad = g.clone()
            opt.step()
            sched.step()
        runs[name] = p.detach()
    torch.testing.assert_close(runs["tensor"], runs["float"], rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_skipped_steps_stays_an_integer_through_load_state_dict(dtype):
    """torch casts state tensors to the parameter's dtype on load; the counter must not follow
    (in bf16 it would stop counting at 256)."""
    p = nn.Parameter(torch.zeros(4, 4, dtype=dtype))
    opt = Muon([p], ns_dtype=torch.float32)
    p.grad = torch.full((4, 4), float("nan"), dtype=dtype)
    opt.step()
    opt.state[p]["skipped_steps"].fill_(300)
    saved = opt.state_dict()
    fresh = Muon([p], ns_dtype=torch.float32)
    fresh.load_state_dict(saved)
    counter = fresh.state[p]["skipped_steps"]
    assert counter.dtype == torch.int64 and counter.item() == 300
    assert saved["state"][0]["skipped_steps"].dtype == torch.int64  # the caller's dict is untouched
    fresh.step()  # a NaN gradient again
    assert fresh.state[p]["skipped_steps"].item() == 301


def test_an_empty_parameter_leaves_the_others_stepping(rng):
    empty = nn.Parameter(torch.zeros(0, 16))
    w = nn.Parameter(torch.tensor(rng.standard_normal((4, 6)), dtype=torch.float32))
    before = w.detach().clone()
    empty.grad, w.grad = torch.zeros(0, 16), torch.ones(4, 6)
    opt = Muon([empty, w])
    opt.step()
    assert empty.shape == (0, 16) and not torch.equal(w, before)
    assert opt.state[empty]["skipped_steps"].item() == 0


def test_one_cycle_lr_cycles_muon_momentum_and_adamw_beta1(rng):
    model = SeedModel()
    opt = MuonWithAdamW(muon_param_groups(model))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10, base_momentum=0.85,
                                                max_momentum=0.95)
    assert all(g["momentum"] == 0.95 for g in opt.param_groups)
    x, y = batches(1)[0]
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
        sched.step()
    momenta = {g["use_muon"]: g["momentum"] for g in opt.param_groups}
    assert 0.85 < momenta[True] < 0.95 and momenta[True] == momenta[False]
    adamw = next(g for g in opt.param_groups if not g["use_muon"])
    assert adamw["betas"] == (0.9, 0.95)  # beta2 kept; beta1 is the cycled momentum
    with pytest.raises(ValueError, match="betas"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": False, "momentum": 1.0}])


class Conv1D(nn.Module):
    """Hugging Face transformers' GPT-2 layer, as it stores its weight: (in, out), y = x W + b."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_transposed_layouts_get_the_scale_of_their_true_shape(rng):
    """A Conv1D weight (in=16, out=64) stepped by MuonWithAdamW moves exactly as the equivalent
    nn.Linear weight (out=64, in=16) transposed: scale sqrt(64 / 16) = 2, not 1."""
    torch.manual_seed(0)
    conv, linear = Conv1D(64, 16), nn.Linear(16, 64)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
    start = conv.weight.detach().clone()
    G = torch.tensor(rng.standard_normal((16, 64)), dtype=torch.float32)
    groups = {name: muon_param_groups(m) for name, m in (("conv", conv), ("linear", linear))}
    assert groups["conv"][0]["transposed"] is True and "transposed" not in groups["linear"][0]
    opts = {name: MuonWithAdamW(g, lr=0.1) for name, g in groups.items()}
    conv.weight.grad, linear.weight.grad = G.clone(), G.T.clone()
    for opt in opts.values():
        opt.step()
    torch.testing.assert_close(conv.weight.detach(), linear.weight.detach().T, rtol=0, atol=1e-6)
    # with the switch off, the scale reads (16, 64): 1 instead of 2
    off = Conv1D(64, 16)
    with torch.no_grad():
        off.weight.copy_(start)
    off.weight.grad = G.clone()
    MuonWithAdamW(muon_param_groups(off, transposed_modules=()), lr=0.1).step()
    moved_off, moved_on = (off.weight - start).norm(), (conv.weight.detach() - start).norm()
    assert moved_on > 1.9 * moved_off


def test_group_ns_coefficients_mean_newton_schulz_as_in_the_constructor():
    """torch's optimizer tests pass ns_coefficients inside a param group."""
    a, b = nn.Parameter(torch.zeros(4, 6)), nn.Parameter(torch.zeros(6, 4))
    opt = Muon([{"params": [a], "ns_coefficients": [3.4, -4.7, 2.0]}, {"params": [b]}])
    assert opt.param_groups[0]["method"] == "newton_schulz" and opt.param_groups[0]["ns_coefficients"] == (3.4, -4.7, 2.0)
    assert opt.param_groups[1]["method"] == "auto" and opt.param_groups[1]["ns_coefficients"] is None


def test_a_bad_tensor_lr_is_named_before_params_are_read():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        Muon(None, lr=torch.tensor([0.1, 0.2]))


def test_torch_optim_muons_error_cases():
    """PyTorch's own error inputs for Muon (common_optimizers.optim_error_inputs_func_muon): a
    3-D weight raises ValueError at construction with torch's wording, an unknown adjust_lr_fn
    is named, and a complex weight raises RuntimeError at step, before anything changes. With
    allow_nd (or through muon_param_groups) the 3-D weight is accepted."""
    non_2d = nn.Parameter(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters.*allow_nd"):
        Muon([non_2d])
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        NorMuon([non_2d])
    with pytest.raises(ValueError, match="Adjust learning rate function arbitrary is not supported"):
        Muon([nn.Parameter(torch.rand(2, 3))], adjust_lr_fn="arbitrary")
    non_2d.grad = torch.rand_like(non_2d)
    Muon([non_2d], allow_nd=True).step()
    groups = muon_param_groups(nn.Conv2d(3, 4, 3, bias=False))
    assert groups[0]["allow_nd"] is True
    MuonWithAdamW(groups)  # the routed conv weight is accepted

    complex_param = nn.Parameter(torch.rand(2, 3, dtype=torch.complex64))
    complex_param.grad = torch.rand_like(complex_param)
    before = complex_param.detach().clone()
    opt = Muon([complex_param])
    with pytest.raises(RuntimeError, match=r"Muon does not support complex parameters.*\[0\]"):
        opt.step()
    assert torch.equal(complex_param.detach(), before) and not opt.state


@pytest.mark.parametrize("options", [dict(), dict(nesterov=False, weight_decay=0.1), dict(backend="reference"),
                                     dict(ns_dtype=torch.bfloat16, adjust_lr="match_rms_adamw", weight_decay=0.05)])
def test_few_passes_step_equals_the_per_parameter_step(rng, options):
    """On the CPU, chunks whose gradients are all finite take the list-wide step ("fused" on the
    native kernels, one piece per parameter, else "foreach", stacked), all shapes in one batch;
    weights and momenta are bitwise those of impl="per_parameter", and a batch holding a NaN
    leaves it (the NaN parameter is skipped, the others step)."""
    shapes = [(16, 24), (16, 24), (3, 16, 24), (24, 16), (0, 16)]
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes] for _ in range(3)]
    grads[2][1][0, 0] = float("nan")
    native = blas_available() and "ns_dtype" not in options and options.get("backend") != "reference"

    def run(impl: str):
        params = [nn.Parameter(w.clone()) for w in start]
        opt = Muon(params, allow_nd=True, impl=impl, **options)
        taken = []
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            routes = opt.explain()
            taken.append(({r.impl for r in routes}, {r.call for r in routes}, len({r.stack for r in routes})))
            opt.step()
        return params, opt, taken

    fast, fast_opt, taken = run("auto")
    list_wide = "fused" if native else "foreach"
    # 3 chunks a step in one batch; the NaN one fell back
    assert taken == [({list_wide}, {0}, 3)] * 2 + [({"per_parameter"}, {0}, 3)]
    slow, slow_opt, taken = run("per_parameter")
    assert all(impl == {"per_parameter"} for impl, _, _ in taken)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
        assert torch.equal(fast_opt.state[a]["momentum_buffer"], slow_opt.state[b]["momentum_buffer"])
        assert torch.equal(fast_opt.state[a]["skipped_steps"], slow_opt.state[b]["skipped_steps"])
    assert fast_opt.state[fast[1]]["skipped_steps"].item() == 1
    assert not torch.equal(fast[0].detach(), start[0])


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_groups_sharing_a_stack_keep_their_own_hyperparameters(rng, backend):
    """Same-shape matrices of two groups with the same orthogonalization options share a stack,
    yet each steps with its own group's lr, weight decay, momentum, Nesterov and lr scale: the
    list-wide step (on the native kernels with "auto") is bitwise the per-parameter step, and
    each parameter ends as it does stepped alone in a one-group optimizer. (The list-wide passes
    once took the stack's first group's hyperparameters for all of it: 2x too small an update.)"""
    shapes = [(16, 24), (24, 16)]
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes * 2]
    grads = [[torch.tensor(rng.standard_normal(w.shape), dtype=torch.float32) for w in start] for _ in range(2)]
    first = dict(lr=0.02, weight_decay=0.1)
    second = dict(lr=0.05, weight_decay=0.0, momentum=0.9, nesterov=False, adjust_lr="match_rms_adamw")

    def run(indices, groups, impl):
        params = {i: nn.Parameter(start[i].clone()) for i in indices}
        opt = Muon([{"params": [params[i] for i in group_indices], **options} for group_indices, options in groups],
                   backend=backend, impl=impl)
        for step_grads in grads:
            for i, p in params.items():
                p.grad = step_grads[i].clone()
            if impl == "auto":
                native = backend == "auto" and blas_available()
                assert {r.impl for r in opt.explain()} == {"fused" if native else "foreach"}
            opt.step()
        return {i: (p.detach(), opt.state[p]["momentum_buffer"]) for i, p in params.items()}

    two_groups = [([0, 1], first), ([2, 3], second)]
    together = run(range(4), two_groups, "auto")
    per_parameter = run(range(4), two_groups, "per_parameter")
    for i in range(4):
        assert all(torch.equal(a, b) for a, b in zip(together[i], per_parameter[i])), i
    if backend == "auto":  # the native kernels give each matrix bitwise the same result alone
        alone = {**run([0, 1], [([0, 1], first)], "auto"), **run([2, 3], [([2, 3], second)], "auto")}
        for i in range(4):
            assert all(torch.equal(a, b) for a, b in zip(together[i], alone[i])), i


def test_batches_respect_options_and_bytes(monkeypatch):
    """Stacks share an orthogonalization call only with the same options, and a call holds at
    most STACK_BYTES (a bigger stack alone)."""
    monkeypatch.setattr(pipeline, "STACK_BYTES", 100)
    gen = torch.Generator().manual_seed(5)
    same = [nn.Parameter(torch.randn(2, 5, generator=gen)) for _ in range(3)]  # 40 bytes each
    other = [nn.Parameter(torch.randn(*shape, generator=gen)) for shape in [(1, 2), (5, 25), (2, 2)]]  # 8, 500, 16
    for p in same + other:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = Muon([{"params": same}, {"params": other, "method": "newton_schulz"}])
    assert stacks_by_call(opt) == {0: [(2, 2, 5)], 1: [(1, 2, 5)], 2: [(1, 1, 2)], 3: [(1, 5, 25)], 4: [(1, 2, 2)]}


@pytest.mark.parametrize("options", [dict(), dict(nesterov=False, weight_decay=0.1), dict(backend="reference")])
def test_normuon_few_passes_step_equals_the_per_parameter_step(rng, options):
    """NorMuon on the CPU takes the list-wide passes ("foreach"; the fused native step is plain
    Muon's): weights, momenta and second moments bitwise those of impl="per_parameter", also in
    a MuonWithAdamW whose Muon and NorMuon groups share stacks; a batch holding a NaN steps per
    parameter (the NaN parameter skipped, the others stepped)."""
    shapes = [(16, 24), (16, 24), (3, 16, 24), (24, 16), (0, 16)]
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes] for _ in range(3)]
    grads[2][1][0, 0] = float("nan")

    def run(impl: str, mixed: bool):
        params = [nn.Parameter(w.clone()) for w in start]
        if mixed:  # params 0 and 2 plain Muon, the rest NorMuon
            groups = [{"params": params[0::2], "use_muon": True, "allow_nd": True},
                      {"params": params[1::2], "use_muon": True, "allow_nd": True, "beta2": 0.95}]
            opt = MuonWithAdamW(groups, impl=impl, **options)
        else:
            opt = NorMuon(params, allow_nd=True, impl=impl, **options)
        return params, opt, step_through(opt, params, grads)

    native = blas_available() and options.get("backend") != "reference"
    for mixed in (False, True):
        fast, fast_opt, taken = run("auto", mixed)
        # mixed: the plain Muon (0, 16) weight has a stack of its own, which the fused step takes
        list_wide = {"foreach", "fused"} if mixed and native else {"foreach"}
        assert taken[:2] == [list_wide] * 2
        # the NaN's batch steps per parameter (mixed: other batches may stay list-wide)
        assert "per_parameter" in taken[2] and taken[2] <= list_wide | {"per_parameter"}
        slow, slow_opt, _ = run("per_parameter", mixed)
        for a, b in zip(fast, slow):
            assert torch.equal(a, b)
            for key in ("momentum_buffer", "second_moment", "skipped_steps"):
                if key in slow_opt.state[b]:
                    assert torch.equal(fast_opt.state[a][key], slow_opt.state[b][key]), key
        assert fast_opt.state[fast[1]]["skipped_steps"].item() == 1
        assert not torch.equal(fast[3].detach(), start[3])


def test_adamw_few_passes_step_equals_the_per_parameter_step(rng):
    """MuonWithAdamW's AdamW group of fp32 weights on the CPU with impl="foreach" steps in
    list-wide passes when every gradient is finite: weights and moments bitwise those of
    impl="per_parameter"; a step with a NaN gradient falls back to it (that parameter skipped,
    the others stepped)."""
    shapes = [(7,), (5, 3), (), (4,)]
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes] for _ in range(4)]
    grads[2][0][3] = float("nan")

    def run(impl: str):
        params = [nn.Parameter(w.clone()) for w in start]
        opt = MuonWithAdamW([{"params": params, "use_muon": False}], adamw_lr=3e-2, adamw_weight_decay=0.1,
                            impl=impl)
        return params, opt, step_through(opt, params, grads)

    fast, fast_opt, taken = run("foreach")
    foreach, per_parameter = {"foreach"}, {"per_parameter"}
    assert taken == [foreach, foreach, per_parameter, foreach]  # step 3 holds the NaN
    slow, slow_opt, taken = run("per_parameter")
    assert taken == [per_parameter] * 4
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq", "step", "skipped_steps"):
            assert torch.equal(fast_opt.state[a][key], slow_opt.state[b][key]), key
    assert fast_opt.state[fast[0]]["skipped_steps"].item() == 1
    assert not torch.equal(fast[1].detach(), start[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_adamw_fused_step_is_torch_fused_adamw(rng, dtype):
    """On the CPU an AdamW group takes torch's fused AdamW kernel by default ("auto"): its
    weights and moments are bitwise those of torch.optim.AdamW(fused=True). A step with a NaN
    gradient runs per parameter instead: that parameter and its state are left as they were, and
    the others step."""
    shapes = [(7,), (5, 3), (), (4,)]
    start = [torch.tensor(rng.standard_normal(s), dtype=dtype) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=dtype) for s in shapes] for _ in range(4)]
    grads[2][0][3] = float("nan")
    options = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    ours = [nn.Parameter(w.clone()) for w in start]
    opt = MuonWithAdamW([{"params": ours, "use_muon": False, **options}])
    theirs = [nn.Parameter(w.clone()) for w in start]
    torch_opt = torch.optim.AdamW(theirs, fused=True, **options)
    for step, step_grads in enumerate(grads):
        for p, q, g in zip(ours, theirs, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in ours]
        routes = opt.explain()
        opt.step()
        if step != 2:
            assert {r.impl for r in routes} == {"fused"}
            torch_opt.step()
            for p, q in zip(ours, theirs):
                assert torch.equal(p, q)
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(opt.state[p][key], torch_opt.state[q][key]), key
            continue
        assert {r.impl for r in routes} == {"per_parameter"}
        W, state = before[0]
        assert torch.equal(ours[0].detach(), W) and opt.state[ours[0]]["skipped_steps"].item() == 1
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[ours[0]][key], state[key]), key
        assert all(not torch.equal(p.detach(), W) for p, (W, _) in zip(ours[1:], before[1:]))
        # the skipped parameter skips in torch's copy too, to compare the next step
        theirs[0].grad = None
        torch_opt.step()
        for p, q in zip(ours[1:], theirs[1:]):  # stepped per parameter: a few ulps from the kernel
            torch.testing.assert_close(p, q)
            q.data.copy_(p.detach())
            for key in ("exp_avg", "exp_avg_sq"):
                torch_opt.state[q][key].copy_(opt.state[p][key])


def test_adamw_fused_step_is_not_taken_for_tensors_that_are_not_contiguous(rng):
    """torch's fused AdamW kernel on the CPU (torch 2.13) updates a transposed or strided weight,
    or a weight with a non-contiguous gradient, wrongly and silently; such a group steps
    list-wide instead, bitwise impl="per_parameter", and an explicit impl="fused" says why."""
    base = torch.tensor(rng.standard_normal((6, 4)), dtype=torch.float32)
    weights = {"transposed": lambda: base.clone().t(), "strided": lambda: base.clone()[:, ::2],
               "gradient transposed": lambda: base.clone()}
    for case, make in weights.items():
        grads = [torch.tensor(rng.standard_normal(tuple(make().shape)[::-1]), dtype=torch.float32).t() for _ in range(3)]
        if case != "gradient transposed":
            grads = [g.contiguous() for g in grads]

        def run(impl: str):
            params = [nn.Parameter(make())]
            opt = MuonWithAdamW([{"params": params, "use_muon": False}], adamw_lr=0.1, impl=impl)
            return params[0], opt, step_through(opt, params, [[g] for g in grads])

        ours, opt, taken = run("auto")
        assert taken == [{"foreach"}] * 3, case
        assert "not C-contiguous" in opt.explain()[0].why
        slow, _, _ = run("per_parameter")
        assert torch.equal(ours, slow), case
        with pytest.raises(ValueError, match='impl="fused" cannot step this AdamW group: .*not C-contiguous'):
            run("fused")


def test_chunks_of_one_stack_share_its_compute_dtype(monkeypatch, rng):
    """The compute dtype is chosen once per same-shape stack (from its matrix count), so a tail
    chunk of one matrix is not computed differently from the rest (a single matrix alone would
    take bf16 at this size on a CPU with bf16 units)."""
    monkeypatch.setenv("FASTMUON_CPU_BF16", "1")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(pipeline, "STACK_BYTES", 2 * 256 * 256 * 4)  # two fp32 matrices a chunk
    params = [nn.Parameter(torch.tensor(rng.standard_normal((256, 256)), dtype=torch.float32)) for _ in range(3)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = Muon(params)
    routes = opt.explain()
    assert {r.compute_dtype for r in routes} == {"float32"}
    stacks = {(r.call, r.stack): r.stack_shape[0] for r in routes}
    assert sorted(stacks.values()) == [1, 2]  # the chunks (2 + 1 matrices), batched together or not
    opt.step()


@pytest.mark.parametrize("saved_kind,loading_kind,message", [
    ("normuon", "muon", r"param_groups\[0\] is a NorMuon group \(beta2=0.95\): Muon would step it as NorMuon"),
    ("muon", "normuon", r"param_groups\[0\] is a plain Muon group \(beta2=None\): NorMuon would step it as plain"),
    ("with_adamw", "muon", r"param_groups\[1\] is an AdamW group \(use_muon=False\): Muon takes only Muon groups"),
    ("with_adamw_swapped", "with_adamw", r"param_groups\[0\] is an AdamW group, param_groups\[0\] a Muon group"),
])
def test_a_checkpoint_of_another_kind_is_refused_before_anything_changes(rng, saved_kind, loading_kind, message):
    """A checkpoint cannot switch the algorithm: loading NorMuon's state into Muon (which would
    then step as NorMuon), Muon's into NorMuon (plain Muon) or MuonWithAdamW's AdamW groups into
    Muon (AdamW steps) raises, naming the group, and leaves the optimizer as it was."""
    def make(kind, params):
        matrix, vector = params
        if kind == "muon":
            return Muon([{"params": [matrix]}, {"params": [nn.Parameter(torch.zeros(4, 6))]}])
        if kind == "normuon":
            return NorMuon([{"params": [matrix]}, {"params": [nn.Parameter(torch.zeros(4, 6))]}])
        groups = [{"params": [matrix], "use_muon": True}, {"params": [vector], "use_muon": False}]
        return MuonWithAdamW(groups[::-1] if kind == "with_adamw_swapped" else groups)

    def params():
        return [nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=torch.float32)) for s in ((8, 12), (12,))]

    source = params()
    saved = make(saved_kind, source)
    for p in source:
        p.grad = torch.ones_like(p)
    saved.step()
    target = make(loading_kind, params())
    before = [dict(g, params=list(g["params"])) for g in target.param_groups]
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(saved.state_dict())
    assert not target.state and [dict(g, params=list(g["params"])) for g in target.param_groups] == before


def test_a_checkpoint_whose_states_do_not_fit_the_parameters_names_them(rng):
    """Same counts, other shapes: the load is refused naming the parameter and the state, before
    anything changes (torch would load it and fail deep inside the next step)."""
    def run(shapes, names):
        params = [nn.Parameter(torch.tensor(rng.standard_normal(s), dtype=torch.float32)) for s in shapes]
        opt = NorMuon([{"params": params, "param_names": names}])
        for p in params:
            p.grad = torch.ones_like(p)
        return opt

    saved = run([(8, 12), (6, 6)], ["a", "b"])
    saved.step()
    target = run([(8, 12), (6, 7)], ["a", "b"])
    with pytest.raises(ValueError, match=r"state 'momentum_buffer' of b has shape \(6, 6\), expected \(6, 7\)"):
        target.load_state_dict(saved.state_dict())
    assert not target.state


@pytest.mark.parametrize("impl", ["auto", "foreach", "per_parameter"])
def test_numpy_scalar_options_step_like_python_numbers(rng, impl):
    """Options given as numpy scalars (weight_decay=np.float64, nesterov=np.bool_) are taken as
    Python numbers: the fused step raised "hyper[0]['decays'] must be a bool, got bool"."""
    W0, G = rng.standard_normal((16, 24)).astype(np.float32), rng.standard_normal((16, 24)).astype(np.float32)
    results = []
    for options in (dict(weight_decay=np.float64(0.1), nesterov=np.bool_(True), momentum=np.float32(0.9),
                         ns_steps=np.int64(5)),
                    dict(weight_decay=0.1, nesterov=True, momentum=float(np.float32(0.9)), ns_steps=5)):
        p = nn.Parameter(torch.from_numpy(W0.copy()))
        p.grad = torch.from_numpy(G.copy())
        opt = Muon([p], lr=0.02, impl=impl, **options)
        opt.step()
        assert all(type(v) in (bool, int, float, str, type(None), list) for v in opt.param_groups[0].values())
        results.append(p.detach().clone())
    assert torch.equal(*results)


def test_sphere_rows_of_tiny_weights_come_out_unit_norm():
    """sphere="project" puts rows whose squared norm underflows (1e-30) on the unit sphere: they
    came out with norms of about 1e14 (divided by the smallest normal number)."""
    p = nn.Parameter(torch.zeros(4, 6))
    p.grad = torch.full((4, 6), 1e-30)
    Muon([p], sphere="project", weight_decay=0.0).step()
    torch.testing.assert_close(p.detach().norm(dim=1), torch.ones(4), rtol=1e-6, atol=0)


def test_sparse_signsgd_steps_an_empty_parameter():
    """SignSGD(sparse=True) on a (0, 7) parameter: it raised "cannot reshape tensor of 0 elements"."""
    p = nn.Parameter(torch.zeros(0, 7))
    p.grad = torch.zeros(0, 7)
    SignSGD([p], sparse=True).step()
    assert p.shape == (0, 7)


def test_integer_parameters_are_refused_by_name():
    """An integer parameter (its .grad set by hand) raised NotImplementedError from lerp."""
    p = torch.ones(4, 6, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"params'\]\[0\] has dtype torch.int32"):
        Muon([p])
