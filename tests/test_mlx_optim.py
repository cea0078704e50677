"""MLX optimizers (``fastmuon.mlx``: Muon, NorMuon, SignSGD, routing, schedules).

Every Muon/NorMuon step is checked against an independent float64 re-implementation of the
update rules (tests/support/reference_optim.py), run on the same gradients and, step by step, from the optimizer's
own float32 state. Tolerances are derived, not guessed (``Checker``): weights must stay within
4x the deviation of a plain float32 implementation of the same rule (numpy) from the float64
one, plus one rounding of the result; momentum within its exact elementwise rounding bound.
``test_the_reference_check_can_fail`` shows these catch a wrong flag or constant in one step.
The same bounds, carried over ten steps, give the tolerance of the PyTorch-vs-MLX comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")
from mlx.utils import tree_flatten, tree_map, tree_unflatten  # noqa: E402

import fastmuon.mlx as fm  # noqa: E402
from fastmuon import schedules as pure_schedules  # noqa: E402
from fastmuon.plan import make_plan  # noqa: E402
from support.native_helpers import require_native  # noqa: E402
from support import reference_optim as reference  # noqa: E402
from support.bad_options import BAD_MUON_OPTIONS  # noqa: E402
from support.spectral import UNIT_ROUNDOFF  # noqa: E402

U32 = UNIT_ROUNDOFF["float32"]
LR = 0.02

# A tree with two same-shape matrices (one batched call), a tall matrix, a 3-D stack and an MLX
# conv weight (out, kh, kw, in), nested in dicts and a list.
SHAPES = {
    "a": (16, 24),
    "b": (24, 16),
    "layers": [{"c": (16, 24)}, {"stack": (3, 8, 12)}],
    "conv": (4, 2, 2, 3),
}


def random_tree(rng, shapes=SHAPES, scale=1.0):
    return tree_map(
        lambda s: mx.array((scale * rng.standard_normal(s)).astype(np.float32)),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def to64(a) -> np.ndarray:
    return np.array(a.astype(mx.float64)) if a.dtype != mx.float64 else np.array(a)


def flat(tree) -> dict:
    return dict(tree_flatten(tree))


def copy_tree(tree):
    return tree_map(lambda a: mx.array(a), tree)


# --------------------------------------------------------------- float64 reference ---


@dataclass(frozen=True)
class Config:
    momentum: float = 0.95
    nesterov: bool = True
    weight_decay: float = 0.0
    adjust_lr: str = "original"
    cautious: bool = False
    normuon: bool = False
    beta2: float = 0.95
    method: str = "polar_express"
    ns_steps: int = 5

    def kwargs(self) -> dict:
        kw = dict(
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
            adjust_lr=self.adjust_lr,
            cautious_weight_decay=self.cautious,
            method=self.method,
            ns_steps=self.ns_steps,
        )
        if self.normuon:
            kw["beta2"] = self.beta2
        return kw

    def make_mlx(self, lr=LR, backend="reference"):
        cls = fm.NorMuon if self.normuon else fm.Muon
        return cls(lr, backend=backend, **self.kwargs())


CONFIGS = {
    "muon": Config(),
    "muon_momentum_wd": Config(nesterov=False, weight_decay=0.1),
    "muon_cautious_rms": Config(weight_decay=0.1, cautious=True, adjust_lr="match_rms_adamw"),
    "muon_newton_schulz": Config(method="newton_schulz"),
    "normuon": Config(normuon=True, weight_decay=0.1),
    "normuon_cautious_gram": Config(normuon=True, weight_decay=0.1, cautious=True, beta2=0.9, method="gram"),
}


class Reference:
    """Muon / NorMuon on matrix views, written from the definitions in numpy (tests/support/reference_optim.py), in float64 (the
    reference) or float32 (the baseline: a plain implementation of the same rule)."""

    def __init__(self, cfg: Config, params: dict, dtype, lr: float = LR):
        self.cfg, self.dtype = cfg, dtype
        self.lr = float(np.float32(lr))  # the optimizers hold lr in float32
        self.plan = make_plan(cfg.method, cfg.ns_steps, None)
        self.views = {k: reference.matrix_view(p.shape) for k, p in params.items()}
        self.W = {k: to64(p).reshape(self.views[k]).astype(dtype) for k, p in params.items()}
        self.M = {k: np.zeros_like(w) for k, w in self.W.items()}
        self.v = {k: reference.normuon_state(w.shape, dtype) for k, w in self.W.items()}
        self.O = {}

    def load(self, params: dict, state: dict):
        for k, view in self.views.items():
            self.W[k] = to64(params[k]).reshape(view).astype(self.dtype)
            self.M[k] = to64(state[k]["momentum"]).reshape(view).astype(self.dtype)
            if self.cfg.normuon:
                self.v[k] = to64(state[k]["second_moment"]).astype(self.dtype)

    def step(self, grads: dict):
        for k, g in grads.items():
            self._step_one(k, to64(g).reshape(self.views[k]).astype(self.dtype))

    def _step_one(self, k, G):
        cfg = self.cfg
        hp = dict(lr=self.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                  adjust_lr=cfg.adjust_lr, cautious_weight_decay=cfg.cautious,
                  beta2=cfg.beta2 if cfg.normuon else None)
        self.W[k], self.M[k], v, self.O[k], _ = reference.muon_step(self.W[k], self.M[k], self.v[k], G, hp, self.plan)
        if cfg.normuon:
            self.v[k] = v.astype(self.dtype)


class Checker:
    """Float64 reference and float32 baseline side by side, and the check of an optimizer's
    float32 results against them.

    * weights (per matrix, spectral norm): |W - W_64| <= 4 |W_32 - W_64| + floor, i.e. within
      4x the deviation of the plain float32 implementation; the floor is 2 u ||W||_F (one
      rounding of the result, an upper bound on its spectral norm, so the check never demands
      less than storing W in float32 gives), plus, for cautious decay, lr wd ||W||_F over the
      entries whose mask rounding may flip: |O_ij| within 4x the baseline's ||O_32 - O_64||_2;
    * momentum (elementwise, exact rounding analysis): an EMA or lerp of a and b in float32 is
      within 4 u (|a| + |b|) of the exact value (3 roundings, one unit of margin); the bound is
      carried as beta E + 4 u (|G| + |M_old|);
    * NorMuon's second moment (elementwise): 4x the baseline's largest deviation, plus 4 u v.
    ``load`` restarts all three from the optimizer's own state (the step-by-step comparison);
    without it, deviations and floors accumulate (the ten-step comparison).
    """

    MULTIPLE = 4

    def __init__(self, cfg: Config, params: dict, lr: float = LR):
        self.cfg = cfg
        self.exact = Reference(cfg, params, np.float64, lr)
        self.base = Reference(cfg, params, np.float32, lr)
        self.views = self.exact.views
        self.floor = {k: np.zeros(v[0]) for k, v in self.views.items()}
        self.flips = {k: np.zeros(v[0]) for k, v in self.views.items()}
        self.EM = {k: np.zeros(v) for k, v in self.views.items()}

    def load(self, params: dict, state: dict):
        self.exact.load(params, state)
        self.base.load(params, state)
        for k in self.views:
            self.floor[k][:] = 0
            self.flips[k][:] = 0
            self.EM[k][:] = 0

    def step(self, grads: dict):
        cfg, u, lr = self.cfg, U32, self.exact.lr
        M_old = {k: m.copy() for k, m in self.exact.M.items()}
        M_W = {k: w.copy() for k, w in self.exact.W.items()}  # the weights the mask looks at
        self.exact.step(grads)
        self.base.step(grads)
        for k, g in grads.items():
            G = to64(g).reshape(self.views[k])
            self.EM[k] = cfg.momentum * self.EM[k] + 4 * u * (np.abs(G) + np.abs(M_old[k]))
            W, O = self.exact.W[k], self.exact.O[k]
            if cfg.cautious and cfg.weight_decay:
                err = self.MULTIPLE * np.linalg.norm(self.base.O[k] - O, ord=2, axis=(-2, -1))
                near = np.abs(O) <= err[:, None, None]
                self.flips[k] += lr * cfg.weight_decay * np.linalg.norm(near * M_W[k], axis=(-2, -1))
            self.floor[k] = 2 * u * np.linalg.norm(W, axis=(-2, -1)) + self.flips[k]

    def bound(self, k) -> np.ndarray:
        baseline = np.linalg.norm(self.base.W[k] - self.exact.W[k], ord=2, axis=(-2, -1))
        return self.MULTIPLE * baseline + self.floor[k]

    def check(self, params: dict, state: dict = None, what: str = ""):
        for k, view in self.views.items():
            W = to64(params[k]).reshape(view)
            dev, bound = np.linalg.norm(W - self.exact.W[k], ord=2, axis=(-2, -1)), self.bound(k)
            assert np.all(dev <= bound), f"{what} {k}: |W - W_64|_2 = {dev} > {bound}"
            if state is None:
                continue
            M = to64(state[k]["momentum"]).reshape(view)
            assert np.all(np.abs(M - self.exact.M[k]) <= self.EM[k]), f"{what} {k}: momentum"
            if self.cfg.normuon:
                v, v64 = to64(state[k]["second_moment"]), self.exact.v[k]
                baseline = np.max(np.abs(self.base.v[k] - v64), axis=(1, 2), keepdims=True)
                assert np.all(np.abs(v - v64) <= self.MULTIPLE * baseline + 4 * U32 * v64), f"{what} {k}: second moment"


def state_by_path(opt, paths):
    return {k: _lookup(opt.state, k) for k in paths}


def _lookup(tree, path):
    for key in path.split("."):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


# ------------------------------------------------------------ step-by-step checks ---


@pytest.fixture(params=["reference", "native"])
def backend(request):
    if request.param == "native":
        require_native("mlx_ext")
    return request.param


def run_step_by_step(cfg, opt, params, grads_seq, step_fn=None):
    """Run ``opt`` over ``grads_seq``; after each step compare with a float64 step taken from
    the optimizer's previous float32 state."""
    paths = list(flat(params))
    ref = Checker(cfg, flat(params))
    for i, grads in enumerate(grads_seq):
        if i:
            ref.load(flat(params), state_by_path(opt, paths))
        params = step_fn(grads, params) if step_fn else opt.apply_gradients(grads, params)
        mx.eval(params, opt.state)
        ref.step(flat(grads))
        ref.check(flat(params), state_by_path(opt, paths), what=f"step {i + 1}")
    return params


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_float64_reference_step_by_step(name, backend):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(sorted(CONFIGS).index(name))
    params = random_tree(rng, scale=0.5)
    grads_seq = [random_tree(rng) for _ in range(4)]
    run_step_by_step(cfg, cfg.make_mlx(backend=backend), params, grads_seq)


@pytest.mark.parametrize(
    "wrong",
    [
        dict(nesterov=False),
        dict(adjust_lr="match_rms_adamw"),
        dict(weight_decay=0.1, cautious=True),
        dict(beta2=0.9),
        dict(momentum=0.9),
    ],
    ids=str,
)
def test_the_reference_check_can_fail(wrong):
    """The bounds are tight enough to notice a wrong flag or constant in a single step."""
    cfg = Config(normuon=True, weight_decay=0.1)
    rng = np.random.default_rng(1)
    params = random_tree(rng, scale=0.5)
    grads_seq = [random_tree(rng) for _ in range(2)]
    opt = cfg.make_mlx()
    params = opt.apply_gradients(grads_seq[0], params)
    ref = Checker(replace(cfg, **wrong), flat(params))
    ref.load(flat(params), state_by_path(opt, list(flat(params))))
    params = opt.apply_gradients(grads_seq[1], params)
    ref.step(flat(grads_seq[1]))
    with pytest.raises(AssertionError):
        ref.check(flat(params), state_by_path(opt, list(flat(params))))


def test_compiled_step_matches_reference(backend):
    """Inside mx.compile, with the state captured as MLX documents it (inputs=outputs=state), from
    an optimizer whose state is created during the first compiled call."""
    cfg = CONFIGS["normuon_cautious_gram"]
    rng = np.random.default_rng(5)
    opt = cfg.make_mlx(backend=backend)
    holder = {"params": random_tree(rng, scale=0.5)}
    state = [holder, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def compiled(grads):
        holder["params"] = opt.apply_gradients(grads, holder["params"])

    def step_fn(grads, params):
        compiled(grads)
        return holder["params"]

    start = copy_tree(holder["params"])
    grads_seq = [random_tree(rng) for _ in range(3)]
    run_step_by_step(cfg, opt, start, grads_seq, step_fn=step_fn)


def test_same_shape_matrices_are_orthogonalized_in_one_call():
    """explain() reports one orthogonalization call per matrix shape, stacked."""
    rng = np.random.default_rng(2)
    params, grads = random_tree(rng), random_tree(rng)
    opt = fm.NorMuon(backend="reference")
    routes = opt.explain(grads, params)
    calls = {r.call: r.stack_shape for r in routes if r.call is not None}
    assert sorted(calls.values()) == sorted([(2, 16, 24), (1, 24, 16), (3, 8, 12), (1, 4, 12)])
    assert {(r.impl, r.backend) for r in routes if r.call is not None} == {("per_parameter", "reference")}
    batched = opt.apply_gradients(grads, params)
    # each parameter on its own gives the same numbers (the batch does not change the kernels)
    for path, p in tree_flatten(params):
        alone = fm.NorMuon(backend="reference").apply_gradients({"w": flat(grads)[path]}, {"w": p})
        np.testing.assert_array_equal(np.array(alone["w"]), np.array(flat(batched)[path]))


def test_decoupled_weight_decay_differs_from_mlx_muon():
    """With a zero gradient, decoupled decay is exactly W (1 - lr wd); mlx.optimizers.Muon
    adds wd W to the gradient and orthogonalizes it instead."""
    import mlx.optimizers as optim

    rng = np.random.default_rng(3)
    W = mx.array(rng.standard_normal((8, 12)).astype(np.float32))
    zero = {"w": mx.zeros_like(W)}
    ours = fm.Muon(0.1, weight_decay=0.5).apply_gradients(zero, {"w": W})["w"]
    lr_wd = float(np.float32(0.1)) * 0.5
    np.testing.assert_allclose(np.array(ours), np.array(W) * (1 - lr_wd), rtol=4 * U32, atol=0)
    theirs = optim.Muon(0.1, weight_decay=0.5).apply_gradients(zero, {"w": W})["w"]
    assert np.max(np.abs(np.array(theirs) - np.array(ours))) > 1e-3


# ------------------------------------------------------------------- non-finite ---


@pytest.mark.parametrize("cls", [fm.Muon, fm.NorMuon])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_nonfinite_gradients_skip_their_parameter(cls, compiled):
    """A parameter whose gradient holds a NaN or Inf keeps its weight and state bitwise (the
    policy of fastmuon.torch), counted in skipped_steps; the others step as if nothing happened,
    even those orthogonalized in the same batch."""
    rng = np.random.default_rng(4)
    params = random_tree(rng)
    first, second = random_tree(rng), random_tree(rng)
    bad = dict(flat(second))
    a = np.array(bad["a"])
    a[3, 5] = np.nan
    stack = np.array(bad["layers.1.stack"])
    stack[1, 0, 0] = np.inf
    bad["a"], bad["layers.1.stack"] = mx.array(a), mx.array(stack)
    bad = tree_unflatten(list(bad.items()))

    def run(grads2):
        opt = cls(weight_decay=0.1)
        holder = {"p": copy_tree(params)}
        state = [holder, opt.state]

        def step(g):
            holder["p"] = opt.apply_gradients(g, holder["p"])

        step_fn = mx.compile(step, inputs=state, outputs=state) if compiled else step
        step_fn(first)
        mx.eval(holder, opt.state)
        before = {k: np.array(v) for k, v in tree_flatten([holder["p"], opt.state])}
        step_fn(grads2)
        mx.eval(holder, opt.state)
        return before, {k: np.array(v) for k, v in tree_flatten([holder["p"], opt.state])}

    before, after = run(bad)
    assert all(np.all(np.isfinite(v)) for v in after.values())
    for k in after:
        skipped = k in ("0.a", "0.layers.1.stack") or k.startswith(("1.a.", "1.layers.1.stack."))
        if skipped and not k.endswith("skipped_steps"):
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert after["1.a.skipped_steps"] == 1 and after["1.layers.1.stack.skipped_steps"] == 1
    assert after["1.b.skipped_steps"] == 0 and after["1.layers.0.c.skipped_steps"] == 0
    assert not np.array_equal(after["0.layers.0.c"], before["0.layers.0.c"])
    # the others are exactly what the same step with finite gradients gives ("c" shares a's batch)
    _, clean = run(second)
    for k in ("0.b", "0.layers.0.c", "0.conv", "1.layers.0.c.momentum"):
        np.testing.assert_array_equal(after[k], clean[k], err_msg=k)


def test_signsgd_and_adamw_parts_skip_nonfinite_gradients():
    W = mx.array([[1.0, 2.0], [3.0, 4.0]])
    G = mx.array([[1.0, float("nan")], [1.0, 1.0]])
    opt = fm.SignSGD(0.1, weight_decay=0.01)
    out = opt.apply_gradients({"e": G}, {"e": W})["e"]
    np.testing.assert_array_equal(np.array(out), np.array(W))
    assert opt.state["e"]["skipped_steps"].item() == 1

    model = Tiny()
    grads = tree_map(mx.zeros_like, model.trainable_parameters())
    grads["norm"]["weight"] = mx.full(grads["norm"]["weight"].shape, float("inf"))
    before = np.array(model.norm.weight)
    opt = fm.MuonWithAdamW()
    opt.update(model, grads)
    mx.eval(model.parameters(), opt.state)
    np.testing.assert_array_equal(np.array(model.norm.weight), before)
    adamw_state = opt.state["states"][1]["norm"]["weight"]
    assert adamw_state["skipped_steps"].item() == 1
    assert np.all(np.array(adamw_state["m"]) == 0) and np.all(np.array(adamw_state["v"]) == 0)


# ------------------------------------------------------------------- SignSGD -------


def test_signsgd_seed_vector():
    opt = fm.SignSGD(0.1, weight_decay=0.01)
    out = opt.apply_gradients({"w": mx.array([0.5, -3.0])}, {"w": mx.array([1.0, 2.0])})["w"]
    np.testing.assert_allclose(np.array(out), [0.899, 2.098], rtol=4 * U32)


def test_signsgd_defaults_and_sparse_rows():
    opt = fm.SignSGD()
    assert opt.learning_rate.item() == pytest.approx(1e-2) and opt.weight_decay == 0.1
    W = np.arange(1.0, 7.0, dtype=np.float32).reshape(3, 2)
    G = np.array([[0.0, 0.0], [0.5, -0.5], [0.0, 2.0]], dtype=np.float32)
    lr, wd = float(np.float32(0.1)), 0.1
    dense = fm.SignSGD(0.1).apply_gradients({"e": mx.array(G)}, {"e": mx.array(W)})["e"]
    np.testing.assert_allclose(np.array(dense), W * (1 - lr * wd) - lr * np.sign(G), rtol=4 * U32)
    sparse = fm.SignSGD(0.1, sparse=True).apply_gradients({"e": mx.array(G)}, {"e": mx.array(W)})["e"]
    expected = W * (1 - lr * wd) - lr * np.sign(G)
    expected[0] = W[0]  # an untouched row: neither decay nor update
    np.testing.assert_allclose(np.array(sparse), expected, rtol=4 * U32)


# ------------------------------------------------------------------ schedules -------


@pytest.mark.parametrize(
    "step,expected", [(0, 0.0), (1000, 5e-5), (2000, 1e-4), (6000, 5.5e-5), (10000, 1e-5), (12000, 1e-5)]
)
def test_warmup_cosine_seed_vectors(step, expected):
    schedule = fm.warmup_cosine(1e-4, 2000, 10000, min_ratio=0.1)
    value = schedule(mx.array(step, mx.uint64))
    assert isinstance(value, mx.array)
    # float32 evaluation: a few units of 2^-24 relative (cos near pi/2 loses a little more)
    assert value.item() == pytest.approx(expected, rel=16 * U32, abs=1e-12)
    assert value.item() == pytest.approx(
        pure_schedules.warmup_cosine(step, base_lr=1e-4, warmup_steps=2000, total_steps=10000), rel=16 * U32, abs=1e-12
    )


def test_warmup_cosine_rejects_what_the_pure_function_rejects():
    with pytest.raises(ValueError, match="total_steps"):
        fm.warmup_cosine(1e-3, 10, 10)
    with pytest.raises(ValueError, match="min_ratio"):
        fm.warmup_cosine(1e-3, 1, 10, min_ratio=2.0)


def test_schedule_drives_the_update_from_step_zero():
    """MLX evaluates the schedule at the step count before the update: 0, 1, 2, ..."""
    opt = fm.SignSGD(fm.warmup_cosine(0.1, 2, 6), weight_decay=0.0)
    W = np.zeros(3, dtype=np.float32)
    params = {"w": mx.array(W)}
    for step in range(5):
        params = opt.apply_gradients({"w": mx.array([1.0, -1.0, 0.0])}, params)
        lr = pure_schedules.warmup_cosine(step, base_lr=0.1, warmup_steps=2, total_steps=6)
        W = W - np.float32(lr) * np.array([1.0, -1.0, 0.0], dtype=np.float32)
        np.testing.assert_allclose(np.array(params["w"]), W, rtol=16 * U32, atol=1e-9)
    assert opt.step.item() == 5


# ------------------------------------------------------------------- routing -------


class Tiny(nn.Module):
    """Embedding named unlike "embed" (caught by type), hidden Linear layers, an empty
    subtree (ReLU), a norm and a head."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(12, 16)
        self.blocks = [nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16, bias=False)]
        self.norm = nn.RMSNorm(16)
        self.lm_head = nn.Linear(16, 12)

    def __call__(self, x):
        h = self.wte(x)
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.norm(h))


def test_muon_filter():
    w2, w3, w4, b = mx.zeros((4, 4)), mx.zeros((2, 4, 4)), mx.zeros((4, 2, 2, 3)), mx.zeros((4,))
    assert fm.muon_filter("layers.0.attention.wq.weight", w2)
    assert fm.muon_filter("layers.0.experts.weight", w3)
    assert fm.muon_filter("conv1.weight", w4)
    assert fm.muon_filter("encoder.layer.0.output.dense.weight", w2)  # hidden "output" stays
    for path in ("embed_tokens.weight", "tok_embeddings.weight", "lm_head.weight", "output.weight", "head.weight"):
        assert not fm.muon_filter(path, w2), path
    assert not fm.muon_filter("layers.0.attention.wq.bias", b)
    assert not fm.muon_filter("norm.weight", b)
    assert not fm.muon_filter("wte.weight", w2, exclude=("wte",))


def test_muon_with_adamw_routes_and_follows_each_rule():
    """Muon's parameters follow the float64 reference; the rest follow bias-corrected AdamW with
    betas (0.9, 0.95), decoupled decay 0.1 (teacher-forced from the optimizer's moments).

    AdamW bound, elementwise: moments 4 u (|old| + |new term|) as for Muon's momentum; the step
    lr/c1 m/(sqrt(v)/sqrt(c2) + eps) carries the error of m through, and relative errors from
    c1 = 1 - b1^t and c2 = 1 - b2^t in float32 ((t + 1) u b^t / (1 - b^t), beta rounded then
    raised to t), 8 u for its other operations, all doubled; the decay adds 4 u |W|."""
    model = Tiny()
    mx.eval(model.parameters())
    opt = fm.MuonWithAdamW(lr_muon=LR, lr_adamw=1e-3, weight_decay=0.1, adamw_weight_decay=0.1, backend="reference")
    rng = np.random.default_rng(6)
    muon_paths = ["blocks.0.weight", "blocks.2.weight"]
    params = flat(model.trainable_parameters())
    adamw_paths = sorted(set(params) - set(muon_paths))
    ref = Checker(Config(weight_decay=0.1), {k: params[k] for k in muon_paths})
    lr, b1, b2, u = float(np.float32(1e-3)), 0.9, 0.95, U32
    for t in range(1, 4):
        grads = tree_map(
            lambda p: mx.array(rng.standard_normal(p.shape).astype(np.float32)), model.trainable_parameters()
        )
        before = flat(model.trainable_parameters())
        moments = {}
        for k in adamw_paths:
            zeros = np.zeros(before[k].shape)
            st = _lookup(opt.adamw.state, k) if t > 1 else {"m": zeros, "v": zeros}
            moments[k] = (np.asarray(to64(st["m"]) if t > 1 else zeros), to64(st["v"]) if t > 1 else zeros)
        if t > 1:
            ref.load(before, state_by_path(opt.muon, muon_paths))
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        after = flat(model.trainable_parameters())
        ref.step({k: flat(grads)[k] for k in muon_paths})
        ref.check({k: after[k] for k in muon_paths}, state_by_path(opt.muon, muon_paths))
        c1, c2 = 1 - b1**t, 1 - b2**t
        rel = 2 * u * ((t + 1) * b1**t / c1 + 0.5 * (t + 1) * b2**t / c2 + 8)
        for k in adamw_paths:
            g, W = to64(flat(grads)[k]), to64(before[k])
            m_prev, v_prev = moments[k]
            m = b1 * m_prev + (1 - b1) * g
            v = b2 * v_prev + (1 - b2) * g * g
            Em = 4 * u * (np.abs(m_prev) + np.abs(g))
            denom = np.sqrt(v) / math.sqrt(c2) + 1e-10
            step = lr / c1 * m / denom
            expected = W * (1 - lr * 0.1) - step
            bound = 4 * u * np.abs(W) + rel * np.abs(step) + lr / c1 * Em / denom
            assert np.all(np.abs(to64(after[k]) - expected) <= bound), f"step {t} {k}"
            state = _lookup(opt.adamw.state, k)
            assert np.all(np.abs(to64(state["m"]) - m) <= Em), k
            assert np.all(np.abs(to64(state["v"]) - v) <= 4 * u * (v_prev + g * g)), k
    assert sorted(k for k, _ in tree_flatten(opt.muon.state) if k.endswith("momentum")) == sorted(
        f"{p}.momentum" for p in muon_paths
    )


def test_embedding_signsgd_with_adamw():
    model = Tiny()
    mx.eval(model.parameters())
    opt = fm.embedding_signsgd_with_adamw(1e-3, "wte")
    signsgd, adamw = opt.optimizers
    assert isinstance(signsgd, fm.SignSGD) and signsgd.sparse and signsgd.weight_decay == 0.1
    assert signsgd.learning_rate.item() == pytest.approx(0.1)
    assert adamw.betas == [0.9, 0.95] and adamw.weight_decay == 0.1 and adamw.bias_correction
    grads = tree_map(mx.ones_like, model.trainable_parameters())
    grads["wte"]["weight"] = mx.zeros_like(grads["wte"]["weight"]).at[3].add(1.0)
    W = np.array(model.wte.weight)
    opt.update(model, grads)
    mx.eval(model.parameters())
    expected = W.copy()
    lr = float(np.float32(0.1))
    expected[3] = W[3] * (1 - lr * 0.1) - lr  # only the looked-up row moves
    np.testing.assert_allclose(np.array(model.wte.weight), expected, rtol=4 * U32)
    assert set(flat(adamw.state)) >= {"lm_head.weight.m", "blocks.0.weight.m"}
    # a schedule drives both, the embedding at 100x
    scheduled = fm.embedding_signsgd_with_adamw(fm.warmup_cosine(1e-3, 0, 10), "wte")
    scheduled.update(model, grads)
    assert scheduled.optimizers[0].learning_rate.item() == pytest.approx(0.1, rel=1e-6)
    with pytest.raises(ValueError, match="no gradient under 'tok_embeddings'"):
        fm.embedding_signsgd_with_adamw(1e-3, "tok_embeddings").update(model, grads)


# ------------------------------------------------------------ state round trip ------


def _muon_tree():
    return random_tree(np.random.default_rng(8), scale=0.5)


def _model_tree():
    model = Tiny()
    mx.eval(model.parameters())
    return model.trainable_parameters()


OPTIMIZERS = {
    "muon_schedule": (lambda: fm.Muon(fm.warmup_cosine(0.02, 2, 10), weight_decay=0.1), _muon_tree),
    "normuon_cautious": (lambda: fm.NorMuon(weight_decay=0.1, cautious_weight_decay=True), _muon_tree),
    "signsgd": (lambda: fm.SignSGD(sparse=True), _muon_tree),
    "muon_with_adamw": (lambda: fm.MuonWithAdamW(beta2=0.95, weight_decay=0.1), _model_tree),
    "embedding_signsgd_with_adamw": (lambda: fm.embedding_signsgd_with_adamw(1e-3, "wte"), _model_tree),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_saved_state_continues_bit_identically(name, tmp_path):
    make, make_params = OPTIMIZERS[name]
    params = make_params()
    rng = np.random.default_rng(9)
    grads_seq = [tree_map(lambda p: mx.array(rng.standard_normal(p.shape).astype(np.float32)), params) for _ in range(6)]
    opt = make()
    for grads in grads_seq[:3]:
        params = opt.apply_gradients(grads, params)
    mx.eval(params, opt.state)
    path = str(tmp_path / "optimizer.safetensors")
    mx.save_safetensors(path, dict(tree_flatten(opt.state)))
    resumed = make()
    resumed.state = tree_unflatten(list(mx.load(path).items()))
    params_resumed = copy_tree(params)
    for grads in grads_seq[3:]:
        params = opt.apply_gradients(grads, params)
        params_resumed = resumed.apply_gradients(grads, params_resumed)
    mx.eval(params, params_resumed, opt.state, resumed.state)
    for (k, a), (k2, b) in zip(tree_flatten(params), tree_flatten(params_resumed)):
        assert k == k2
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=k)
    assert dict((k, np.array(v)) for k, v in tree_flatten(opt.state)).keys() == dict(tree_flatten(resumed.state)).keys()
    for k, a in tree_flatten(opt.state):
        np.testing.assert_array_equal(np.array(a), np.array(flat(resumed.state)[k]), err_msg=k)


def test_model_training_step_compiles():
    """The documented MLX pattern: value_and_grad + update inside mx.compile, state captured."""
    model = Tiny()
    mx.eval(model.parameters())
    opt = fm.MuonWithAdamW(lr_muon=fm.warmup_cosine(0.02, 2, 10), lr_adamw=3e-3, weight_decay=0.01)
    x = mx.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    y = mx.array([[2, 3, 4, 5], [6, 7, 8, 9]])

    def loss_fn(model, x, y):
        return nn.losses.cross_entropy(model(x), y).mean()

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        opt.update(model, grads)
        return loss

    losses = []
    for _ in range(6):
        losses.append(step(x, y).item())
        mx.eval(state)
    assert opt.muon.step.item() == 6 and opt.adamw.step.item() == 6
    # the schedule ran inside the compiled step: its value for step 5 (the sixth update)
    assert opt.muon.learning_rate.item() == pytest.approx(
        pure_schedules.warmup_cosine(5, base_lr=0.02, warmup_steps=2, total_steps=10), rel=16 * U32
    )
    assert losses[-1] < losses[0]
    assert all(np.all(np.isfinite(np.array(v))) for _, v in tree_flatten(model.parameters()))


# --------------------------------------------------------------------- errors ------


def test_clip_grad_norm_tuple_is_rejected_with_a_hint():
    import mlx.optimizers as optim

    grads = {"w": mx.ones((4, 4))}
    clipped = optim.clip_grad_norm(grads, 1.0)
    for opt in (fm.Muon(), fm.SignSGD(), fm.MuonWithAdamW()):
        with pytest.raises(TypeError, match="clip_grad_norm; unpack"):
            opt.apply_gradients(clipped, {"w": mx.ones((4, 4))})


def test_tree_mismatch_names_the_path():
    params = {"layers": [{"w": mx.ones((4, 4))}, {"w": mx.ones((4, 6))}]}
    with pytest.raises(ValueError, match=r"no parameter 'layers\.1\.v'"):
        fm.Muon().apply_gradients({"layers": [{}, {"v": mx.ones((4, 6))}]}, params)
    with pytest.raises(ValueError, match=r"at 'layers\.1\.w'.*gradient shape \(6, 4\), parameter shape \(4, 6\)"):
        fm.Muon().apply_gradients({"layers": [{}, {"w": mx.ones((6, 4))}]}, params)
    with pytest.raises(ValueError, match=r"at 'layers'"):
        fm.SignSGD().apply_gradients({"layers": {"w": mx.ones((4, 4))}}, params)
    with pytest.raises(TypeError, match=r"at 'layers\.0\.w'.*NoneType"):
        fm.Muon().apply_gradients({"layers": [{"w": None}]}, params)
    with pytest.raises(fm.TreeMismatchError):
        fm.MuonWithAdamW().apply_gradients({"x": mx.ones((2, 2))}, params)


@pytest.mark.parametrize("cls", ["Muon", "NorMuon"])
def test_vectors_take_mlx_muons_momentum_step(cls):
    """As in mlx.optimizers.Muon, 0-D/1-D parameters take the Nesterov momentum step without
    orthogonalization (no shape scale); with weight_decay=0 both rules are the same, so the
    weights agree to fp32 rounding of a few multiply-adds. Matrices still orthogonalize, and
    a 5-D weight is refused by path."""
    rng = np.random.default_rng(3)
    params = {"bias": mx.array(rng.standard_normal(7).astype(np.float32)), "scale": mx.array(np.float32(0.5))}
    ours, theirs = getattr(fm, cls)(0.1, weight_decay=0.0), optim.Muon(0.1, weight_decay=0.0)
    p_ours, p_theirs = params, params
    for _ in range(3):
        grads = {"bias": mx.array(rng.standard_normal(7).astype(np.float32)),
                 "scale": mx.array(np.float32(rng.standard_normal()))}
        p_ours, p_theirs = ours.apply_gradients(grads, p_ours), theirs.apply_gradients(grads, p_theirs)
    for key in params:
        np.testing.assert_allclose(np.array(p_ours[key]), np.array(p_theirs[key]), rtol=0, atol=1e-6)
        assert np.abs(np.array(p_ours[key]) - np.array(params[key])).max() > 1e-2  # they did move
    assert set(ours.state["bias"]) == {"momentum", "skipped_steps"}
    with pytest.raises(ValueError, match=r"w5 has shape \(1, 1, 2, 2, 2\)"):
        getattr(fm, cls)().apply_gradients({"w5": mx.ones((1, 1, 2, 2, 2))}, {"w5": mx.ones((1, 1, 2, 2, 2))})


def test_muon_with_adamw_takes_mlxs_learning_rate_name():
    opt = fm.MuonWithAdamW(learning_rate=0.05)
    assert opt.muon.learning_rate.item() == pytest.approx(0.05) and opt.learning_rate.item() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="not both"):
        fm.MuonWithAdamW(0.02, learning_rate=0.05)


def test_state_from_another_model_is_rejected():
    opt = fm.NorMuon()
    opt.apply_gradients({"w": mx.ones((4, 6))}, {"w": mx.ones((4, 6))})
    with pytest.raises(ValueError, match=r"'momentum' of 'w' has shape \(4, 6\)"):
        opt.apply_gradients({"w": mx.ones((6, 4))}, {"w": mx.ones((6, 4))})


@pytest.mark.parametrize("saved, loading, message", [
    ("NorMuon", "Muon", "has 'second_moment', which Muon does not keep"),
    ("Muon", "NorMuon", "has no 'second_moment', which NorMuon keeps"),
])
def test_a_state_of_another_kind_is_refused_before_anything_changes(saved, loading, message):
    """The algorithm is the optimizer's: NorMuon's state loaded into Muon stepped as Muon with
    the second moment ignored; the reverse said "has shape nothing". Now both are refused by name,
    with the step count and the state as they were."""
    params = {"w": mx.ones((4, 6))}
    grads = {"w": mx.arange(24, dtype=mx.float32).reshape(4, 6)}
    source = getattr(fm, saved)()
    source.apply_gradients(grads, params)
    target = getattr(fm, loading)()
    target.state = source.state
    step = target.state["step"].item()
    with pytest.raises(ValueError, match=message):
        target.apply_gradients(grads, params)
    assert target.state["step"].item() == step


def test_empty_subtrees_are_tolerated():
    W = mx.ones((4, 6))
    grads = {"act": {}, "blocks": [{}, {"w": W}], "drop": []}
    params = {"act": {}, "blocks": [{}, {"w": W}], "drop": [], "frozen": mx.ones((3,))}
    for opt in (fm.Muon(), fm.NorMuon(), fm.SignSGD(), fm.MuonWithAdamW()):
        out = opt.apply_gradients(grads, params)
        assert out["act"] == {} and out["drop"] == [] and out["blocks"][0] == {}
        assert out["blocks"][1]["w"].shape == (4, 6)
    assert fm.Muon().apply_gradients({}, params) == {}
    model = Tiny()  # every parameter of Tiny routed to one side leaves the other with {}
    opt = fm.MuonWithAdamW(filter=lambda path, a: False)
    opt.update(model, tree_map(mx.zeros_like, model.trainable_parameters()))
    mx.eval(model.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    BAD_MUON_OPTIONS + [
        (dict(learning_rate=-1.0), "lr"),
        (dict(learning_rate=float("nan")), "lr"),
        (dict(ns_dtype="float32"), "ns_dtype"),
        (dict(method="gram", ns_dtype=mx.float16), 'ns_dtype=mlx.core.float16 with method="gram"'),
    ],
    ids=str,
)
def test_bad_hyperparameters_raise_in_the_constructor(kwargs, match):
    for cls in (fm.Muon, fm.NorMuon):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)
    with pytest.raises(ValueError, match="beta2"):
        fm.NorMuon(beta2=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        fm.SignSGD(weight_decay=-1.0)


def test_defaults_match_the_issue():
    opt = fm.Muon()
    assert opt.learning_rate.item() == pytest.approx(0.02)
    assert (opt.momentum, opt.nesterov, opt.weight_decay, opt.method, opt.ns_steps) == (
        0.95, True, 0.0, "auto", 5,
    )
    assert (opt.adjust_lr, opt.cautious_weight_decay, opt.backend, opt.ns_dtype) == ("original", False, "auto", None)
    assert fm.NorMuon().beta2 == 0.95
    both = fm.MuonWithAdamW()
    assert type(both.muon) is fm.Muon and isinstance(fm.MuonWithAdamW(beta2=0.9).muon, fm.NorMuon)
    assert both.muon.learning_rate.item() == pytest.approx(0.02)
    assert both.adamw.learning_rate.item() == pytest.approx(1e-3)
    assert (both.adamw.betas, both.adamw.eps, both.adamw.weight_decay) == ([0.9, 0.95], 1e-10, 0.0)
    assert both.adamw.bias_correction


# --------------------------------------------------------------- torch vs mlx ------

TORCH_CONFIGS = ["muon", "muon_momentum_wd", "muon_cautious_rms", "normuon"]


@pytest.mark.parametrize("name", TORCH_CONFIGS)
def test_torch_and_mlx_give_the_same_weights_after_ten_steps(name):
    """Same fp32 start and gradients, reference backends: each run stays within the carried
    float64 bounds of the exact trajectory, so the two within twice those bounds."""
    torch = pytest.importorskip("torch")
    fastmuon_torch = pytest.importorskip("fastmuon.torch")
    cfg = CONFIGS[name]
    cls_name = "NorMuon" if cfg.normuon else "Muon"
    if not hasattr(fastmuon_torch, cls_name):
        pytest.skip(f"fastmuon.torch.{cls_name} is not written yet")
    rng = np.random.default_rng(10)
    params = random_tree(rng, scale=0.5)
    grads_seq = [random_tree(rng) for _ in range(10)]

    def to_torch(path, a):  # MLX conv (out, kh, kw, in) -> torch (out, in, kh, kw)
        x = np.array(a)
        return torch.tensor(np.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x)

    def from_torch(path, t):
        x = t.detach().numpy()
        return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x

    paths = list(flat(params))
    tensors = {k: torch.nn.Parameter(to_torch(k, a).clone()) for k, a in flat(params).items()}
    kwargs = dict(cfg.kwargs(), backend="reference")
    torch_opt = getattr(fastmuon_torch, cls_name)(list(tensors.values()), lr=LR, allow_nd=True, **kwargs)
    mlx_opt = cfg.make_mlx(backend="reference")
    ref = Checker(cfg, flat(params))
    for grads in grads_seq:
        for k, g in flat(grads).items():
            tensors[k].grad = to_torch(k, g).clone()
        torch_opt.step()
        params = mlx_opt.apply_gradients(grads, params)
        mx.eval(params, mlx_opt.state)
        ref.step(flat(grads))
    ref.check(flat(params), what="mlx")
    for k in paths:
        view = ref.views[k]
        W_t = from_torch(k, tensors[k]).astype(np.float64).reshape(view)
        W_m = to64(flat(params)[k]).reshape(view)
        dev = np.linalg.norm(W_t - W_m, ord=2, axis=(-2, -1))
        assert np.all(dev <= 2 * ref.bound(k)), f"{k}: |W_torch - W_mlx|_2 = {dev} > {2 * ref.bound(k)}"


def test_parameters_joining_later_get_state():
    opt = fm.NorMuon()
    params = {"a": mx.ones((4, 6)), "b": mx.ones((6, 4))}
    opt.apply_gradients({"a": mx.ones((4, 6))}, params)
    out = opt.apply_gradients({"a": mx.ones((4, 6)), "b": mx.ones((6, 4))}, params)
    assert out["b"].shape == (6, 4) and opt.state["b"]["second_moment"].shape == (1, 6, 1)
    assert opt.step.item() == 2


def test_low_precision_weights_keep_their_dtype():
    """bf16 weights: state in the weight's dtype, arithmetic in float32, result cast back."""
    rng = np.random.default_rng(12)
    W = mx.array(rng.standard_normal((8, 12)).astype(np.float32)).astype(mx.bfloat16)
    G = mx.array(rng.standard_normal((8, 12)).astype(np.float32)).astype(mx.bfloat16)
    opt = fm.NorMuon(weight_decay=0.1)
    out = opt.apply_gradients({"w": G}, {"w": W})["w"]
    assert out.dtype == mx.bfloat16 and opt.state["w"]["momentum"].dtype == mx.bfloat16
    assert opt.state["w"]["second_moment"].dtype == mx.float32
    # the same step from the same (bf16-exact) values in float32, rounded once to bf16
    ref = fm.NorMuon(weight_decay=0.1).apply_gradients(
        {"w": G.astype(mx.float32)}, {"w": W.astype(mx.float32)}
    )["w"]
    # A check of the dtype path, not of accuracy (the float32 tests do that): the final bf16
    # rounding is 2^-8 |W| (rtol), and the bf16 momentum perturbs U by 2^-8 relative, which moves
    # lr * scale * O by a small fraction of its typical entry 0.02 * 0.3 (atol 1e-3); a wrong
    # sign, scale or decay would move entries by more than that.
    np.testing.assert_allclose(to64(out), to64(ref), rtol=2.0**-8, atol=1e-3)


@pytest.mark.parametrize("sparse", [False, True])
def test_torch_and_mlx_signsgd_agree_after_ten_steps(sparse):
    """Elementwise: each step rounds W (1 - lr wd) - lr sign(G) three times, so each run stays
    within sum_t 4 u (|W_t| + lr) of the exact trajectory; the two within twice that."""
    torch = pytest.importorskip("torch")
    fastmuon_torch = pytest.importorskip("fastmuon.torch")
    if not hasattr(fastmuon_torch, "SignSGD"):
        pytest.skip("fastmuon.torch.SignSGD is not written yet")
    rng = np.random.default_rng(13)
    W0 = rng.standard_normal((6, 5)).astype(np.float32)
    grads = [rng.standard_normal((6, 5)).astype(np.float32) * (rng.random((6, 1)) < 0.5) for _ in range(10)]
    for G in grads:
        G[0] = 0.0  # row 0 is never looked up
    p = torch.nn.Parameter(torch.tensor(W0))
    torch_opt = fastmuon_torch.SignSGD([p], lr=0.05, weight_decay=0.1, sparse=sparse)
    mlx_opt = fm.SignSGD(0.05, weight_decay=0.1, sparse=sparse)
    params = {"e": mx.array(W0)}
    W, bound, lr = W0.astype(np.float64), np.zeros(W0.shape), float(np.float32(0.05))
    for G in grads:
        p.grad = torch.tensor(G)
        torch_opt.step()
        params = mlx_opt.apply_gradients({"e": mx.array(G)}, params)
        new = W * (1 - lr * 0.1) - lr * np.sign(G)
        if sparse:
            new = np.where(np.any(G != 0, axis=1, keepdims=True), new, W)
        W = new
        bound += 4 * U32 * (np.abs(W) + lr)
    W_t, W_m = p.detach().numpy().astype(np.float64), to64(params["e"])
    assert np.all(np.abs(W_m - W) <= bound)
    assert np.all(np.abs(W_t - W_m) <= 2 * bound)
    if sparse:  # a row no gradient ever touched is exactly where it started
        np.testing.assert_array_equal(W_m[0], W0[0])
        np.testing.assert_array_equal(W_t[0], W0[0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr_adamw=-1.0), "lr"),
        (dict(adamw_betas=(0.9, 1.0)), "beta2"),
        (dict(adamw_eps=-1.0), "adamw_eps"),
        (dict(adamw_weight_decay=-1.0), "weight_decay"),
        (dict(momentum=2.0), "momentum"),
        (dict(beta2=1.5), "beta2"),
    ],
    ids=str,
)
def test_muon_with_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fm.MuonWithAdamW(**kwargs)


class _WithNames(nn.Module):
    """A model like mlx-lm's LlamaModel: a non-array attribute (a list of strings), whose
    gradient from nn.value_and_grad is an empty dict, and an embedding named ``wte``."""

    def __init__(self):
        super().__init__()
        self.layer_types = ["full_attention", "full_attention"]
        self.wte = nn.Embedding(16, 8)
        self.hidden = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 16, bias=False)

    def __call__(self, x):
        return self.head(self.hidden(self.wte(x)))


def _names_loss(model, x, y):
    return nn.losses.cross_entropy(model(x), y).mean()


@pytest.mark.parametrize("make", [lambda: fm.MuonWithAdamW(backend="reference"), lambda: fm.Muon(backend="reference")],
                         ids=["muon_with_adamw", "muon"])
def test_non_array_leaves_get_an_empty_gradient_and_are_left_alone(make):
    model = _WithNames()
    if isinstance(make(), fm.Muon):  # Muon alone: the matrices only
        model.wte.freeze()
        model.head.freeze()
    opt = make()
    x, y = mx.array([[1, 2, 3]]), mx.array([[2, 3, 4]])
    loss, grads = nn.value_and_grad(model, _names_loss)(model, x, y)
    assert grads["layer_types"] == [{}, {}]  # what nn.value_and_grad gives the strings
    before = model.hidden.weight
    opt.update(model, grads)
    mx.eval(model.parameters())
    assert model.layer_types == ["full_attention", "full_attention"]
    assert not mx.array_equal(model.hidden.weight, before)


def test_init_before_update_routes_like_update():
    """``init(model.trainable_parameters())`` cannot see module types; the first update (given
    the model) routes the embedding ``wte`` to AdamW and must find state for it there."""
    model = _WithNames()
    opt = fm.MuonWithAdamW(backend="reference")
    opt.init(model.trainable_parameters())
    x, y = mx.array([[1, 2, 3]]), mx.array([[2, 3, 4]])
    for _ in range(2):
        _, grads = nn.value_and_grad(model, _names_loss)(model, x, y)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    assert "wte" in opt.adamw.state and "m" in opt.adamw.state["wte"]["weight"]


@pytest.mark.parametrize("make", [lambda: fm.Muon(backend="reference"), lambda: fm.SignSGD(), lambda: fm.MuonWithAdamW()],
                         ids=["muon", "signsgd", "muon_with_adamw"])
def test_integer_parameters_are_refused_by_name(make):
    params = {"w": mx.array([[3, 1], [2, 5]], dtype=mx.int32)}
    grads = {"w": mx.ones((2, 2), dtype=mx.int32)}
    with pytest.raises(TypeError, match=r"'w'.*int32"):
        make().apply_gradients(grads, params)


# What MLX's own generic optimizer tests check of every optimizer, for fastmuon's classes.
GENERIC = {
    "muon": lambda: fm.Muon(0.1),
    "normuon": lambda: fm.NorMuon(0.1),
    "signsgd": lambda: fm.SignSGD(0.1),
    "muon_with_adamw": lambda: fm.MuonWithAdamW(0.1, 0.01),
}


def _matrices(dtype=mx.float32):
    return {"a": mx.zeros((4, 6), dtype=dtype), "b": [mx.zeros((3, 3), dtype=dtype)]}


@pytest.mark.parametrize("name", sorted(GENERIC))
def test_mlx_generic_state_types_compiled_lr_and_reload(name):
    make = GENERIC[name]
    # init creates a state entry for every parameter, mirroring the tree
    opt = make()
    opt.init(_matrices())
    paths = {path for path, _ in tree_flatten(opt.state)}
    for leaf in ("a", "b.0"):
        assert any(path.endswith(f"{leaf}.skipped_steps") for path in paths), paths
    # parameter dtypes are conserved
    for dtype in (mx.float16, mx.bfloat16):
        params = _matrices(dtype)
        updated = make().apply_gradients(tree_map(lambda x: mx.ones_like(x), params), params)
        assert all(v.dtype == dtype for _, v in tree_flatten(updated))
    # a learning rate changed between calls of a compiled step takes effect (it is state)
    opt, params = make(), _matrices()
    grads = tree_map(lambda x: mx.full(x.shape, 0.1), params)
    opt.init(params)
    state = [opt.state]
    step = mx.compile(lambda p, g: opt.apply_gradients(g, p), inputs=state, outputs=state)
    first = step(params, grads)
    mx.eval(first)
    opt.learning_rate = 0.0
    second = step(first, grads)
    assert all(mx.array_equal(x, y).item() for (_, x), (_, y) in zip(tree_flatten(first), tree_flatten(second)))
    assert not all(mx.array_equal(x, y).item() for (_, x), (_, y) in zip(tree_flatten(params), tree_flatten(first)))
    # a new optimizer given a saved state continues from it
    again = make()
    again.state = tree_unflatten(tree_flatten(opt.state))
    mx.eval(again.apply_gradients(grads, first))


def test_momentum_keeps_the_weights_dtype_under_fp32_gradients():
    """bf16 weights with fp32 gradients (accumulated in fp32): the momentum stays bf16, as
    fastmuon.torch keeps its buffer's dtype (mx.where promoted it to fp32 after the first step,
    twice its memory)."""
    for cls in (fm.Muon, fm.NorMuon):
        opt = cls(0.02)
        params = {"w": mx.zeros((8, 12), dtype=mx.bfloat16)}
        opt.init(params)  # (without it mlx initializes the state from the first gradients, fp32 here)
        for _ in range(2):
            params = opt.apply_gradients({"w": mx.ones((8, 12), dtype=mx.float32)}, params)
            mx.eval(params, opt.state)
            assert opt.state["w"]["momentum"].dtype == mx.bfloat16 and params["w"].dtype == mx.bfloat16


def test_a_dotted_key_that_collides_with_a_nested_path_raises():
    """{"a.b": W1, "a": {"b": W2}} gives both parameters the path 'a.b', by which mlx's trees
    are rebuilt: one update silently replaced the other. Every optimizer now raises, naming it."""
    params = {"a.b": mx.zeros((4, 4)), "a": {"b": mx.ones((4, 4))}}
    grads = {"a.b": mx.ones((4, 4)), "a": {"b": mx.ones((4, 4))}}
    for opt in (fm.Muon(0.02), fm.SignSGD(0.01), fm.MuonWithAdamW(0.02)):
        with pytest.raises(ValueError, match=r"two parameters share the path 'a\.b'"):
            opt.apply_gradients(grads, params)


def test_adamw_part_bias_corrects_by_each_parameters_own_steps():
    """The AdamW part counts a parameter's own steps for its bias corrections, as fastmuon.torch
    and torch.optim.AdamW do: after a skipped (NaN) step, and for a parameter whose first
    gradient comes at step 3, the first real update is the t = 1 update, -lr * sign(g) here
    (the optimizer's step gave 0.73x and 0.62x of it). With no skips it stays bitwise mlx's
    AdamW(bias_correction=True)."""
    import mlx.optimizers as mlx_optim

    lr = 1e-3
    g = np.array([0.5, -1.0, 2.0], np.float32)
    expected = -lr * np.sign(g)
    opt = fm.MuonWithAdamW(0.02, lr)
    p = {"bias": mx.zeros((3,))}
    for G in (np.array([np.nan, 1.0, 2.0], np.float32), g):
        p = opt.apply_gradients({"bias": mx.array(G)}, p)
    np.testing.assert_allclose(np.array(p["bias"]), expected, rtol=1e-5)

    opt = fm.MuonWithAdamW(0.02, lr)
    p = {"a": mx.zeros((3,)), "late": mx.zeros((3,))}
    for step in range(3):
        grads = {"a": mx.ones((3,)), "late": mx.array(g)} if step == 2 else {"a": mx.ones((3,))}
        p.update(opt.apply_gradients(grads, p))
    np.testing.assert_allclose(np.array(p["late"]), expected, rtol=1e-5)

    ours, theirs = fm.MuonWithAdamW(0.02, lr, adamw_weight_decay=0.1), mlx_optim.AdamW(lr, betas=[0.9, 0.95],
                                                                                     eps=1e-10, weight_decay=0.1,
                                                                                     bias_correction=True)
    a, b = {"bias": mx.ones((5,))}, {"bias": mx.ones((5,))}
    for step in range(4):
        G = {"bias": mx.array(np.random.default_rng(step).standard_normal(5).astype(np.float32))}
        a, b = ours.apply_gradients(G, a), theirs.apply_gradients(G, b)
        assert np.array_equal(np.array(a["bias"]), np.array(b["bias"]))


def test_a_step_that_raises_leaves_the_step_counter_where_it_was():
    """An exception inside the step (here an orthogonalization that fails) leaves the step counter
    and the scheduled learning rate as they were, as it leaves weights and momenta; the
    counter once advanced anyway, and later bias corrections and schedules were off by one."""
    import fastmuon.mlx as fm

    opt = fm.Muon(lambda step: 0.01 * (step + 1), backend="native", impl="per_parameter")
    params = {"w": mx.ones((4, 6))}
    grads = {"w": mx.ones((4, 6))}
    params = opt.apply_gradients(grads, params)
    mx.eval(params, opt.state)
    step, lr = int(opt.state["step"]), float(opt.state["learning_rate"])
    opt.ns_dtype = mx.float16  # the native backend refuses it at the next step
    with pytest.raises(ValueError, match="float32"):
        opt.apply_gradients(grads, params)
    assert int(opt.state["step"]) == step and float(opt.state["learning_rate"]) == lr


@pytest.mark.parametrize("make", [lambda lr: fm.Muon(lr), lambda lr: fm.SignSGD(lr),
                                  lambda lr: fm.MuonWithAdamW(0.02, lr)], ids=["Muon", "SignSGD", "AdamW part"])
def test_a_non_finite_learning_rate_skips_the_step(make):
    """A schedule that returns NaN skips the step (weights and state as they were, counted in
    skipped_steps) instead of making every weight NaN."""
    opt = make(lambda step: mx.array(float("nan")))
    params = {"w": mx.ones((3, 4)), "b": mx.ones((4,))}
    grads = {"w": mx.ones((3, 4)), "b": mx.ones((4,))}
    out = opt.apply_gradients(grads, params)
    stepped = "w" if isinstance(opt, fm.MuonWithAdamW) else None  # its Muon part has a finite rate
    for name, value in out.items():
        if name == stepped:
            assert not np.array_equal(np.array(value), np.array(params[name]))
        else:
            assert np.array_equal(np.array(value), np.array(params[name]))
    flat = dict(tree_flatten(opt.state))
    skipped = {k: int(v.item()) for k, v in flat.items() if k.endswith("skipped_steps")}
    assert skipped and all(v == (0 if stepped and stepped in k.split(".") else 1) for k, v in skipped.items())


def test_numpy_adamw_betas_are_taken_as_python_numbers():
    """numpy betas passed the checks and then turned mlx's moments into numpy arrays: float64
    weights lost precision and bfloat16 ones raised a PEP 3118 error."""
    for dtype in (mx.float64, mx.bfloat16):
        results = []
        for betas in ((np.float64(0.9), np.float64(0.95)), (0.9, 0.95)):
            opt = fm.MuonWithAdamW(0.02, 0.01, adamw_betas=betas)
            params = {"b": mx.ones((4,), dtype=dtype)}
            for g in (1.0, 3.0):
                params = opt.apply_gradients({"b": mx.full((4,), g, dtype=dtype)}, params)
            results.append(np.array(params["b"].astype(mx.float64)))
        assert np.array_equal(*results)


def test_normuon_without_beta2_is_refused_by_name():
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\), got None"):
        fm.NorMuon(0.02, beta2=None)


def test_all_finite_answers_as_isfinite_does():
    """The optimizers' non-finite guard (x * 0 summed) agrees with mx.all(mx.isfinite(x)) on
    infinities of both signs, NaN, the largest finite values (whose sum would overflow), empty
    arrays and every float dtype."""
    from fastmuon.mlx.functional import all_finite

    big = float(np.finfo(np.float32).max)
    cases = [[1.0, 2.0], [big, big, -big], [1.0, float("inf")], [-float("inf")], [float("nan"), 1.0], [], [0.0, -0.0]]
    for values in cases:
        for dtype in (mx.float32, mx.float16, mx.bfloat16):
            x = mx.array(np.array(values, dtype=np.float32)).astype(dtype)
            assert all_finite(x).item() == mx.all(mx.isfinite(x)).item(), (values, dtype)
