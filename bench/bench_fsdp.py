"""FSDP2 with fastmuon.torch.Muon on CPU (gloo), per rank and step: the bytes each rank sends and
receives, counted at the socket level, the transient memory, the step time and the optimizer
state's share, for 2 and 4 processes, the owner all-to-all against the gather design it
replaced (kept as the fallback for other placements; measured here by making every parameter
take it), a MoE stack sharded on its experts (orthogonalized in place: only the finiteness
all-reduce's bytes), and plain data parallelism on GPT-2-small's four Muon shapes, one matrix each
(the share-out by load, ``fastmuon.cluster.chunk_owners``). Appends to bench/results/fsdp.jsonl.

    python bench/bench_fsdp.py

Bytes: the kernel's per-socket counters (TCP_INFO bytes_acked and bytes_received, summed over
the process's TCP sockets) read between barriers around one steady-state step, less the bytes
of the barriers alone. The counter is checked against an all_to_all_single of known size in the
same run ("counter_check": measured / payload). The cost model's prediction
(``fastmuon.cluster.step_cost``) is recorded beside each measurement.
Memory: peak resident set during the step (VmHWM, reset through /proc/self/clear_refs) less the
resident set before it, with every allocation over 128 KiB mmap'ed (as bench_step_memory.py).
"""

from __future__ import annotations

import datetime
import os
import socket
import struct
import sys
import time

os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))  # inherited by the spawned ranks

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastmuon import bench
from fastmuon.cluster import step_cost
from fastmuon.torch import Muon

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fsdp.jsonl")
SIZE = 1024
TCP_INFO_BYTES = struct.Struct("=QQ")  # tcpi_bytes_acked, tcpi_bytes_received
TCP_INFO_OFFSET = 120  # of tcpi_bytes_acked in struct tcp_info (linux/tcp.h)


def socket_bytes():
    """(sent, received) payload bytes over this process's TCP sockets."""
    sent = received = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
                acked, got = TCP_INFO_BYTES.unpack_from(info, TCP_INFO_OFFSET)
                sent, received = sent + acked, received + got
        finally:
            sock.close()
    return sent, received


def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def counted(fn):
    """Bytes (sent, received) of ``fn()`` run between barriers, less the barriers' own."""
    dist.barrier()
    time.sleep(0.2)  # acknowledgements of what came before
    before = socket_bytes()
    fn()
    dist.barrier()
    time.sleep(0.2)
    after = socket_bytes()
    return after[0] - before[0], after[1] - before[1]


class Experts(nn.Module):
    def __init__(self, count: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(count, SIZE, SIZE) / SIZE**0.5)

    def forward(self, x):
        return torch.einsum("bi,eij->bj", x, self.weight)


class BlockBranches(nn.Module):
    """GPT-2-small's four Muon shapes once each, as independent branches of one input: the
    data-parallel case where every stack holds one matrix."""

    SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]

    def __init__(self):
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(cols, rows, bias=False) for rows, cols in self.SHAPES)
        self.inputs = [cols for _, cols in self.SHAPES]

    def forward(self, x):
        g = torch.Generator().manual_seed(1)
        return sum(b(torch.randn(x.shape[0], n, generator=g)).sum() for b, n in zip(self.branches, self.inputs))


def worker(rank, world, port, queue, design, matrices):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    from torch.distributed.fsdp import fully_shard

    if design == "gather":
        from fastmuon.torch.optim import owners

        owners.owner_layout = lambda p: None  # every parameter takes the gather path
    torch.manual_seed(0)
    if design == "replicated":  # plain weights, the same gradients on every rank (data parallel)
        model = BlockBranches()
    elif design == "experts":  # one (matrices, SIZE, SIZE) MoE stack: fully_shard splits its matrices
        model = Experts(matrices)
        fully_shard(model)
    else:
        model = nn.Sequential(*[nn.Linear(SIZE, SIZE, bias=False) for _ in range(matrices)])
        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    opt = Muon(model.parameters(), lr=0.02, allow_nd=True)
    x = torch.randn(4, SIZE)
    for _ in range(2):  # state created
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    barrier_bytes = counted(lambda: None)
    payload = 1 << 20  # per peer
    message = torch.zeros(payload // 4 * world)
    check = counted(lambda: dist.all_to_all_single(torch.empty_like(message), message))
    check_ratio = (check[0] - barrier_bytes[0]) / (payload * (world - 1))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set
    resident = kib("VmRSS")
    start = time.perf_counter()
    step_bytes = counted(opt.step)
    seconds = time.perf_counter() - start
    transient = (kib("VmHWM") - resident) * 1024
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    sent, received = (b - o for b, o in zip(step_bytes, barrier_bytes))
    rows = [None] * world
    dist.all_gather_object(rows, {"rank": rank, "sent": sent, "received": received, "transient": transient,
                                  "seconds": seconds})
    if rank == 0:
        shapes = BlockBranches.SHAPES if design == "replicated" else [(SIZE, SIZE)] * matrices
        model_cost = {"sent": 0, "transient": 0} if design == "experts" else step_cost(
            shapes, world, design, element_bytes=4)
        queue.put({"design": design, "world": world, "matrices": matrices, "muon_weight_bytes": weights,
                   "sent_per_rank": [r["sent"] for r in rows], "received_per_rank": [r["received"] for r in rows],
                   "transient_per_rank": [r["transient"] for r in rows],
                   "step_seconds": max(r["seconds"] for r in rows), "counter_check": check_ratio,
                   "model_bytes_per_rank": model_cost["sent"], "model_transient_per_rank": model_cost["transient"]})
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    rows = []
    for matrices, world, design in [(16, 2, "all-to-all"), (16, 2, "gather"), (16, 4, "all-to-all"),
                                    (16, 4, "gather"), (32, 4, "all-to-all"), (16, 4, "experts"),
                                    (4, 4, "replicated")]:
        queue = mp.get_context("spawn").SimpleQueue()
        mp.spawn(worker, args=(world, 29600 + world, queue, design, matrices), nprocs=world, join=True)
        row = queue.get()
        rows.append(row)
        w = row["muon_weight_bytes"]
        print(f"{design:>10} {matrices} x {SIZE}^2 fp32, {world} ranks: sent {max(row['sent_per_rank']) / w:.3f}x, "
              f"received {max(row['received_per_rank']) / w:.3f}x the Muon weights per rank "
              f"({max(row['received_per_rank'])} bytes) "
              f"(model {row['model_bytes_per_rank'] / w:.3f}x); transient {max(row['transient_per_rank']) / w:.2f}x "
              f"(model {row['model_transient_per_rank'] / w:.2f}x); step {row['step_seconds']:.3f} s; "
              f"counter check {row['counter_check']:.3f}", flush=True)
    bench.append_results(RESULTS, rows, bench.environment())


if __name__ == "__main__":
    sys.exit(main())
