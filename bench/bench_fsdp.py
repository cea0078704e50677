"""FSDP2 with fastmuon.torch.MuonWithAdamW on CPU (gloo): per rank, the optimizer state's bytes
against one process's, the bytes each rank receives per step for the orthogonalization, and the
step time, for 2 and 4 processes. Appends to bench/results/fsdp.jsonl.

    python bench/bench_fsdp.py

The received bytes are computed (not captured) from the collectives the step issues: per Muon
matrix one all-gather of U (each rank receives the (world - 1) / world of the matrix it lacks)
and one scatter of the result from its owner (each of the other ranks receives its 1 / world
shard), so (world - 1) / world * (1 + 1 / world) of the Muon weights' bytes per rank and step:
O(parameters), never the whole model's weights at once.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastmuon import bench
from fastmuon.torch import MuonWithAdamW, muon_param_groups

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fsdp.jsonl")
STEPS = 3


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(768, 2304), nn.Linear(2304, 768), nn.Linear(768, 3072), nn.Linear(3072, 768))


def state_bytes(opt) -> int:
    return sum((t.to_local() if hasattr(t, "to_local") else t).numel() * t.element_size()
               for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor))


def worker(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = MuonWithAdamW(muon_param_groups(model, exclude=()), lr=0.02)
    x = torch.randn(8, 768)
    times = []
    for _ in range(STEPS):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    muon_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.ndim == 2)
    if rank == 0:
        queue.put({"world": world, "state_bytes_rank0": state_bytes(opt), "step_seconds": sorted(times)[STEPS // 2],
                   "received_bytes_per_step": int(muon_bytes * (world - 1) / world * (1 + 1 / world)),
                   "muon_weight_bytes": muon_bytes})
    dist.destroy_process_group()


def main() -> None:
    model = make_model()
    opt = MuonWithAdamW(muon_param_groups(model, exclude=()), lr=0.02)
    model(torch.randn(8, 768)).pow(2).mean().backward()
    opt.step()
    whole = state_bytes(opt)
    rows = []
    for world in (2, 4):
        queue = mp.get_context("spawn").SimpleQueue()
        mp.spawn(worker, args=(world, 29600 + world, queue), nprocs=world, join=True)
        row = queue.get()
        row["state_bytes_one_process"] = whole
        row["state_fraction"] = row["state_bytes_rank0"] / whole
        rows.append(row)
        print(f"{world} processes: rank 0 holds {row['state_fraction']:.3f} of one process's state; "
              f"receives {row['received_bytes_per_step'] / 2**20:.1f} MiB a step "
              f"({row['received_bytes_per_step'] / row['muon_weight_bytes']:.2f}x the Muon weights); "
              f"step {row['step_seconds']:.3f} s", flush=True)
    bench.append_results(RESULTS, rows, bench.environment())


if __name__ == "__main__":
    sys.exit(main())
