"""Sharded (DTensor) parameters on 4 gloo processes, laid out every way a cluster job lays them
out: the whole world's mesh, the sub-meshes of a 2 x 2 mesh (TP x DP, pipeline stages), HSDP
(Replicate x Shard), 2-D Shard x Shard (FSDP x TP); Shard on rows, columns, a stack's matrices
and a conv weight's channels; uneven and empty shards; bf16; Muon and NorMuon; parameters of several meshes
in one optimizer. After a few steps every rank's weights equal one process's within the fp32
floor, and the step issues at most two collectives per same-shape batch plus one finiteness
reduction per process group."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastmuon.torch import Muon
from support.gloo import end_worker, free_port, init_worker

STEPS = 3
WORLD = 4

# (name, shape, mesh, placements): mesh "world" (1-D, 4 ranks), "dp" / "tp" (the 1-D sub-meshes
# of a ("dp", "tp") 2 x 2 mesh: {0, 2} and {1, 3} / {0, 1} and {2, 3}), "2d" (the 2 x 2 mesh).
LAYOUTS = [
    ("rows", (13, 7), "world", ("S0",)),  # uneven: 4, 4, 4, 1
    ("rows_empty", (3, 6), "world", ("S0",)),  # the last rank's shard is empty
    ("cols", (7, 13), "world", ("S1",)),
    ("same_a", (8, 12), "world", ("S0",)),  # six matrices of one shape: a full batch and a short one
    ("same_b", (8, 12), "world", ("S0",)),
    ("same_c", (8, 12), "world", ("S0",)),
    ("same_d", (8, 12), "world", ("S0",)),
    ("same_e", (8, 12), "world", ("S0",)),
    ("same_f", (8, 12), "world", ("S1",)),
    ("experts", (6, 5, 4), "world", ("S0",)),  # a MoE stack sharded on its matrices: 2, 2, 2, 0
    ("stack_rows", (3, 9, 5), "world", ("S1",)),
    ("stack_cols", (2, 5, 9), "world", ("S2",)),
    ("conv_out", (10, 3, 2, 2), "world", ("S0",)),
    ("conv_in", (6, 5, 3, 3), "world", ("S1",)),  # columns in blocks of kh * kw
    ("conv_kernel", (6, 4, 4, 3), "world", ("S2",)),  # gathered whole
    ("dp_rows", (9, 6), "dp", ("S0",)),
    ("dp_cols", (6, 9), "dp", ("S1",)),
    ("tp_rows", (11, 5), "tp", ("S0",)),
    ("tp_experts", (3, 4, 6), "tp", ("S0",)),
    ("hsdp_rows", (9, 7), "2d", ("R", "S0")),
    ("hsdp_cols", (7, 9), "2d", ("R", "S1")),
    ("hsdp_same_a", (6, 8), "2d", ("R", "S0")),  # three of a shape: two batches, one per replica
    ("hsdp_same_b", (6, 8), "2d", ("R", "S0")),
    ("hsdp_same_c", (6, 8), "2d", ("R", "S0")),
    ("fsdp_tp", (10, 12), "2d", ("S0", "S1")),  # a mesh of every rank: exchanged over the world
    ("tp_fsdp", (9, 11), "2d", ("S1", "S0")),
    ("fsdp_tp_stack", (2, 7, 6), "2d", ("S2", "S1")),
    ("fsdp_tp_experts", (4, 6, 5), "2d", ("S0", "S1")),  # experts split twice: gathered whole
]
NORMUON = {"rows", "cols", "experts", "conv_in", "dp_cols", "tp_experts", "hsdp_rows", "conv_kernel", "tp_fsdp"}


# A NaN in the last element of these gradients at step 1: it sits in one rank's shard only, and
# the parameter must be skipped on every rank, as one process skips it.
NAN_AT_STEP_1 = ("rows", "experts", "hsdp_same_b", "fsdp_tp", "conv_kernel")


def start_values(dtype):
    """Weights and per-step gradients of every layout, the same on every rank."""
    g = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for name, shape, *_ in LAYOUTS}
    grads = [{name: torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for name, shape, *_ in LAYOUTS}
             for _ in range(STEPS)]
    for name in NAN_AT_STEP_1:
        grads[1][name].view(-1)[-1] = float("nan")
    return weights, grads


def make_optimizer(params: dict, dtype=None):
    muon = [p for name, p in params.items() if name not in NORMUON]
    normuon = [p for name, p in params.items() if name in NORMUON]
    opt = Muon(muon, lr=0.05, weight_decay=0.1, allow_nd=True, ns_dtype=dtype)
    opt.add_param_group({"params": normuon, "beta2": 0.95})  # one optimizer: NorMuon's options as a group
    return opt


def single_process(dtype):
    weights, grads = start_values(dtype)
    params = {name: torch.nn.Parameter(w) for name, w in weights.items()}
    opt = make_optimizer(params, dtype)
    for step in range(STEPS):
        for name, p in params.items():
            p.grad = grads[step][name]
        opt.step()
    return {name: p.detach().double() for name, p in params.items()}


def _placements(codes):
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if code == "R" else Shard(int(code[1:])) for code in codes]


def _worker(rank, port, out, dtype):
    init_worker(rank, WORLD, port)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    grid = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    meshes = {"world": init_device_mesh("cpu", (WORLD,)), "dp": grid["dp"], "tp": grid["tp"], "2d": grid}
    weights, grads = start_values(dtype)
    layouts = {name: (meshes[mesh], _placements(codes)) for name, _, mesh, codes in LAYOUTS}
    params = {name: torch.nn.Parameter(distribute_tensor(weights[name], *layouts[name])) for name in weights}
    opt = make_optimizer(params)
    calls = Counter()
    for collective in ("all_to_all_single", "all_reduce", "all_gather", "all_gather_into_tensor", "broadcast",
                       "scatter"):
        original = getattr(dist, collective)

        def counted(*args, _original=original, _name=collective, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(dist, collective, counted)
    for step in range(STEPS):
        for name, p in params.items():
            p.grad = distribute_tensor(grads[step][name], *layouts[name])
        if step == STEPS - 1:
            calls.clear()
            routes = {r.name: r.why for r in opt.explain()}
        opt.step()
    result = {"weights": {name: p.full_tensor().detach().double() for name, p in params.items()},
              "skipped": {name: int(opt.state[p]["skipped_steps"]) for name, p in params.items()},
              "calls": dict(calls), "routes": routes, "refused": _permuted_mesh_error()}
    torch.save(result, f"{out}.rank{rank}")
    end_worker()


def _permuted_mesh_error() -> str:
    """A mesh listing its ranks out of order, on which DTensor itself shards inconsistently: the
    step refuses it on every rank (none is left waiting in a collective)."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor

    p = torch.nn.Parameter(distribute_tensor(torch.ones(8, 4), DeviceMesh("cpu", [2, 0, 3, 1]), [Shard(0)]))
    p.grad = torch.ones_like(p)
    try:
        Muon([p]).step()
    except ValueError as error:
        return str(error)
    return ""



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        out = str(tmp_path_factory.mktemp("owners") / "run")
        mp.spawn(_worker, args=(free_port(), out, dtype), nprocs=WORLD, join=True)
        results[dtype] = [torch.load(f"{out}.rank{rank}") for rank in range(WORLD)]
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_layout_equals_one_process_on_every_rank(runs, dtype):
    exact = single_process(torch.float64)
    plain = single_process(dtype)  # one process in the same dtype: its distance from float64 is the floor
    for rank, got in enumerate(runs[dtype]):
        for name, w in got["weights"].items():
            bound = 4 * (plain[name] - exact[name]).abs().max() + 4 * torch.finfo(dtype).eps * exact[name].abs().max()
            assert (w - exact[name]).abs().max() <= bound, (rank, name)


def test_a_nan_in_one_shard_skips_the_parameter_on_every_rank(runs):
    for got in runs[torch.float32]:
        assert {name for name, count in got["skipped"].items() if count} == set(NAN_AT_STEP_1)
        assert all(got["skipped"][name] == 1 for name in NAN_AT_STEP_1)


def test_explain_names_each_layouts_path(runs):
    routes = runs[torch.float32][0]["routes"]
    names = [f"param_groups[{g}]['params'][{i}]" for g, group in enumerate(
        [[n for n, *_ in LAYOUTS if n not in NORMUON], [n for n, *_ in LAYOUTS if n in NORMUON]])
        for i, _ in enumerate(group)]
    by_layout = dict(zip([n for n, *_ in LAYOUTS if n not in NORMUON] + [n for n, *_ in LAYOUTS if n in NORMUON],
                         names))
    for name, *_ in LAYOUTS:
        why = routes[by_layout[name]]
        if name in ("conv_kernel", "fsdp_tp_experts"):
            assert "gathered whole" in why, name
        elif name in ("experts", "tp_experts"):
            assert "no exchange" in why, name
        else:
            assert "owner all-to-all" in why, name


def test_a_mesh_listing_ranks_out_of_order_is_refused_by_name(runs):
    for got in runs[torch.float32]:
        assert "out of increasing order" in got["refused"] and "(8, 4)" in got["refused"]


def test_collectives_per_step(runs):
    """Owner batches (same shape, dtype, options, group and split axes; W per batch): world:
    rows 1, rows_empty 1, cols 1, same_a-e 2 (5 matrices), same_f 1, stack_rows 1, stack_cols 1,
    conv_out 1, conv_in 1, and the 2-D shardings exchanged over the world fsdp_tp 1, tp_fsdp 1,
    fsdp_tp_stack 1 = 13; dp 2, tp 1: 16 batches on every rank. HSDP: hsdp_same's 2 batches
    make one round shared by the 2 replicas (1 batch on rank 0's, one all-gather over the
    replicas); hsdp_rows' and hsdp_cols' single batches run on both replicas: 3 batches on rank
    0. Two all-to-alls per batch. Finiteness: one
    all-reduce per group (world, dp, tp; HSDP's shard group is tp's). NorMuon experts: one
    all-gather of the second moment each (2). The gather path (conv_kernel, fsdp_tp_experts)
    keeps its own collectives."""
    calls = runs[torch.float32][0]["calls"]
    assert calls["all_to_all_single"] == 2 * (16 + 3)
    owner_reductions = 3
    gather_path = 1 + 2  # finiteness over conv_kernel's 1-D mesh, and fsdp_tp_experts' 2-D mesh a dimension at a time
    assert calls["all_reduce"] == owner_reductions + gather_path
    assert calls["all_gather_into_tensor"] == 1 + 2
