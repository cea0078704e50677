"""Orthogonalization on one GPT-2-small block (and, with --large, a 4096 x 4096 and a
1024 x 4096 matrix): every fastmuon backend against a hand-written fp32 Newton-Schulz with
torch.addmm, in one run. Appends the rows to bench/results/orthogonalize.jsonl.

    python bench/bench_orthogonalize.py [--large] [--repeats 3] [--methods auto polar_express gram]
"""

from __future__ import annotations

import argparse
import os

from fastmuon import bench

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "orthogonalize.jsonl")
LARGE = ((1024, 4096), (4096, 4096))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["auto", "polar_express", "gram"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--skip-mlx-reference", action="store_true", help="it takes ~30 s a block here")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()

    provs = bench.providers(args.methods)
    if args.skip_mlx_reference:
        provs = [p for p in provs if p.name != "mlx/reference"]
    shapes = bench.GPT2_SMALL_BLOCK + (LARGE if args.large else ())
    rows = bench.with_ratios(bench.measure(provs, shapes, repeats=args.repeats, progress=True))
    peak = bench.sgemm_gflops()
    env = bench.environment()
    env["sgemm_gflops"] = peak
    print(f"{env['processor']}, {env['cores']} cores, {env['date']}; fp32 sgemm {peak:.0f} GFLOP/s")
    print(bench.format_table(rows, peak))
    print("\nwhole GPT-2-small block:")
    print(bench.format_totals(bench.block_totals(rows, bench.GPT2_SMALL_BLOCK)))
    bench.append_results(args.out, rows, env)
    print(f"\nappended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
