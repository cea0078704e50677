"""FSDP2 (torch.distributed.fsdp.fully_shard): parameters and gradients are DTensors sharded on
dim 0 (unevenly here). Muon, NorMuon and AdamW groups step on the shards; weights after a few
steps equal one process's on the same batch within a derived fp32 bound, and rank 0 holds only
its share of the optimizer state."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fastmuon.torch import MuonWithAdamW, muon_param_groups
from support.gloo import end_worker, free_port, init_worker

STEPS = 3


def make_model():
    torch.manual_seed(0)
    # out-features 7 and 13: uneven shards over 2 and 4 ranks
    return nn.Sequential(nn.Embedding(11, 12), nn.Linear(12, 13), nn.GELU(), nn.Linear(13, 7), nn.GELU(),
                         nn.Linear(7, 12, bias=False))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 11, (4, 5), generator=g)


def make_optimizer(model):
    groups = muon_param_groups(model)
    groups.insert(1, {**groups[0], "params": groups[0]["params"][1:2], "param_names": groups[0]["param_names"][1:2],
                      "beta2": 0.95})  # one NorMuon matrix
    groups[0]["params"] = groups[0]["params"][:1] + groups[0]["params"][2:]
    groups[0]["param_names"] = groups[0]["param_names"][:1] + groups[0]["param_names"][2:]
    return MuonWithAdamW(groups, lr=0.05, weight_decay=0.1, adamw_lr=0.01)


def train(model, opt):
    x = batch()
    for _ in range(STEPS):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def single_process(dtype):
    model = make_model().to(dtype)
    opt = make_optimizer(model)
    for group in opt.param_groups:
        if group["use_muon"]:
            group["ns_dtype"] = dtype
    train(model, opt)
    return [p.detach().to(torch.float64) for p in model.parameters()]



def _worker(rank, world, port, out, hsdp=False, submesh=False):
    init_worker(rank, world, port)
    from torch.distributed.fsdp import fully_shard

    mesh = None
    if hsdp:  # 2 replicas x 2 shards: placements (Replicate(), Shard(0))
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
    if submesh:  # FSDP on the "dp" dimension of a 2 x 2 mesh: two 1-D sub-meshes, {0, 2} and {1, 3}
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))["dp"]
    model = make_model()
    for layer in model:
        if any(p.requires_grad for p in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = make_optimizer(model)
    train(model, opt)
    weights = [p.full_tensor().detach().to(torch.float64) for p in model.parameters()]
    state_bytes = sum(t.to_local().numel() * t.element_size() if hasattr(t, "to_local") else t.numel() * t.element_size()
                      for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor))
    if rank == 0 or submesh:  # on sub-meshes every rank's weights are checked
        torch.save({"weights": weights, "state_bytes": state_bytes}, out if rank == 0 else f"{out}.rank{rank}")
    end_worker()


@pytest.mark.parametrize("world, hsdp", [(2, False), (4, False), (4, True)], ids=["fsdp2", "fsdp4", "hsdp2x2"])
def test_fsdp2_equals_one_process(tmp_path, world, hsdp):
    out = tmp_path / "fsdp.pt"
    port = free_port()
    mp.spawn(_worker, args=(world, port, str(out), hsdp), nprocs=world, join=True)
    got = torch.load(out)
    fp64, fp32 = single_process(torch.float64), single_process(torch.float32)
    for w, exact, plain in zip(got["weights"], fp64, fp32):
        # the plain fp32 run's own distance from float64 sets the bound (4x, plus fp32 rounding)
        bound = 4 * (plain - exact).abs().max() + 4 * 2.0**-24 * exact.abs().max()
        assert (w - exact).abs().max() <= bound
    # optimizer state: about 1/world of one process's (NorMuon's second moment is kept whole)
    model = make_model()
    opt = make_optimizer(model)
    train(model, opt)
    whole = sum(t.numel() * t.element_size() for state in opt.state.values() for t in state.values())
    shards = world // 2 if hsdp else world  # HSDP: replicas hold the same shard
    assert got["state_bytes"] <= whole / shards + 4096


def test_fsdp2_on_a_sub_mesh_equals_one_process_on_every_rank(tmp_path):
    """fully_shard(mesh=mesh["dp"]) of a 2 x 2 mesh: owners, the scatter's source and the
    finiteness reduction are counted within each parameter's own mesh. They were global ranks,
    and ranks 2-3 received weights off by 7.7e-3 or 1.8e19 (an uninitialized buffer)."""
    out = tmp_path / "fsdp.pt"
    mp.spawn(_worker, args=(4, free_port(), str(out), False, True), nprocs=4, join=True)
    fp64, fp32 = single_process(torch.float64), single_process(torch.float32)
    for path in [out] + [f"{out}.rank{r}" for r in (1, 2, 3)]:
        got = torch.load(path)
        for w, exact, plain in zip(got["weights"], fp64, fp32):
            bound = 4 * (plain - exact).abs().max() + 4 * 2.0**-24 * exact.abs().max()  # as above
            assert (w - exact).abs().max() <= bound, path


def _mixed_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 13, bias=False), nn.GELU(), nn.Linear(13, 12, bias=False))


def _mixed_steps(model, opt):
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(4)).to(model[2].weight.dtype)
    for _ in range(STEPS):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _mixed_worker(rank, world, port, out):
    init_worker(rank, world, port)
    from torch.distributed.fsdp import fully_shard

    from fastmuon.torch import Muon

    model = _mixed_model()
    fully_shard(model[0])  # the first layer sharded, the last one a plain tensor on every rank
    opt = Muon([model[0].weight, model[2].weight], lr=0.05)  # one group holding both kinds
    _mixed_steps(model, opt)
    routes = {r.name: r.strategy for r in opt.explain()}  # with the last step's gradients
    weights = [model[0].weight.full_tensor().detach(), model[2].weight.detach()]
    torch.save({"weights": weights, "routes": routes}, f"{out}.rank{rank}")
    end_worker()


def test_a_partly_sharded_model_steps_each_parameter_its_way(tmp_path):
    """A Muon group holding a DTensor weight and a plain one (a layer left out of fully_shard) was
    refused ("mixes sharded (DTensor) and plain parameters"): the DTensor steps sharded, the
    plain one on each rank as its own, both as in one process (same fp32 bound as above)."""
    from fastmuon.torch import Muon

    out = tmp_path / "mixed.pt"
    mp.spawn(_mixed_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    expected = {}
    for dtype in (torch.float64, torch.float32):
        model = _mixed_model().to(dtype)
        _mixed_steps(model, Muon([model[0].weight, model[2].weight], lr=0.05, ns_dtype=dtype))
        expected[dtype] = [model[0].weight.detach().double(), model[2].weight.detach().double()]
    for rank in (0, 1):
        got = torch.load(f"{out}.rank{rank}")
        assert sorted(got["routes"].values()) == ["local", "sharded"]
        for w, exact, plain in zip(got["weights"], expected[torch.float64], expected[torch.float32]):
            bound = 4 * (plain - exact).abs().max() + 4 * 2.0**-24 * exact.abs().max()
            assert (w.double() - exact).abs().max() <= bound


def _resume_worker(rank, world, port, folder, phase):
    """Phase "save" (2 ranks): 2 steps, a DCP checkpoint of model and optimizer, 1 more step.
    Phase "load" (4 ranks): the checkpoint loaded into a fresh model, 1 step."""
    init_worker(rank, world, port)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in model:
        if any(p.requires_grad for p in layer.parameters()):
            fully_shard(layer)
    fully_shard(model)
    opt = make_optimizer(model)
    x = batch()

    def step():
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()

    if phase == "save":
        step()
        step()
        model_state, optim_state = get_state_dict(model, opt)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=os.path.join(folder, "checkpoint"))
    else:
        model_state, optim_state = get_state_dict(model, opt)
        checkpoint = {"model": model_state, "optim": optim_state}
        dcp.load(checkpoint, checkpoint_id=os.path.join(folder, "checkpoint"))
        set_state_dict(model, opt, model_state_dict=checkpoint["model"], optim_state_dict=checkpoint["optim"])
    step()
    weights = [p.full_tensor().detach() for p in model.parameters()]
    if rank == 0:
        torch.save(weights, os.path.join(folder, f"{phase}.pt"))
    end_worker()


def test_dcp_resume_on_another_world_size_is_bitwise(tmp_path):
    """A distributed checkpoint (torch.distributed.checkpoint) saved by 2 ranks and loaded by 4
    resumes bitwise: the state is per shard or whole, and the owners orthogonalize each matrix
    alone, whatever the world size."""
    mp.spawn(_resume_worker, args=(2, free_port(), str(tmp_path), "save"), nprocs=2, join=True)
    mp.spawn(_resume_worker, args=(4, free_port(), str(tmp_path), "load"), nprocs=4, join=True)
    saved, loaded = torch.load(tmp_path / "save.pt"), torch.load(tmp_path / "load.pt")
    for a, b in zip(saved, loaded):
        assert torch.equal(a, b)


def _tp_model():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(12, 14, bias=False), nn.GELU(), nn.Linear(14, 9, bias=False))  # dp: 4 + 3, 5 + 4


def _tp_worker(rank, world, port, out):
    """torch's own tensor parallelism (ColwiseParallel, RowwiseParallel on "tp") under FSDP2 on
    "dp" of a 2 x 2 mesh: 2-D placements, (_StridedShard(0), Shard(0)) and (Shard(0), Shard(1))."""
    init_worker(rank, world, port)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from fastmuon.torch import Muon

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    model = parallelize_module(_tp_model(), mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    fully_shard(model, mesh=mesh["dp"])
    opt = Muon(model.parameters(), lr=0.05, weight_decay=0.1)
    _mixed_steps(model, opt)
    routes = [r.why for r in opt.explain()]
    torch.save({"weights": [p.full_tensor().detach() for p in model.parameters()], "routes": routes,
                "placements": [str(p.placements) for p in model.parameters()]}, f"{out}.rank{rank}")
    end_worker()


def test_tensor_parallel_under_fsdp2_equals_one_process(tmp_path):
    """A model parallelized by torch's own TP API and then sharded by FSDP2 steps as one process
    does, on every rank (same fp32 bound as above)."""
    from fastmuon.torch import Muon

    out = tmp_path / "tp.pt"
    mp.spawn(_tp_worker, args=(4, free_port(), str(out)), nprocs=4, join=True)
    expected = {}
    for dtype in (torch.float64, torch.float32):
        model = _tp_model().to(dtype)
        _mixed_steps(model, Muon(model.parameters(), lr=0.05, weight_decay=0.1, ns_dtype=dtype))
        expected[dtype] = [p.detach().double() for p in model.parameters()]
    for rank in range(4):
        got = torch.load(f"{out}.rank{rank}")
        for w, exact, plain in zip(got["weights"], expected[torch.float64], expected[torch.float32]):
            bound = 4 * (plain - exact).abs().max() + 4 * 2.0**-24 * exact.abs().max()
            assert (w.double() - exact).abs().max() <= bound, (rank, got["placements"])
    # RowwiseParallel's (Shard(0), Shard(1)) and ColwiseParallel's FSDP-over-TP
    # (_StridedShard(0), Shard(0)) are both exchanged by their owners, over the world
    assert all("owner all-to-all over a group of 4 ranks" in why for why in got["routes"]), got["routes"]
