"""One optimizer step on the four weight matrices of a GPT-2-small block (c_attn 768x2304,
c_proj 768x768, c_fc 768x3072, mlp c_proj 3072x768, as (out, in) weights), or with
``--model demo`` on the demo model's eight small matrices, fastmuon against what users would
pick instead, in one run:

  torch: fastmuon.torch.Muon with its defaults ("auto": method "auto", backend "auto" ->
         native on CPU where it computes in fp32), with method="polar_express" (Polar Express on
         every matrix) and method="aol" with 4 and 5 steps, its reference backend,
         torch.optim.Muon (Newton-Schulz in bf16 on every device);
  mlx:   fastmuon.mlx.Muon with its defaults (native on CPU, the fused step), the same with
         impl="per_parameter" (MLX ops around the native orthogonalization), with
         method="polar_express" and method="aol" with 4 and 5 steps, its reference backend,
         mlx.optimizers.Muon (Newton-Schulz in the gradient dtype, here fp32); and with bf16
         weights and gradients, fastmuon's defaults, its "per_parameter" step and
         mlx.optimizers.Muon.

Median of --repeats steps after one warm-up step, the providers taking turns in every repeat
(timed one after another, a burst of machine noise would land on one provider only); the
frameworks one after the other, as a user runs one; for fastmuon's torch steps also the share of
the step spent outside orthogonalization. Each row also records the median minor page faults of
a step (``page_faults``, Linux and macOS): a step whose large temporaries land on pages the C
library has just returned to the system pays a fault per 4 KiB page, which on this machine
moved whole steps by 30-50% between runs. Appends to bench/results/optimizer_step.jsonl.

    python bench/bench_optimizer_step.py [--model gpt2-block|demo] [--repeats 3] [--skip-slow]
                                         [--frameworks torch mlx]
"""

from __future__ import annotations

import argparse
import os
import time

try:
    import resource
except ImportError:  # Windows: no fault counts
    resource = None

import numpy as np

from fastmuon import bench

MODELS = {
    "gpt2-block": ((2304, 768), (768, 768), (3072, 768), (768, 3072)),
    # the demo's two layers (d_model 64): qkv, proj, fc, fc_out of each
    "demo": ((192, 64), (64, 64), (256, 64), (64, 256)) * 2,
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "optimizer_step.jsonl")


def outside_orthogonalize(step, repeats: int) -> float:
    """Share of a fastmuon torch step spent outside its orthogonalize calls (median). A step on
    the native kernels is one call that also makes the momentum and the update (elementwise
    passes on the threads, next to the orthogonalization): that call counts as inside."""
    import importlib

    ortho_module = importlib.import_module("fastmuon.torch.orthogonalize")
    local = importlib.import_module("fastmuon.torch.optim.local")  # where the fused step calls the native one
    real_stacks = ortho_module.orthogonalize_stacks
    real_native = local.native_muon_step
    inside = [0.0]

    def timed(real):
        def call(*args, **kwargs):
            start = time.perf_counter()
            result = real(*args, **kwargs)
            inside[0] += time.perf_counter() - start
            return result
        return call

    ortho_module.orthogonalize_stacks = timed(real_stacks)
    local.native_muon_step = timed(real_native)
    try:
        shares = []
        for _ in range(repeats):
            inside[0] = 0.0
            start = time.perf_counter()
            step()
            shares.append(1.0 - inside[0] / (time.perf_counter() - start))
    finally:
        ortho_module.orthogonalize_stacks = real_stacks
        local.native_muon_step = real_native
    return float(np.median(shares))


def torch_cases(grads, skip_slow: bool):
    import torch

    from fastmuon.torch import Muon

    def make(factory):
        params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g)
        opt = factory(params)
        return opt.step

    yield "torch fastmuon.Muon (auto)", make(lambda ps: Muon(ps, lr=0.02))
    yield "torch fastmuon.Muon (polar_express, 5 steps)", make(lambda ps: Muon(ps, lr=0.02, method="polar_express"))
    yield "torch fastmuon.Muon (aol, 4 steps)", make(lambda ps: Muon(ps, lr=0.02, method="aol", ns_steps=4))
    yield "torch fastmuon.Muon (aol, 5 steps)", make(lambda ps: Muon(ps, lr=0.02, method="aol", ns_steps=5))
    yield "torch fastmuon.Muon (aol, 4 steps, bf16)", make(
        lambda ps: Muon(ps, lr=0.02, method="aol", ns_steps=4, ns_dtype=torch.bfloat16))
    yield "torch fastmuon.Muon (reference)", make(lambda ps: Muon(ps, lr=0.02, backend="reference"))
    if not skip_slow and hasattr(torch.optim, "Muon"):
        yield "torch.optim.Muon (bf16 NS)", make(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0))


def mlx_cases(grads, skip_slow: bool):
    import mlx.core as mx
    import mlx.optimizers as optim

    from fastmuon.mlx import Muon

    def make(opt, dtype=mx.float32):
        params = {f"w{i}": mx.zeros(g.shape, dtype) for i, g in enumerate(grads)}
        gtree = {f"w{i}": mx.array(g).astype(dtype) for i, g in enumerate(grads)}

        def step():
            nonlocal params
            params = opt.apply_gradients(gtree, params)
            mx.eval(params, opt.state)

        return step

    yield "mlx fastmuon.Muon (auto)", make(Muon(0.02))
    yield "mlx fastmuon.Muon (auto, impl=per_parameter)", make(Muon(0.02, impl="per_parameter"))
    yield "mlx fastmuon.Muon (polar_express, 5 steps)", make(Muon(0.02, method="polar_express"))
    yield "mlx fastmuon.Muon (aol, 4 steps)", make(Muon(0.02, method="aol", ns_steps=4))
    yield "mlx fastmuon.Muon (aol, 5 steps)", make(Muon(0.02, method="aol", ns_steps=5))
    yield "mlx fastmuon.Muon (defaults, bf16 weights)", make(Muon(0.02), mx.bfloat16)
    yield "mlx fastmuon.Muon (impl=per_parameter, bf16 weights)", make(Muon(0.02, impl="per_parameter"), mx.bfloat16)
    if not skip_slow:
        yield "mlx.optimizers.Muon (bf16 weights)", make(optim.Muon(0.02, weight_decay=0.0), mx.bfloat16)
        yield "mlx fastmuon.Muon (reference)", make(Muon(0.02, backend="reference"))
        yield "mlx.optimizers.Muon", make(optim.Muon(0.02, weight_decay=0.0))


def counting_faults(step, counts: list):
    """``step`` that also appends its minor page faults to ``counts`` (nothing without
    ``resource``)."""
    if resource is None:
        return step

    def run():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = step()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-slow", action="store_true", help="skip the ~30-60 s a step baselines")
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-block", help="which weight shapes")
    parser.add_argument("--frameworks", nargs="+", choices=("torch", "mlx"), default=("torch", "mlx"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shapes = MODELS[args.model]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    rows = []
    chosen = {"torch": torch_cases, "mlx": mlx_cases}
    for cases in (chosen[name] for name in args.frameworks):  # one framework at a time: a user runs one
        try:
            steps = dict(cases(grads, args.skip_slow))
        except ImportError as exc:
            print(f"skipped: {exc}")
            continue
        faults = {name: [] for name in steps}
        counted = {name: counting_faults(step, faults[name]) for name, step in steps.items()}
        for name, seconds in bench.interleaved_times(counted, args.repeats)[0].items():
            row = {"provider": name, "model": args.model, "shapes": [list(s) for s in shapes], "seconds": seconds}
            if faults[name]:
                row["page_faults"] = int(np.median(faults[name][1:] or faults[name]))  # after the warm-up
            outside = ""
            if name.startswith("torch fastmuon"):
                row["outside_orthogonalize"] = outside_orthogonalize(steps[name], args.repeats)
                outside = f"  ({row['outside_orthogonalize']:.0%} of it outside orthogonalize)"
            rows.append(row)
            faulted = f"  [{row['page_faults']} page faults]" if "page_faults" in row else ""
            print(f"{name:34s} {seconds:9.4f} s/step{outside}{faulted}", flush=True)
    base = {r["provider"].split()[0]: r["seconds"] for r in rows if "(auto)" in r["provider"]}
    print("\nspeed-up of fastmuon (auto) over each provider, same framework:")
    for r in rows:
        fw = r["provider"].split()[0].split(".")[0]
        r["fastmuon_speedup"] = r["seconds"] / base[fw] if fw in base else None
        print(f"  {r['provider']:34s} {r['fastmuon_speedup']:8.1f}x")
    env = bench.environment()
    # glibc's allocator settings change how often a step faults (see the docstring)
    env["malloc_env"] = {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")}
    bench.append_results(args.out, rows, env)
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
