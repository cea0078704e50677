"""`xxt` on every backend against the plain matmul users would write, in one run (dense flop
count: fastmuon.bench.op_flops). Appends to bench/results/xxt.jsonl.

    python bench/bench_xxt.py [--repeats 5]
"""

import os

from fastmuon import bench

SHAPES = ((768, 768), (768, 3072), (2048, 4096))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "xxt.jsonl")

if __name__ == "__main__":
    bench.op_main("xxt", SHAPES, RESULTS)
