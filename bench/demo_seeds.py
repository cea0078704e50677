"""How much the demo's headline, "Muon reaches AdamW's final validation loss in x of AdamW's wall
time", moves with the seed (initialization and batch order) and with how often it is evaluated.

For each framework and seed: the demo's runs (full config, the demo's learning rates, or the
``best`` of a bench/sweep_lr.py result with ``--rates``), evaluated every ``--eval-every`` steps
instead of the demo's 15; for Muon and NorMuon the first evaluated step at or below AdamW's final
validation loss of the same seed, that step over AdamW's step budget, and the training seconds to
it over AdamW's training seconds. Writes bench/results/demo_seeds.json (an entry per framework;
a run keeps the others').

    PYTHONPATH=python:bench python bench/demo_seeds.py [--frameworks torch] [--seeds 0 1 2]
        [--eval-every 5] [--rates bench/results/lr_sweep_seeds.json] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics

from demo.config import FULL
from demo.data import load_corpus
from demo.run import LEARNING_RATES, available_frameworks, mark_crossings, train, warm_up

from fastmuon.bench import environment

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def seed_runs(framework: str, corpus, seeds, eval_every: int, rates: dict) -> dict:
    """Per seed, AdamW's final loss and each Muon variant's steps and time to reach it; then the
    range of those over the seeds."""
    per_seed = {}
    warm_up(framework, FULL, corpus, tuple(rates))
    for seed in seeds:
        cfg = dataclasses.replace(FULL, seed=seed, eval_every=eval_every)
        runs = {name: train(framework, cfg, corpus, name, r["lr"], r.get("adamw_lr", 0.0))
                for name, r in rates.items()}
        mark_crossings(runs)
        target, baseline = runs["adamw"]["final_val_loss"], runs["adamw"]["seconds"]
        row = {"adamw_final": target, "adamw_seconds": baseline}
        for name, res in runs.items():
            if name == "adamw":
                continue
            steps, seconds = res["steps_to_adamw_final"], res["seconds_to_adamw_final"]
            row[name] = {"final": res["final_val_loss"], "seconds": res["seconds"], "steps_to_adamw_final": steps,
                         "step_ratio": None if steps is None else steps / cfg.steps,
                         "time_ratio": None if seconds is None else seconds / baseline}
            print(f"{framework} seed {seed} {name}: final {res['final_val_loss']:.4f} (AdamW {target:.4f}), "
                  f"reaches it at step {steps}, time ratio "
                  f"{'-' if seconds is None else f'{seconds / baseline:.3f}'}", flush=True)
        per_seed[str(seed)] = row
    summary = {}
    for name in rates:
        if name == "adamw":
            continue
        for key in ("step_ratio", "time_ratio"):
            values = [row[name][key] for row in per_seed.values()]
            known = [v for v in values if v is not None]
            summary.setdefault(name, {})[key] = {
                "min": min(known) if known else None, "max": max(known) if known else None,
                "mean": statistics.fmean(known) if len(known) == len(values) else None}
    return {"per_seed": per_seed, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frameworks", nargs="+", default=available_frameworks())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--optimizers", nargs="+", default=["muon", "normuon"], choices=["muon", "normuon"])
    parser.add_argument("--rates", default=None,
                        help="a bench/sweep_lr.py result whose 'best' lrs to use (default: the demo's)")
    parser.add_argument("--out", default=os.path.join(RESULTS_DIR, "demo_seeds.json"))
    args = parser.parse_args()
    sweep = None
    if args.rates:
        with open(args.rates) as f:
            sweep = json.load(f)
    result = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    corpus = load_corpus()
    for fw in args.frameworks:
        chosen = (sweep[fw]["best"] if sweep else LEARNING_RATES[fw])
        rates = {name: chosen[name] for name in ("adamw", *args.optimizers)}
        key = fw if not args.rates else f"{fw} ({os.path.basename(args.rates)})"
        result[key] = {"environment": environment(), "config": dataclasses.asdict(FULL), "seeds": args.seeds,
                       "eval_every": args.eval_every, "rates": rates,
                       "rates_from": args.rates or "bench/demo/run.py LEARNING_RATES",
                       **seed_runs(fw, corpus, args.seeds, args.eval_every, rates)}
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(json.dumps(result[key]["summary"], indent=1))


if __name__ == "__main__":
    main()
