"""A/B timing of fastmuon.torch.Muon's default CPU step between two source trees (e.g. before
and after a refactor), in alternating processes on one machine, so that machine noise lands on
both sides: the GPT-2-small block's four matrices and the demo's eight small ones; and of
``orthogonalize`` with its defaults on ``bench_cpu_paths.py``'s sizes (``--orthogonalize``).

    python bench/bench_step_ab.py OLD_PYTHON_DIR NEW_PYTHON_DIR [--rounds 4] [--out FILE]

Each round runs one process per tree (order alternating); each process times --repeats steps
after two warm-ups and prints the medians. Rows (median over rounds, and every round) go to
--out (default bench/results/step_ab.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

MODELS = {
    "gpt2-block": ((2304, 768), (768, 768), (3072, 768), (768, 3072)),
    "demo": ((192, 64), (64, 64), (256, 64), (64, 256)) * 2,
}

# bench_cpu_paths.py's sizes, (batch, m, n), but its largest
ORTHOGONALIZE_SHAPES = ((2, 8, 8), (2, 64, 256), (8, 64, 256), (1, 128, 512), (4, 128, 512), (1, 256, 256),
                        (1, 512, 512), (1, 768, 768), (1, 768, 3072))

ORTHOGONALIZE_CHILD = r"""
import json, sys, time
import numpy as np, torch
from fastmuon.torch import orthogonalize
shapes = json.loads(sys.argv[1]); repeats = int(sys.argv[2])
gen = torch.Generator().manual_seed(0)
out = []
for shape in shapes:
    G = torch.randn(shape, generator=gen)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter(); orthogonalize(G); elapsed = time.perf_counter() - start
        if i >= 2:
            times.append(elapsed)
    out.append(float(np.median(times)))
print(json.dumps(out))
"""

CHILD = r"""
import json, sys, time
import numpy as np, torch
from fastmuon.torch import Muon
shapes = json.loads(sys.argv[1]); repeats = int(sys.argv[2])
gen = torch.Generator().manual_seed(0)
params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
grads = [torch.randn(s, generator=gen) for s in shapes]
opt = Muon(params)
times = []
for i in range(repeats + 2):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    start = time.perf_counter(); opt.step(); elapsed = time.perf_counter() - start
    if i >= 2:
        times.append(elapsed)
print(json.dumps(float(np.median(times))))
"""


def run(tree: str, shapes, repeats: int, child: str = CHILD):
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", child, json.dumps(shapes), str(repeats)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--orthogonalize", action="store_true", help="orthogonalize per size instead of the step")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "step_ab.jsonl"))
    args = parser.parse_args()
    from fastmuon import bench

    info = bench.environment()
    if args.orthogonalize:
        times = {"old": [], "new": []}
        for r in range(args.rounds):
            for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                times[side].append(run(getattr(args, side), ORTHOGONALIZE_SHAPES, args.repeats, ORTHOGONALIZE_CHILD))
        for i, shape in enumerate(ORTHOGONALIZE_SHAPES):
            old, new = (float(np.median([t[i] for t in times[s]])) for s in ("old", "new"))
            print(f"orthogonalize {str(shape):16s} old {old * 1e3:9.3f} ms  new {new * 1e3:9.3f} ms  new/old {new / old:.3f}")
            with open(args.out, "a") as f:
                f.write(json.dumps(dict(info, op="orthogonalize", shape=shape, old_s=old, new_s=new, ratio=new / old))
                        + "\n")
        return 0
    for model, shapes in MODELS.items():
        times = {"old": [], "new": []}
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for side in order:
                times[side].append(run(getattr(args, side), shapes, args.repeats if model == "demo" else 3))
        old, new = (sorted(times[s])[len(times[s]) // 2] for s in ("old", "new"))
        row = dict(info, model=model, old_s=old, new_s=new, ratio=new / old, rounds=times)
        print(f"{model:10s} old {old * 1e3:8.2f} ms  new {new * 1e3:8.2f} ms  new/old {new / old:.3f}")
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
