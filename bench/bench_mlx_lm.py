"""mlx-lm's own trainer (``mlx_lm.tuner.trainer.train``) on a tiny Llama (hidden 128, 2 layers)
with ``fastmuon.mlx.MuonWithAdamW``, unchanged mlx-lm, against mlx's own Muon + AdamW
``MultiOptimizer``: time per training iteration (forward, backward, compiled step) and the
train losses. Appends to bench/results/mlx_lm.jsonl.

mlx-lm is not a dependency of fastmuon; install it beside it in a separate environment
(``pip install mlx-lm``, keeping mlx at fastmuon's pinned version), then

    python bench/bench_mlx_lm.py
"""
import os
import tempfile
import time
from importlib.metadata import version
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx_lm.models import llama
from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train

import fastmuon.mlx as fm
from fastmuon import bench

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mlx_lm.jsonl")
ITERATIONS = 30


def tiny_llama(seed: int = 0) -> llama.Model:
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
                           num_attention_heads=4, rms_norm_eps=1e-5, vocab_size=256, num_key_value_heads=4)
    model = llama.Model(args)
    mx.eval(model.parameters())
    return model


def token_data(count: int = 64, length: int = 64, seed: int = 0) -> list:
    """(tokens, offset) pairs, the dataset form mlx-lm's iterate_batches reads."""
    rng = np.random.default_rng(seed)
    return [(list(rng.integers(0, 256, length)), 0) for _ in range(count)]


class LossReports(TrainingCallback):
    def __init__(self):
        self.losses = []

    def on_train_loss_report(self, info):
        self.losses.append(float(info["train_loss"]))


def run(name: str, optimizer) -> dict:
    model, data, reports = tiny_llama(), token_data(), LossReports()
    args = TrainingArgs(batch_size=4, iters=ITERATIONS, val_batches=1, steps_per_report=10, steps_per_eval=10**6,
                        steps_per_save=10**6, max_seq_length=64,
                        adapter_file=os.path.join(tempfile.gettempdir(), "fastmuon_bench_adapters.safetensors"))
    start = time.perf_counter()
    train(model, optimizer, data, data[:8], args=args, training_callback=reports)
    ms = 1e3 * (time.perf_counter() - start) / ITERATIONS
    print(f"{name:34s} {ms:8.1f} ms/iteration  train losses {[round(x, 3) for x in reports.losses]}", flush=True)
    return {"optimizer": name, "ms_per_iter": ms, "train_losses": reports.losses}


def main() -> None:
    rows = [run("fastmuon.mlx.MuonWithAdamW", fm.MuonWithAdamW(lr_muon=0.02, lr_adamw=1e-3))]
    muon_or_adamw = lambda path, a: a.ndim >= 2 and "embed" not in path and "lm_head" not in path  # noqa: E731
    mlx_pair = optim.MultiOptimizer([optim.Muon(0.02, weight_decay=0.0), optim.AdamW(1e-3)], [muon_or_adamw])
    rows.append(run("mlx MultiOptimizer(Muon, AdamW)", mlx_pair))
    bench.append_results(RESULTS, rows, {**bench.environment(), "mlx_lm": version("mlx_lm")})


if __name__ == "__main__":
    main()
