"""Where the eager Muon step's time goes on a CUDA GPU: fastmuon's default step against
torch.optim.Muon on GPT-2 small's Muon weights (``bench_triton_gpu.gpt2_small_muon_params``),
timed with ``triton.testing.do_bench`` and profiled with ``torch.profiler`` (ops by self CPU
time and by self device time, and launch counts). Also times fastmuon's list-wide ("foreach")
step with its CPU-only restriction lifted, to see what the per-parameter ops cost on the GPU.

    python bench/profile_gpu_step.py [--out FILE.jsonl]

Rows (provider, ms, launches per step) go to --out; the tables are printed.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to profile")
        return 0
    from torch.profiler import ProfilerActivity, profile
    from triton.testing import do_bench

    from bench_triton_gpu import gpt2_small_muon_params, make_row, step_shape_and_fields
    from fastmuon import bench
    from fastmuon.torch import Muon
    from fastmuon.torch.optim import pipeline

    env = bench.environment()
    env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    shape, extra = step_shape_and_fields()
    cpu_only = pipeline.foreach_refusal

    def foreach_on_cuda(params, lr):
        """foreach_refusal without its CPU-only clause (for this measurement only)."""
        why = cpu_only(params, lr)
        return None if why is not None and why.startswith("a cuda tensor") else why

    providers = {
        "torch.optim.Muon": lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0),
        "fastmuon_auto": lambda ps: Muon(ps, lr=0.02),
        "fastmuon_aol4": lambda ps: Muon(ps, lr=0.02, method="aol", ns_steps=4),
        "fastmuon_foreach_on_cuda": lambda ps: Muon(ps, lr=0.02, impl="foreach"),
    }
    for name, make in providers.items():
        pipeline.foreach_refusal = foreach_on_cuda if name == "fastmuon_foreach_on_cuda" else cpu_only
        try:
            opt = make(gpt2_small_muon_params(torch))
            ms = do_bench(opt.step, return_mode="median")
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    opt.step()
                torch.cuda.synchronize()
            events = prof.key_averages()
            launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                  "cudaLaunchKernelExC", "cuLaunchKernelEx")) / 3
            syncs = sum(e.count for e in events if "Synchronize" in e.key or e.key == "cudaMemcpyAsync") / 3
            print(f"\n=== {name}: {ms:.2f} ms a step, {launches:.0f} launches, {syncs:.0f} syncs/copies a step",
                  flush=True)
            print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))
            print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=48))
            row = make_row(env, "optimizer_step", shape, "bfloat16", name, ms, launches_per_step=launches,
                           syncs_per_step=syncs, **extra)
            if args.out:
                bench.append_results(args.out, [row], {})
        except Exception as exc:  # one provider's failure must not cost the others
            print(f"FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
        finally:
            pipeline.foreach_refusal = cpu_only
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
