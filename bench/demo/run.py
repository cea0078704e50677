"""The demo: a small byte-level transformer trained on the Python standard library's own sources,
in PyTorch and MLX, with AdamW, Muon and NorMuon (Muon+AdamW routing), the same step budget each,
each at its best learning rate from bench/sweep_lr.py. Trains every (framework, optimizer),
reports, plots and writes JSON. Uses only fastmuon's public API.

    PYTHONPATH=bench python -m demo [--quick] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from typing import Dict, List, Optional

from fastmuon.bench import environment, progress_bar

from .config import FULL, OPTIMIZERS, QUICK, DemoConfig
from .data import Corpus, batches, eval_windows, load_corpus

# Best learning rates from bench/sweep_lr.py (recorded in bench/results/lr_sweep.json, which a
# test keeps in step with this table): AdamW's alone, then Muon's / NorMuon's with their AdamW
# part at AdamW's best.
LEARNING_RATES: Dict[str, Dict[str, Dict[str, float]]] = {
    "torch": {
        "adamw": {"lr": 0.03},
        "muon": {"lr": 0.05, "adamw_lr": 0.03},
        "normuon": {"lr": 0.05, "adamw_lr": 0.03},
    },
    "mlx": {
        "adamw": {"lr": 0.003},
        "muon": {"lr": 0.02, "adamw_lr": 0.003},
        "normuon": {"lr": 0.02, "adamw_lr": 0.003},
    },
}


def available_frameworks() -> List[str]:
    return [name for name in ("torch", "mlx") if importlib.util.find_spec(name) is not None]


def trainer(framework: str):
    """The framework's Trainer class: ``Trainer(cfg, optimizer, lr, adamw_lr, val_windows)``
    with ``evaluate() -> val loss`` and ``step(inputs, targets) -> train loss``."""
    if framework == "torch":
        from . import torch_train

        return torch_train.Trainer
    from . import mlx_train

    return mlx_train.Trainer


def train(framework: str, cfg: DemoConfig, corpus: Corpus, optimizer: str, lr: float, adamw_lr: float,
          progress=None) -> dict:
    """Train one (framework, optimizer) for ``cfg.steps`` steps; the validation curve and the
    wall time of the steps and evaluations."""
    windows = eval_windows(corpus.val, cfg.eval_windows, cfg.context)
    run = trainer(framework)(cfg, optimizer, lr, adamw_lr, windows)
    data = batches(corpus.train, cfg.batch_size, cfg.context, seed=cfg.seed)
    # curve: (step, validation loss, training seconds so far); evaluation time is not counted
    curve, loss, training = [], float("nan"), 0.0
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append((step, run.evaluate(), training))
        if step == cfg.steps:
            break
        start = time.perf_counter()
        loss = run.step(*next(data))
        training += time.perf_counter() - start
        if progress is not None:
            progress.update(1)
    return {
        "final_val_loss": curve[-1][1],
        "curve": curve,
        "seconds": training,
        "lr": lr,
        "adamw_lr": adamw_lr if optimizer != "adamw" else None,
        "train_loss_last": loss,
    }


# Untimed steps per optimizer before a framework's timed runs: the first steps in a process pay
# one-time costs (lazy initialization, the allocator's first growth, thread start-up; about 20 ms
# in torch on 2 cores), which would otherwise land on whichever optimizer runs first, AdamW.
WARM_UP_STEPS = 3


def warm_up(framework: str, cfg: DemoConfig, corpus: Corpus, optimizers=OPTIMIZERS) -> None:
    """A few untimed steps of each optimizer (default lrs of the table) on a throwaway model."""
    windows = eval_windows(corpus.val, 1, cfg.context)
    for name in optimizers:
        rates = LEARNING_RATES[framework][name]
        run = trainer(framework)(cfg, name, rates["lr"], rates.get("adamw_lr", 0.0), windows)
        data = batches(corpus.train, cfg.batch_size, cfg.context, seed=cfg.seed)
        for _ in range(WARM_UP_STEPS):
            run.step(*next(data))
        run.evaluate()


def steps_to_reach(curve, target: float) -> Optional[int]:
    """First evaluated step whose validation loss is at or below ``target``."""
    return next((point[0] for point in curve if point[1] <= target), None)


def seconds_to_reach(curve, target: float) -> Optional[float]:
    """Training seconds until the first evaluation at or below ``target``."""
    return next((point[2] for point in curve if point[1] <= target), None)


def mark_crossings(runs: dict) -> None:
    """Each run of one framework gains ``steps_to_adamw_final`` and ``seconds_to_adamw_final``:
    where its validation loss first reaches the final loss of the ``"adamw"`` run (None without
    one, or where it never does)."""
    target = runs.get("adamw", {}).get("final_val_loss")
    for res in runs.values():
        res["steps_to_adamw_final"] = steps_to_reach(res["curve"], target) if target is not None else None
        res["seconds_to_adamw_final"] = seconds_to_reach(res["curve"], target) if target is not None else None


def run(cfg: DemoConfig, frameworks: List[str], optimizers=OPTIMIZERS, progress: bool = True) -> dict:
    corpus = load_corpus()
    results: dict = {}
    bar = progress_bar(len(frameworks) * len(optimizers) * cfg.steps, progress, unit="step")
    for framework in frameworks:
        results[framework] = {}
        warm_up(framework, cfg, corpus, optimizers)
        for name in optimizers:
            rates = LEARNING_RATES[framework][name]
            results[framework][name] = train(framework, cfg, corpus, name, rates["lr"], rates.get("adamw_lr", 0.0),
                                             bar)
        mark_crossings(results[framework])
    bar.close()
    results["config"] = dataclasses.asdict(cfg)
    results["corpus"] = {"files": list(corpus.files), "train_bytes": len(corpus.train), "val_bytes": len(corpus.val)}
    results["environment"] = environment()
    return results


def format_report(results: dict, frameworks: List[str]) -> str:
    """One line per (framework, optimizer): final validation loss, and the steps and training
    seconds it took to reach AdamW's final validation loss (AdamW: its whole run)."""
    lines = [f"{'framework':9s} {'optimizer':9s} {'lr':>8s} {'val loss':>9s} {'steps to AdamW final':>21s} "
             f"{'s to AdamW final':>17s} {'train s':>8s}"]
    for fw in frameworks:
        for name, res in results[fw].items():
            steps, seconds = res["steps_to_adamw_final"], res["seconds_to_adamw_final"]
            lines.append(
                f"{fw:9s} {name:9s} {res['lr']:8.3g} {res['final_val_loss']:9.4f} "
                f"{(str(steps) if steps is not None else 'not reached'):>21s} "
                f"{(f'{seconds:.1f}' if seconds is not None else 'not reached'):>17s} {res['seconds']:8.1f}"
            )
    return "\n".join(lines)


def plot(results: dict, frameworks: List[str], path: str) -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(frameworks), figsize=(5.5 * len(frameworks), 4), squeeze=False)
    for ax, fw in zip(axes[0], frameworks):
        for name, res in results[fw].items():
            steps, losses, _ = zip(*res["curve"])
            ax.plot(steps, losses, label=f"{name} (lr {res['lr']:g})")
        ax.set_title(f"{fw}: validation loss, stdlib bytes")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/byte)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.steps} steps per run instead of {FULL.steps}")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", default="demo_loss.png", help="loss-curve PNG (default: %(default)s)")
    parser.add_argument("--frameworks", nargs="+", choices=["torch", "mlx"], default=None)
    args = parser.parse_args(argv)
    frameworks = args.frameworks or available_frameworks()
    if not frameworks:
        print("neither torch nor mlx is installed: pip install 'fastmuon[torch]' or 'fastmuon[mlx]'")
        return 1
    cfg = QUICK if args.quick else FULL
    results = run(cfg, frameworks)
    print(format_report(results, frameworks))
    if args.plot and plot(results, frameworks, args.plot):
        print(f"loss curves: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"results: {args.json}")
    return 0
