"""Plots of the latest recorded benchmark runs: bench/results/*.jsonl -> bench/results/*.png.

    python bench/plot.py
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def latest_run(name: str):
    """Rows of the most recent run (same date stamp) in results/<name>.jsonl."""
    path = os.path.join(RESULTS, f"{name}.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    last = rows[-1]["date"]
    return [r for r in rows if r["date"] == last]


def plot_orthogonalize() -> str | None:
    rows = latest_run("orthogonalize")
    if not rows:
        return None
    shapes = sorted({tuple(r["shape"]) for r in rows})
    series = defaultdict(dict)
    for r in rows:
        series[f"{r['provider']} {r['method']}"][tuple(r["shape"])] = r["seconds"]
    labels = [k for k in series if all(s in series[k] for s in shapes)]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(shapes))]
        ax.bar(xs, [series[label][s] for s in shapes], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], ["x".join(map(str, s)) for s in shapes])
    ax.set_yscale("log")
    ax.set_ylabel("seconds (5 steps, log scale)")
    ax.set_title(f"orthogonalize, fp32, {rows[0]['processor']} ({rows[0]['cores']} cores), {rows[0]['date'][:10]}")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    out = os.path.join(RESULTS, "orthogonalize.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_optimizer_step() -> str | None:
    rows = latest_run("optimizer_step")
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh([r["provider"] for r in rows], [r["seconds"] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("seconds per step, one GPT-2-small block (log scale)")
    ax.set_title(f"optimizer step, {rows[0]['processor']} ({rows[0]['cores']} cores), {rows[0]['date'][:10]}")
    fig.tight_layout()
    out = os.path.join(RESULTS, "optimizer_step.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for made in (plot_orthogonalize(), plot_optimizer_step()):
        if made:
            print(f"wrote {made}")
