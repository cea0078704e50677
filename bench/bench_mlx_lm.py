"""mlx-lm's own trainer (``mlx_lm.tuner.trainer.train``) on a tiny Llama (hidden 128, 2 layers)
with ``fastmuon.mlx.MuonWithAdamW``, unchanged mlx-lm, against mlx's own Muon + AdamW
``MultiOptimizer``: time per training iteration (forward, backward, compiled step) and the
train losses. Appends to bench/results/mlx_lm.jsonl.

mlx-lm is not a dependency of fastmuon; install it beside it in a separate environment
(``pip install mlx-lm``, keeping mlx at fastmuon's pinned version), then

    python bench/bench_mlx_lm.py
"""
import os
import sys
import time
import mlx.core as mx, mlx.nn as nn, mlx.optimizers as optim, numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tuner.trainer import TrainingArgs, train, TrainingCallback
import fastmuon.mlx as fm
from fastmuon import bench

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mlx_lm.jsonl")

def _version(package):
    from importlib.metadata import version

    return version(package)


def make_model(seed=0):
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
                           num_attention_heads=4, rms_norm_eps=1e-5, vocab_size=256, num_key_value_heads=4)
    m = llama.Model(args); mx.eval(m.parameters()); return m

rng = np.random.default_rng(0)
data = [(list(rng.integers(0, 256, 64)), 0) for _ in range(64)]

class Times(TrainingCallback):
    def __init__(self): self.losses=[]
    def on_train_loss_report(self, info): self.losses.append(info["train_loss"])

def run(name, opt, iters=30):
    model = make_model()
    cb = Times()
    t = time.perf_counter()
    train(model, opt, data, data[:8], args=TrainingArgs(batch_size=4, iters=iters, val_batches=1, steps_per_report=10,
          steps_per_eval=1000, steps_per_save=10**6, max_seq_length=64, adapter_file=os.path.join(os.environ.get("TMPDIR", "/tmp"), "fastmuon_adapters.safetensors")),
          training_callback=cb)
    dt = time.perf_counter() - t
    print(f"{name:34s} {dt/iters*1e3:8.1f} ms/iter  train losses {['%.3f' % l for l in cb.losses]}", flush=True)
    return {"optimizer": name, "ms_per_iter": 1e3 * dt / iters, "train_losses": [float(l) for l in cb.losses]}


if __name__ == "__main__":
    rows = [run("fastmuon.mlx.MuonWithAdamW", fm.MuonWithAdamW(lr_muon=0.02, lr_adamw=1e-3))]
    muon_or_adamw = lambda path, a: a.ndim >= 2 and "embed" not in path and "lm_head" not in path  # noqa: E731
    rows.append(run("mlx MultiOptimizer(Muon, AdamW)",
                    optim.MultiOptimizer([optim.Muon(0.02, weight_decay=0.0), optim.AdamW(1e-3)], [muon_or_adamw])))
    bench.append_results(RESULTS, rows, {**bench.environment(), "mlx_lm": _version("mlx_lm")})
