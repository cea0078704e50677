"""The demo's training run (full budget) with Muon under each orthogonalization preset, over
several seeds, in both frameworks: final validation loss (mean, spread) and training seconds, so
that a cheaper preset can be judged against today's default beyond seed noise.

    PYTHONPATH=bench python bench/compare_presets_demo.py [--seeds 0 1 2] [--frameworks torch mlx]
        [--presets polar_express5 aol4 aol5]

Presets: "polar_express5" (what the default, method="auto", runs on the demo's matrices, all under 256 rows),
"aol4" and "aol5" (method="aol", 4 and 5 steps). Each seed changes the
model's initialization and the batch order. Rows go to bench/results/demo_presets.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from demo.config import FULL  # noqa: E402
from demo.data import load_corpus  # noqa: E402
from demo.run import LEARNING_RATES, available_frameworks, train  # noqa: E402
from fastmuon.bench import environment  # noqa: E402

PRESETS = {"polar_express5": (), "aol4": (("method", "aol"), ("ns_steps", 4)),
           "aol5": (("method", "aol"), ("ns_steps", 5))}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "demo_presets.jsonl")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frameworks", nargs="+", default=None)
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=list(PRESETS))
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    corpus = load_corpus()
    env = environment()
    for framework in args.frameworks or available_frameworks():
        rates = LEARNING_RATES[framework]["muon"]
        summary = {}
        for preset in args.presets:
            options = PRESETS[preset]
            finals, seconds = [], []
            for seed in args.seeds:
                cfg = dataclasses.replace(FULL, seed=seed, muon_options=options)
                result = train(framework, cfg, corpus, "muon", rates["lr"], rates["adamw_lr"])
                finals.append(result["final_val_loss"])
                seconds.append(result["seconds"])
                row = {**env, "framework": framework, "preset": preset, "seed": seed, "steps": cfg.steps,
                       "final_val_loss": result["final_val_loss"], "seconds": result["seconds"]}
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{framework:5s} {preset:15s} seed {seed}: val loss {result['final_val_loss']:.4f} "
                      f"in {result['seconds']:.1f} s", flush=True)
            summary[preset] = (statistics.mean(finals), max(finals) - min(finals), statistics.mean(seconds))
        for preset, (mean, spread, secs) in summary.items():
            print(f"{framework:5s} {preset:15s} mean val loss {mean:.4f} (seed spread {spread:.4f}), "
                  f"{secs:.1f} s of training", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
