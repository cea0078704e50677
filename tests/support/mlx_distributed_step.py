"""Run by tests/test_mlx_distributed.py, once alone and once as every rank of
``mlx.launch -n 2 --backend ring``: three Muon steps on the same seeded weights and gradients
(as averaged gradients would be), then rank 0 writes the weights to the file named by argv[1]."""

import sys

import mlx.core as mx
import numpy as np

import fastmuon.mlx as fm

SHAPES = {"a": (24, 40), "b": (24, 40), "c": (40, 24), "d": (3, 16, 16), "e": (16, 16)}


def main(out: str) -> None:
    rng = np.random.default_rng(0)
    params = {k: mx.array(rng.standard_normal(s).astype(np.float32) * 0.1) for k, s in SHAPES.items()}
    opt = fm.NorMuon(0.02, weight_decay=0.1)
    for _ in range(3):
        grads = {k: mx.array(rng.standard_normal(s).astype(np.float32)) for k, s in SHAPES.items()}
        strategies = {route.strategy for route in opt.explain(grads, params)}
        params = opt.apply_gradients(grads, params)
        mx.eval(params, opt.state)
    group = mx.distributed.init()
    if group.rank() == 0:
        np.savez(out, size=group.size(), sharded=strategies == {"replicated"},
                 **{k: np.array(v) for k, v in params.items()})


if __name__ == "__main__":
    main(sys.argv[1])
