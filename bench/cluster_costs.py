"""The cost model (``fastmuon.cluster.step_cost``) for Llama-2-7B and Llama-2-70B's Muon matrices
in bf16 at 8, 64 and 1024 ranks: bytes each rank sends per step, peak transient memory and
orthogonalization flops per rank, owner all-to-all against the gather design. Writes
bench/results/cluster_costs.md (the README's table). The model's bytes equal the socket
counters of bench/bench_fsdp.py at 2 and 4 ranks; its memory constants are read off the same runs.

    python bench/cluster_costs.py
"""

from __future__ import annotations

import os
import sys

from fastmuon.cluster import MODELS, step_cost

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cluster_costs.md")
WORLDS = (8, 64, 1024)


def gb(x: float) -> str:
    return f"{x / 1e9:.3g} GB" if x >= 1e8 else f"{x / 1e6:.3g} MB"


def main() -> None:
    lines = ["| model (Muon weights, bf16) | ranks | sent per rank: all-to-all | gather | less | "
             "transient per rank: all-to-all | gather | owner TFLOP per rank: all-to-all | gather |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, shapes in MODELS.items():
        weights = 2 * sum(r * c for r, c in shapes)
        for world in WORLDS:
            new, old = (step_cost(shapes, world, design, element_bytes=2) for design in ("all-to-all", "gather"))
            lines.append(f"| {name} ({gb(weights)}) | {world} | {gb(new['sent'])} | {gb(old['sent'])} | "
                         f"{old['sent'] / new['sent']:.0f}x | {gb(new['transient'])} | {gb(old['transient'])} | "
                         f"{new['flops'] / 1e12:.3g} | {old['flops'] / 1e12:.3g} |")
    table = "\n".join(lines) + "\n"
    with open(OUT, "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
