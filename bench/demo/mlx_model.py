"""The demo's small GPT in MLX, the same architecture as torch_model.TinyGPT."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .config import DemoConfig
from .data import VOCAB_SIZE


class Block(nn.Module):
    def __init__(self, cfg: DemoConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.fc_out = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False)

    def __call__(self, x):
        B, T, D = x.shape
        q, k, v = mx.split(self.qkv(self.norm1(x)), 3, axis=-1)
        heads = lambda t: t.reshape(B, T, self.n_heads, D // self.n_heads).transpose(0, 2, 1, 3)  # noqa: E731
        scale = (D // self.n_heads) ** -0.5
        y = mx.fast.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale, mask="causal")
        x = x + self.proj(y.transpose(0, 2, 1, 3).reshape(B, T, D))
        return x + self.fc_out(nn.gelu(self.fc(self.norm2(x))))


class TinyGPT(nn.Module):
    def __init__(self, cfg: DemoConfig):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, cfg.d_model)
        self.pos = mx.zeros((cfg.context, cfg.d_model))
        self.blocks = [Block(cfg) for _ in range(cfg.n_layers)]
        self.norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, VOCAB_SIZE, bias=False)

    def __call__(self, idx):
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def loss_fn(model: TinyGPT, inputs, targets):
    logits = model(inputs)
    return nn.losses.cross_entropy(logits, targets, reduction="mean")
