"""Learning-rate sweep behind the demo's LEARNING_RATES (bench/demo/run.py).

For each framework: AdamW alone over ADAMW_GRID; then Muon and NorMuon over MUON_GRID with
their AdamW part (embeddings, head, norms) at AdamW's best lr. Same model, data, seed and step
budget as the demo (`make demo`) (the full config), so the baseline gets the same care as
the optimizers it is compared with. Writes bench/results/lr_sweep.json. ``--seeds`` averages each
lr's final loss over several seeds, ``--adamw-grid`` and ``--muon-grid`` replace the grids
(bench/results/lr_sweep_seeds.json: three seeds, finer grids, torch).

``--split`` asks what the demo's comparison leaves out: Muon has two learning rates (hidden
matrices, and its AdamW part), AdamW alone one. It sweeps both lrs of Muon and NorMuon
(MUON_GRID x SPLIT_GRID) and of "adamw_split", AdamW with the same routing and two lrs
(ADAMW_GRID x SPLIT_GRID), each over ``--seeds``; then times each one's best setting as the demo
does, and reports when Muon and NorMuon reach adamw_split's final validation loss. Writes
bench/results/lr_sweep_split.json (an entry per framework; a run keeps the others').

    python bench/sweep_lr.py [--frameworks torch mlx] [--seeds 0 1 2] [--adamw-grid ...] [--muon-grid ...]
    python bench/sweep_lr.py --split [--frameworks torch] [--seeds 0 1 2] [--split-grid 0.01 0.03 0.1 0.3]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics

from demo.config import FULL
from demo.data import load_corpus
from demo.run import available_frameworks, seconds_to_reach, steps_to_reach, train

from fastmuon.bench import environment

ADAMW_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
MUON_GRID = (0.01, 0.02, 0.05, 0.1)
# the second lr (embeddings, head, norms, positions) of the --split sweep
SPLIT_GRID = (0.01, 0.03, 0.1, 0.3)
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def final_losses(framework: str, corpus, seeds, name: str, lr: float, adamw_lr: float, label: str) -> list:
    """The full demo run's final validation loss for each of ``seeds``; prints their mean (and
    each, with more than one seed) after ``label``."""
    losses = [train(framework, dataclasses.replace(FULL, seed=seed), corpus, name, lr, adamw_lr)["final_val_loss"]
              for seed in seeds]
    print(f"{framework} {name} {label}: {statistics.fmean(losses):.4f}"
          + (f" ({', '.join(f'{x:.4f}' for x in losses)})" if len(seeds) > 1 else ""), flush=True)
    return losses


def sweep(framework: str, corpus, seeds, adamw_grid, muon_grid) -> dict:
    """AdamW alone over ``adamw_grid``, then Muon and NorMuon over ``muon_grid`` with their AdamW
    part at AdamW's best; each lr's mean final validation loss over ``seeds``."""
    runs = {"adamw": {}, "muon": {}, "normuon": {}}
    seed_losses = {name: {} for name in runs}

    def mean_final(name: str, lr: float, adamw_lr: float) -> float:
        seed_losses[name][str(lr)] = final_losses(framework, corpus, seeds, name, lr, adamw_lr, f"lr={lr:g}")
        return statistics.fmean(seed_losses[name][str(lr)])

    for lr in adamw_grid:
        runs["adamw"][lr] = mean_final("adamw", lr, 0.0)
    adamw_best = min(runs["adamw"], key=runs["adamw"].get)
    for name in ("muon", "normuon"):
        for lr in muon_grid:
            runs[name][lr] = mean_final(name, lr, adamw_best)
    best = {"adamw": {"lr": adamw_best}}
    for name in ("muon", "normuon"):
        best[name] = {"lr": min(runs[name], key=runs[name].get), "adamw_lr": adamw_best}
    result = {"final_val_loss": {k: {str(lr): v for lr, v in d.items()} for k, d in runs.items()}, "best": best}
    if len(seeds) > 1:
        result["seed_final_val_loss"] = seed_losses
    return result


def sweep_split(framework: str, corpus, seeds, adamw_grid, muon_grid, split_grid) -> dict:
    """Both lrs of adamw_split, Muon and NorMuon, mean final validation loss over ``seeds``;
    then each best setting trained and timed once (seed ``seeds[0]``), and the steps and seconds
    Muon and NorMuon take to reach adamw_split's final loss, against adamw_split's own."""
    grids = {"adamw_split": adamw_grid, "muon": muon_grid, "normuon": muon_grid}
    runs, best = {}, {}
    for name, grid in grids.items():
        runs[name] = {}
        for lr, adamw_lr in itertools.product(grid, split_grid):
            losses = final_losses(framework, corpus, seeds, name, lr, adamw_lr, f"lr={lr:g} adamw_lr={adamw_lr:g}")
            runs[name][f"{lr:g},{adamw_lr:g}"] = {"mean": statistics.fmean(losses), "seeds": losses}
        lr, adamw_lr = min(runs[name], key=lambda key: runs[name][key]["mean"]).split(",")
        best[name] = {"lr": float(lr), "adamw_lr": float(adamw_lr)}
    timed = {name: train(framework, dataclasses.replace(FULL, seed=seeds[0]), corpus, name, rates["lr"],
                         rates["adamw_lr"]) for name, rates in best.items()}
    target, baseline_seconds = timed["adamw_split"]["final_val_loss"], timed["adamw_split"]["seconds"]
    for name, res in timed.items():
        seconds = seconds_to_reach(res["curve"], target)
        best[name].update(final_val_loss=res["final_val_loss"], seconds=res["seconds"],
                          steps_to_adamw_split_final=steps_to_reach(res["curve"], target),
                          seconds_to_adamw_split_final=seconds,
                          time_ratio=None if seconds is None else seconds / baseline_seconds)
    return {"final_val_loss": runs, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frameworks", nargs="+", default=available_frameworks())
    parser.add_argument("--split", action="store_true", help="sweep two lrs each, AdamW with Muon's routing too")
    parser.add_argument("--seeds", nargs="+", type=int, default=[FULL.seed], help="seeds to average")
    parser.add_argument("--adamw-grid", nargs="+", type=float, default=list(ADAMW_GRID),
                        help="AdamW's lrs (default: %(default)s)")
    parser.add_argument("--muon-grid", nargs="+", type=float, default=list(MUON_GRID),
                        help="Muon's and NorMuon's lrs (default: %(default)s)")
    parser.add_argument("--split-grid", nargs="+", type=float, default=list(SPLIT_GRID),
                        help="--split: the second lr's grid (default: %(default)s)")
    parser.add_argument("--out", default=None, help="default: bench/results/lr_sweep[_split].json")
    args = parser.parse_args()
    out = args.out or os.path.join(RESULTS_DIR, "lr_sweep_split.json" if args.split else "lr_sweep.json")
    corpus = load_corpus()
    grids = {"adamw": args.adamw_grid, "muon": args.muon_grid}
    if not args.split:
        result = {"environment": environment(), "config": FULL.__dict__, "grids": grids, "seeds": args.seeds}
        for fw in args.frameworks:
            result[fw] = sweep(fw, corpus, args.seeds, args.adamw_grid, args.muon_grid)
    else:  # one entry per framework, each with its own environment and grids; others kept
        result = {"config": FULL.__dict__}
        if os.path.exists(out):
            with open(out) as f:
                result = json.load(f)
        for fw in args.frameworks:
            result[fw] = {"environment": environment(), "grids": dict(grids, split=args.split_grid, seeds=args.seeds),
                          **sweep_split(fw, corpus, args.seeds, args.adamw_grid, args.muon_grid, args.split_grid)}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({fw: result[fw]["best"] for fw in args.frameworks}, indent=1))


if __name__ == "__main__":
    main()
