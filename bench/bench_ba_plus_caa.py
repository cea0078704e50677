"""`ba_plus_caa` on every backend against the plain matmul users would write, in one run; dense flop
count stated in fastmuon.bench.op_flops. Appends to bench/results/ba_plus_caa.jsonl.

    python bench/bench_ba_plus_caa.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os

from fastmuon import bench

OP = "ba_plus_caa"
SHAPES = ((768, 768), (1024, 1024), (2048, 2048))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{OP}.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    rows = bench.measure_op(OP, SHAPES, repeats=args.repeats)
    peak = bench.sgemm_gflops()
    env = bench.environment()
    env["sgemm_gflops"] = peak
    print(f"{env['processor']}, {env['cores']} cores, {env['date']}; fp32 sgemm {peak:.0f} GFLOP/s")
    print(bench.format_op_table(rows, peak))
    bench.append_results(args.out, rows, env)
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
