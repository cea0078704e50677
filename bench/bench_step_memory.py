"""Transient memory of one steady-state optimizer step on 12 x (Linear(768, 3072),
Linear(3072, 768)) weights, as a multiple of the Muon weights' bytes: fastmuon.torch.Muon with its
defaults against torch.optim.Muon. Each optimizer runs in a fresh process: after two steps (state
created), the peak resident set is reset and a third step is measured (VmHWM - VmRSS before it;
every allocation over 128 KiB is mmap'ed, by a fixed MALLOC_MMAP_THRESHOLD_ in the child's
environment, so freed memory leaves the resident set; with glibc's default, dynamic threshold,
freed blocks may stay resident and the figure varied 0-0.8x from step to step).
Appends to bench/results/step_memory.jsonl.

    python bench/bench_step_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fastmuon import bench, cpu

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "step_memory.jsonl")
OPTIMIZERS = {
    "fastmuon.torch.Muon (defaults)": "from fastmuon.torch import Muon; make = lambda ps: Muon(ps, lr=0.02)",
    "torch.optim.Muon": "import torch; make = lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0)",
}

CHILD = r"""
import json, torch
{setup}

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))

torch.manual_seed(0)
params = []
for _ in range(12):
    params += [torch.nn.Parameter(torch.randn(3072, 768) * 0.02), torch.nn.Parameter(torch.randn(768, 3072) * 0.02)]
for p in params:
    p.grad = torch.randn_like(p)
opt = make(params)
opt.step(); opt.step()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set to the current one
before = kib("VmRSS:")
opt.step()
peak = kib("VmHWM:")
weights = sum(p.numel() * p.element_size() for p in params)
print(json.dumps({{"transient_bytes": (peak - before) * 1024, "weight_bytes": weights}}))
"""


def main() -> None:
    rows = []
    for name, setup in OPTIMIZERS.items():
        out = subprocess.run([sys.executable, "-c", CHILD.format(setup=setup)], capture_output=True, text=True,
                             check=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
        row = {"optimizer": name, **json.loads(out.stdout.strip().splitlines()[-1])}
        row["transient_vs_weights"] = row["transient_bytes"] / row["weight_bytes"]
        rows.append(row)
        print(f"{name:34s} transient {row['transient_bytes'] / 2**20:8.1f} MiB = "
              f"{row['transient_vs_weights']:.2f}x the weights", flush=True)
    print(cpu.describe())
    bench.append_results(RESULTS, rows, bench.environment())


if __name__ == "__main__":
    main()
