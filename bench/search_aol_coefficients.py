"""Can a refit make AOL with fewer steps pass the quality panel? A grid over the Polar Express
recipe's design parameters (``lo``, ``safety``, ``cushion`` of
``fastmuon.coefficients.polar_express_coefficients``) for ``--steps`` AOL steps, each candidate
run in float64 (``fastmuon.quality.numpy_orthogonalize``, the exact iteration without rounding)
on every panel input, and scored as the panel scores presets: its worst ratio over the inputs to
``torch.optim.Muon``'s iteration (Jordan's Newton-Schulz, 5 steps), in relative Frobenius and in
spectral distance to the polar factor. A candidate passes where both worst ratios are <= 1.
Rows in bench/results/aol_refit.jsonl.

    PYTHONPATH=python python bench/search_aol_coefficients.py [--steps 4] [--lo 0.003 0.004 ...]
        [--safety 1.0 1.02 1.05] [--cushion 0.0 0.05 0.1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

from fastmuon import quality
from fastmuon.bench import environment
from fastmuon.coefficients import AOL_LO, polar_express_coefficients

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "aol_refit.jsonl")


def worst_ratios(entry: dict) -> dict:
    """``quality.ratios_to_anchor``'s entry as this script's rows record it: per metric, the
    worst ratio to the anchor and the input where it is reached."""
    return {m: {"worst_ratio": entry[f"worst_{m}"], "input": entry[f"worst_{m}_input"]} for m in quality.METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lo", nargs="+", type=float, default=[0.002, 0.003, 0.004, AOL_LO, 0.007])
    parser.add_argument("--safety", nargs="+", type=float, default=[1.0, 1.02, 1.05])
    parser.add_argument("--cushion", nargs="+", type=float, default=[0.0, 0.02, 0.05, 0.1])
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    inputs = quality.panel_inputs()
    polars = {name: quality.polar_factor(G) for name, G in inputs.items()}
    anchor_rows = quality.evaluate(quality.numpy_orthogonalize, quality.ANCHOR, inputs, polars=polars)
    env = environment()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    rows = []
    for lo, safety, cushion in itertools.product(args.lo, args.safety, args.cushion):
        coefficients = polar_express_coefficients(args.steps, lo=lo, safety=safety, cushion=cushion)
        candidate = quality.Preset(f"aol{args.steps}_refit", "aol", args.steps, coefficients)
        rows_of_candidate = quality.evaluate(quality.numpy_orthogonalize, candidate, inputs, polars=polars)
        entry = quality.ratios_to_anchor(anchor_rows + rows_of_candidate)[(candidate.name,)]
        worst, passes = worst_ratios(entry), entry["no_worse"]
        rows.append({"steps": args.steps, "lo": lo, "safety": safety, "cushion": cushion,
                     "coefficients": [list(abc) for abc in coefficients], "worst": worst, "passes": passes,
                     "anchor": quality.ANCHOR, "arithmetic": "float64", "environment": env})
        with open(args.out, "a") as f:  # a row as soon as measured: the grid takes minutes
            f.write(json.dumps(rows[-1]) + "\n")
        print(f"lo={lo:g} safety={safety:g} cushion={cushion:g}: worst ratio Frobenius "
              f"{worst['rel_fro']['worst_ratio']:.4f} ({worst['rel_fro']['input']}), spectral "
              f"{worst['spectral']['worst_ratio']:.4f} ({worst['spectral']['input']})"
              + ("  PASSES" if passes else ""), flush=True)
    best = min(rows, key=lambda r: max(w["worst_ratio"] for w in r["worst"].values()))
    print(f"{sum(r['passes'] for r in rows)} of {len(rows)} candidates pass; the closest: lo={best['lo']:g} "
          f"safety={best['safety']:g} cushion={best['cushion']:g}, worst ratios "
          f"{best['worst']['rel_fro']['worst_ratio']:.4f} / {best['worst']['spectral']['worst_ratio']:.4f}")


if __name__ == "__main__":
    main()
