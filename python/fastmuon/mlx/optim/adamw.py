"""MuonWithAdamW's AdamW part for MLX: mlx's AdamW, bias-corrected, with fastmuon's
non-finite policy and per-parameter step counts."""

from __future__ import annotations

import mlx.core as mx
from mlx.optimizers import AdamW

from ...rules import check_adamw_eps, check_adamw_options
from ..functional import all_finite
from .base import check_gradient_tree, check_learning_rate, init_missing_state


class FiniteAdamW(AdamW):
    """mlx's AdamW (bias-corrected here, as ``torch.optim.AdamW``), with the fastmuon
    non-finite policy: a parameter whose gradient holds a NaN or Inf keeps its value and its
    moments for the step (counted in ``skipped_steps``). The bias corrections count the
    parameter's own steps, as ``fastmuon.torch`` and ``torch.optim.AdamW`` do: the optimizer's
    steps since its state was made (``steps_before`` holds the steps before that), less the
    skipped ones. (mlx's AdamW takes the optimizer's step: after a skipped step, or for a
    parameter that joined late, its first real update came out up to 0.6x too small.)"""

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        state["skipped_steps"] = mx.array(0, mx.int32)
        state["steps_before"] = mx.array(self.step, mx.int32)

    def apply_gradients(self, gradients, parameters):
        leaves = check_gradient_tree(gradients, parameters)
        for path, _, _, parameter in leaves:
            check_adamw_eps(self.eps, str(parameter.dtype), f"the parameter at {path!r}")
        # A parameter routed here after ``init`` (an embedding recognised by its module type only
        # once the update is given the model) gets its state now instead of a KeyError.
        if self._initialized:  # else the base class initializes every state
            init_missing_state(self, gradients, leaves)
        return super().apply_gradients(gradients, parameters)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        ok = all_finite(gradient) & all_finite(mx.array(self.learning_rate))
        moments = {key: state[key] for key in ("m", "v")}
        optimizer_step = self.state["step"]
        # mlx's Adam reads self.step for its corrections: this parameter's own count meanwhile
        not_taken = state["skipped_steps"] + state.get("steps_before", 0)
        self.state["step"] = optimizer_step - not_taken.astype(optimizer_step.dtype)  # stays an integer
        try:
            updated = super().apply_single(mx.where(ok, gradient, mx.zeros_like(gradient)), parameter, state)
        finally:
            self.state["step"] = optimizer_step
        for key, old in moments.items():
            state[key] = mx.where(ok, state[key], old)
        state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
        return mx.where(ok, updated, parameter)


def make_adamw(learning_rate, betas, eps, weight_decay, prefix: str = "") -> AdamW:
    """The bias-corrected AdamW part; ``prefix`` ("adamw_") is how the caller names its options."""
    check_learning_rate(learning_rate)
    betas, eps, weight_decay = check_adamw_options(betas, eps, weight_decay, prefix=prefix)
    return FiniteAdamW(learning_rate, betas=list(betas), eps=eps, weight_decay=weight_decay, bias_correction=True)


