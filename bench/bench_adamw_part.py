"""MuonWithAdamW's AdamW part against torch.optim.AdamW, on GPT-2 small's AdamW parameters:
the token and position tables (50257 x 768, 1024 x 768), and every bias and LayerNorm vector of
its 12 blocks and final norm (the 1-D parameters muon_param_groups gives AdamW). One step of the
group, steady state (state created), median of ``--repeats`` timed steps, every implementation
in the same run: fastmuon's impl="fused" (torch's fused AdamW kernel, what "auto" takes on the
CPU), "foreach" and "per_parameter", and torch.optim.AdamW's default, foreach=True and
fused=True. Appends to bench/results/adamw_part.jsonl.

    python bench/bench_adamw_part.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fastmuon.bench_report import append_results, environment
from fastmuon.torch import MuonWithAdamW

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "adamw_part.jsonl")
HYPER = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def gpt2_small_adamw_shapes():
    block = [(2304,), (768,), (3072,), (768,)] + [(768,)] * 4  # linear biases; two LayerNorms' weight and bias
    return [(50257, 768), (1024, 768)] + block * 12 + [(768,), (768,)]


OPTIMIZERS = {
    'fastmuon impl="fused" (auto)': lambda ps: MuonWithAdamW([{"params": ps, "use_muon": False, **HYPER}],
                                                             impl="fused"),
    'fastmuon impl="foreach"': lambda ps: MuonWithAdamW([{"params": ps, "use_muon": False, **HYPER}], impl="foreach"),
    'fastmuon impl="per_parameter"': lambda ps: MuonWithAdamW([{"params": ps, "use_muon": False, **HYPER}],
                                                              impl="per_parameter"),
    "torch.optim.AdamW (default)": lambda ps: torch.optim.AdamW(ps, **HYPER),
    "torch.optim.AdamW foreach=True": lambda ps: torch.optim.AdamW(ps, foreach=True, **HYPER),
    "torch.optim.AdamW fused=True": lambda ps: torch.optim.AdamW(ps, fused=True, **HYPER),
}


def time_step(make, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in gpt2_small_adamw_shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = make(params)
    opt.step()  # the state
    opt.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    seconds = {name: time_step(make, args.repeats) for name, make in OPTIMIZERS.items()}
    anchor = seconds["torch.optim.AdamW (default)"]
    params = sum(torch.Size(s).numel() for s in gpt2_small_adamw_shapes())
    rows = [{"bench": "adamw_part", "optimizer": name, "params": params, "threads": torch.get_num_threads(),
             "seconds": s, "vs_torch_adamw_default": s / anchor, "repeats": args.repeats}
            for name, s in seconds.items()]
    for r in rows:
        print(f"{r['optimizer']:32s} {1e3 * r['seconds']:8.1f} ms  {r['vs_torch_adamw_default']:5.2f}x torch.optim.AdamW")
    append_results(args.out, rows, environment())


if __name__ == "__main__":
    main()
