"""Data-parallel Muon: two gloo processes on CPU against one process given the same averaged
gradients. Each matrix is orthogonalized by exactly one rank with the same code, and batched
orthogonalization is per matrix, so the results must agree bitwise."""

from __future__ import annotations

import importlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastmuon.torch import Muon, MuonWithAdamW
from support.gloo import end_worker, free_port, init_worker

WORLD = 2
STEPS = 3
# Stacks of 3, 1 and 2 matrices (a 3-D stack adds 2 to the first): padding, a stack owned by one
# rank, the rotation of owners; NorMuon and AdamW groups beside.
MUON_SHAPES = [(16, 24), (24, 16), (16, 24), (2, 16, 24), (8, 2, 2, 2), (24, 16)]
NORMUON_SHAPES = [(12, 12), (12, 12)]
ADAMW_SHAPES = [(24,), (10, 4)]
MISSING = {(1, 1): 1, (1, 6): 0}  # (step, param index) -> the rank without that gradient
NONFINITE = {(2, 0): 0}  # (step, param index) -> the rank whose gradient is NaN


def make_params():
    g = torch.Generator().manual_seed(0)
    shapes = MUON_SHAPES + NORMUON_SHAPES + ADAMW_SHAPES
    return [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def local_grads(step, rank):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(p.shape, generator=g) for p in make_params()]


def averaged_grads(step, rank):
    """Rank ``rank`` averages through the collective, as DDP does; rank None (one process)
    averages the same local gradients itself."""
    if rank is None:
        return [sum(gs) / WORLD for gs in zip(*(local_grads(step, r) for r in range(WORLD)))]
    grads = local_grads(step, rank)
    for g in grads:
        dist.all_reduce(g)
    return [g / WORLD for g in grads]


def make_optimizer(params, distributed):
    n, k = len(MUON_SHAPES), len(NORMUON_SHAPES)
    groups = [
        {"params": params[:n], "use_muon": True, "weight_decay": 0.1, "cautious_weight_decay": True,
         "allow_nd": True},
        {"params": params[n:n + k], "use_muon": True, "beta2": 0.95, "lr": 0.01},
        {"params": params[n + k:], "use_muon": False},
    ]
    return MuonWithAdamW(groups, distributed=distributed)


def scenario_grad(step, index, rank, averaged):
    """The gradient rank ``rank`` holds. Semantics under test: a parameter some rank has no
    (finite) gradient for is skipped on every rank, i.e. what one process does without it."""
    if (step, index) in MISSING and rank in (None, MISSING[(step, index)]):
        return None
    if (step, index) in NONFINITE and rank in (None, NONFINITE[(step, index)]):
        return torch.full_like(averaged, float("nan"))
    return averaged


def run(rank, distributed):
    params = make_params()
    opt = make_optimizer(params, distributed)
    for step in range(STEPS):
        for i, (p, g) in enumerate(zip(params, averaged_grads(step, rank))):
            p.grad = scenario_grad(step, i, rank, g)
        opt.step()
    return {
        "params": [p.detach().clone() for p in params],
        "momentum": [opt.state[p]["momentum_buffer"].clone() if "momentum_buffer" in opt.state[p] else None
                     for p in params],
    }


def worker(rank, port, out_dir):
    torch.set_num_threads(1)
    # The single-process baseline runs first, in rank 0's process under the same thread settings.
    single = run(None, distributed=False) if rank == 0 else None
    init_worker(rank, WORLD, port)
    calls = []
    ortho_module = importlib.import_module("fastmuon.torch.orthogonalize")  # the optimizers call it
    real = ortho_module.orthogonalize_stacks

    def counting(stacks, **kwargs):
        calls.extend(U.shape[0] for U in stacks)
        return real(stacks, **kwargs)

    ortho_module.orthogonalize_stacks = counting
    result = run(rank, distributed=None)
    result["matrices"] = sum(calls)
    result["single"] = single
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    end_worker()


def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # read when each process loads its BLAS
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = ranks[0]["single"]
    for i in range(len(single["params"])):
        for r in ranks:
            assert torch.equal(r["params"][i], single["params"][i]), f"param {i}"
            if single["momentum"][i] is not None:
                assert torch.equal(r["momentum"][i], single["momentum"][i]), f"momentum {i}"
    # The work was shared: every step, each of the 9 matrices (stacks of 4, 2, 1 and 2) was
    # orthogonalized by exactly one rank.
    assert sum(r["matrices"] for r in ranks) == 9 * STEPS
    assert all(r["matrices"] < 9 * STEPS for r in ranks)
    start = make_params()
    moved = [not torch.equal(a, b) for a, b in zip(start, single["params"])]
    assert all(moved)


def test_distributed_true_requires_an_initialized_group():
    opt = Muon([nn.Parameter(torch.zeros(4, 4))], distributed=True)
    opt.param_groups[0]["params"][0].grad = torch.ones(4, 4)
    with pytest.raises(RuntimeError, match="not initialized"):
        opt.step()
