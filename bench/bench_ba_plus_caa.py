"""`ba_plus_caa` on every backend against the plain matmul users would write, in one run (dense flop
count: fastmuon.bench.op_flops). Appends to bench/results/ba_plus_caa.jsonl.

    python bench/bench_ba_plus_caa.py [--repeats 5]
"""

import os

from fastmuon import bench

SHAPES = ((768, 768), (1024, 1024), (2048, 2048))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ba_plus_caa.jsonl")

if __name__ == "__main__":
    bench.op_main("ba_plus_caa", SHAPES, RESULTS)
