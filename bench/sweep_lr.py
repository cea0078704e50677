"""Learning-rate sweep behind the demo's LEARNING_RATES (bench/demo/run.py).

For each framework: AdamW alone over ADAMW_GRID; then Muon and NorMuon over MUON_GRID with
their AdamW part (embeddings, head, norms) at AdamW's best lr. Same model, data, seed and step
budget as the demo (`make demo`) (the full config), so the baseline gets the same care as
the optimizers it is compared with. Writes bench/results/lr_sweep.json.

    python bench/sweep_lr.py [--frameworks torch mlx]
"""

from __future__ import annotations

import argparse
import json
import os

from demo.config import FULL
from demo.data import load_corpus
from demo.run import available_frameworks, train

from fastmuon.bench import environment

ADAMW_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
MUON_GRID = (0.01, 0.02, 0.05, 0.1)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "lr_sweep.json")


def sweep(framework: str, corpus) -> dict:
    runs = {"adamw": {}, "muon": {}, "normuon": {}}
    for lr in ADAMW_GRID:
        runs["adamw"][lr] = train(framework, FULL, corpus, "adamw", lr, 0.0)["final_val_loss"]
        print(f"{framework} adamw lr={lr:g}: {runs['adamw'][lr]:.4f}", flush=True)
    adamw_best = min(runs["adamw"], key=runs["adamw"].get)
    for name in ("muon", "normuon"):
        for lr in MUON_GRID:
            runs[name][lr] = train(framework, FULL, corpus, name, lr, adamw_best)["final_val_loss"]
            print(f"{framework} {name} lr={lr:g}: {runs[name][lr]:.4f}", flush=True)
    best = {"adamw": {"lr": adamw_best}}
    for name in ("muon", "normuon"):
        best[name] = {"lr": min(runs[name], key=runs[name].get), "adamw_lr": adamw_best}
    return {"final_val_loss": {k: {str(lr): v for lr, v in d.items()} for k, d in runs.items()}, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frameworks", nargs="+", default=available_frameworks())
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    corpus = load_corpus()
    result = {"environment": environment(), "config": FULL.__dict__, "grids": {"adamw": ADAMW_GRID, "muon": MUON_GRID}}
    for fw in args.frameworks:
        result[fw] = sweep(fw, corpus)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({fw: result[fw]["best"] for fw in args.frameworks}, indent=1))


if __name__ == "__main__":
    main()
