"""torch.compile(fullgraph=True) of a training step with fastmuon's torch optimizers: one graph
(the native kernels are a torch operator with a fake implementation), no recompiles under an
lr scheduler when lr is a Tensor, and the same weights as eager."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from fastmuon.torch import Muon, MuonWithAdamW, NorMuon, muon_param_groups  # noqa: E402
from support.native_helpers import require_native  # noqa: E402


class CountingBackend:
    """A torch.compile backend that records every graph it is given and runs it as captured."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(16, 24), nn.Linear(24, 32), nn.GELU(), nn.Linear(32, 16))
    x = torch.randint(0, 16, (4, 5))
    return model, x


# torch.compile traces impl="per_parameter", so the eager runs they are compared with take it too
# (eager "auto" would give MuonWithAdamW's AdamW groups torch's fused kernel, a few ulps away)
OPTIMIZERS = {
    "muon": lambda m: Muon([p for p in m.parameters() if p.ndim == 2][1:], lr=torch.tensor(0.02),
                           impl="per_parameter"),
    "normuon": lambda m: NorMuon([p for p in m.parameters() if p.ndim == 2][1:], lr=torch.tensor(0.02),
                                 impl="per_parameter"),
    "muon_with_adamw": lambda m: MuonWithAdamW(muon_param_groups(m), lr=torch.tensor(0.02),
                                               adamw_lr=torch.tensor(1e-3), impl="per_parameter"),
    "torch.optim.Muon": lambda m: torch.optim.Muon([p for p in m.parameters() if p.ndim == 2][1:],
                                                   lr=torch.tensor(0.02)),
}


def train(name, compiled: bool, scheduler: bool, steps: int = 12):
    """Twelve steps; with ``scheduler``, StepLR(step_size=1) changes the Tensor lr every step.
    Returns the model and the number of graphs compiled."""
    model, x = model_and_data()
    opt = OPTIMIZERS[name](model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9) if scheduler else None
    backend = CountingBackend()

    def step():
        opt.step()

    # torch's scheduler wraps opt.step in a function dynamo does not trace, so a step with a
    # scheduler is compiled without fullgraph (as PyTorch's own recipe does); without it, fullgraph.
    run = torch.compile(step, backend=backend, fullgraph=not scheduler) if compiled else step
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        run()
        if sched is not None:
            sched.step()
    return model, backend.graphs


def assert_same_weights(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)  # fp32: only reassociation by the graph


@pytest.mark.parametrize("name", ["muon", "normuon", "muon_with_adamw"])
def test_fullgraph_compiled_step_is_one_graph_and_matches_eager(name):
    require_native("blas")
    torch._dynamo.reset()
    compiled, graphs = train(name, compiled=True, scheduler=False)
    assert graphs == 1
    assert_same_weights(compiled, train(name, compiled=False, scheduler=False)[0])


@pytest.mark.parametrize("name", ["muon", "normuon", "muon_with_adamw"])
def test_scheduled_tensor_lr_recompiles_no_more_than_torch_optim_muon(name):
    require_native("blas")
    torch._dynamo.reset()
    _, theirs = train("torch.optim.Muon", compiled=True, scheduler=True)
    torch._dynamo.reset()
    compiled, graphs = train(name, compiled=True, scheduler=True)
    assert 1 <= graphs <= theirs, (graphs, theirs)
    assert_same_weights(compiled, train(name, compiled=False, scheduler=True)[0])


def test_native_calls_under_fake_tensors_go_through_the_operator(monkeypatch):
    """Under a dispatch mode (fake tensors, as make_fx and export use) the native iteration is
    dispatched as its operator, whose fake implementation gives the shape without handing
    the BLAS a fake data pointer; plain eager calls run the kernel directly, with the same bits
    as the operator (the plan crosses its typed schema and back unchanged)."""
    require_native("blas")
    import warnings

    from torch._subclasses.fake_tensor import FakeTensorMode

    import fastmuon.torch.backends.native as native
    from fastmuon.native import kernel_plan
    from fastmuon.plan import make_plan
    from fastmuon.torch import orthogonalize

    x = torch.randn(2, 16, 32)
    kernel_calls = []
    kernel = native._run_kernel
    monkeypatch.setattr(native, "_run_kernel", lambda *args: kernel_calls.append(1) or kernel(*args))
    eager = orthogonalize(x, backend="native")
    assert kernel_calls == [1]
    plan = make_plan("polar_express", 5, None)
    assert torch.equal(eager, native._orthogonalize_op(x, **native._op_arguments(plan)))
    kernel_calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a FakeTensor's data pointer is read
        with FakeTensorMode() as mode:
            fake = orthogonalize(mode.from_tensor(x), backend="native")
    assert kernel_calls == [] and fake.shape == x.shape
    # The operator's keyword arguments are kernel_plan's keys, in its order.
    schema = torch.ops.fastmuon.native_orthogonalize.default._schema
    assert [a.name for a in schema.arguments if a.kwarg_only] == list(kernel_plan(plan))
    for method in ("newton_schulz", "gram"):
        plan = make_plan(method, 3, None)
        assert native._op_kernel_plan(native._op_arguments(plan)) == kernel_plan(plan)
