"""What every fastmuon.mlx optimizer shares: the gradient tree checked against the parameters
(naming the path at fault), state made for parameters that join late, and the step counter."""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, Union

import mlx.core as mx
from mlx.optimizers import MultiOptimizer, Optimizer
from mlx.utils import tree_flatten, tree_map_with_path

from ...rules import check_hyperparameters, matrix_view

LearningRate = Union[float, Callable[[mx.array], mx.array]]


class TreeMismatchError(ValueError):
    """The gradient tree does not match the parameter tree; the message names the path."""


def check_gradient_tree(gradients, parameters) -> List[Tuple[str, tuple, mx.array, mx.array]]:
    """Walk ``gradients`` alongside ``parameters`` (which may be a superset, e.g. a whole
    ``nn.Module``) and return ``(path, keys, gradient, parameter)`` for every gradient leaf.

    Raises TypeError for a ``(grads, total_norm)`` pair as returned by ``clip_grad_norm`` and for
    leaves that are not arrays, and TreeMismatchError (a ValueError) naming the first path whose
    gradient has no parameter of the same shape. Empty subtrees are allowed.
    """
    if (
        isinstance(gradients, tuple)
        and len(gradients) == 2
        and isinstance(gradients[0], (dict, list, tuple))
        and isinstance(gradients[1], mx.array)
        and gradients[1].size == 1
    ):
        raise TypeError(
            "gradients is a (grads, total_norm) pair, as returned by "
            "mlx.optimizers.clip_grad_norm; unpack it first: "
            "grads, total_norm = clip_grad_norm(grads, max_norm)"
        )
    if not isinstance(gradients, (dict, list, tuple)):
        raise TypeError(
            f"gradients must be a tree (dict or list) of arrays, got {type(gradients).__name__}"
        )
    leaves: List[Tuple[str, tuple, mx.array, mx.array]] = []
    _walk(gradients, parameters, (), leaves)
    paths = [path for path, *_ in leaves]
    if len(set(paths)) != len(paths):  # mlx's trees are keyed by these dotted paths
        duplicate = next(path for path in paths if paths.count(path) > 1)
        keys = [repr(keys) for path, keys, *_ in leaves if path == duplicate]
        raise TreeMismatchError(
            f"two parameters share the path {duplicate!r} (keys {', '.join(keys)}): a dict key "
            "containing '.' collides with a nested key, and one update would overwrite the other; rename it"
        )
    return leaves


def _walk(grad, param, keys: tuple, out: list) -> None:
    path = ".".join(str(k) for k in keys)
    where = f"at {path!r}" if path else "at the root"
    if isinstance(grad, (dict, list, tuple)) and len(grad) == 0:
        # No gradient below: nn.value_and_grad gives {} for a leaf that is not an array (e.g.
        # mlx-lm's LlamaModel keeps a list of strings), whatever the parameter tree holds there.
        return
    if isinstance(grad, dict):
        if not isinstance(param, dict):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: gradients hold a dict, "
                f"parameters a {type(param).__name__}"
            )
        for key, child in grad.items():
            if key not in param:
                raise TreeMismatchError(
                    f"gradients and parameters do not match: no parameter "
                    f"{'.'.join(str(k) for k in keys + (key,))!r}"
                )
            _walk(child, param[key], keys + (key,), out)
    elif isinstance(grad, (list, tuple)):
        if not isinstance(param, (list, tuple)):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: gradients hold a list, "
                f"parameters a {type(param).__name__}"
            )
        if len(grad) > len(param):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: {len(grad)} gradient entries, "
                f"{len(param)} parameter entries"
            )
        for index, child in enumerate(grad):
            _walk(child, param[index], keys + (index,), out)
    elif isinstance(grad, mx.array):
        if not isinstance(param, mx.array):
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: the parameter is a "
                f"{type(param).__name__}, not an array"
            )
        if grad.shape != param.shape:
            raise TreeMismatchError(
                f"gradients and parameters do not match {where}: gradient shape {grad.shape}, "
                f"parameter shape {param.shape}"
            )
        if not mx.issubdtype(param.dtype, mx.floating):
            raise TypeError(
                f"the parameter {where} has dtype {param.dtype}: fastmuon's optimizers update floating "
                "parameters only (an update would be truncated); freeze it or leave it out of the gradients"
            )
        out.append((path, keys, grad, param))
    else:
        raise TypeError(f"gradient {where} must be an mlx array, got {type(grad).__name__}")


def _has_state(state, keys: tuple) -> bool:
    for key in keys:
        try:
            state = state[key]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(state, dict) and len(state) > 0


def init_missing_state(optimizer: Optimizer, gradients, leaves) -> None:
    """``optimizer.init(gradients)`` unless every leaf already has state (mlx's init adds state
    for new parameters and keeps the existing)."""
    if not optimizer._initialized or not all(_has_state(optimizer.state, keys) for _, keys, _, _ in leaves):
        optimizer.init(gradients)


def state_at(state: dict, keys: tuple) -> dict:
    for key in keys:
        state = state[key]
    return state


def check_learning_rate(learning_rate) -> None:
    if isinstance(learning_rate, mx.array):
        if learning_rate.size != 1 or not mx.issubdtype(learning_rate.dtype, mx.floating):
            raise ValueError(f"learning_rate must be a float, a 1-element floating array or a schedule, got an "
                             f"array of shape {learning_rate.shape} and dtype {learning_rate.dtype}")
        learning_rate = float(learning_rate.item())
    check_hyperparameters(lr=learning_rate)


def update_view(shape: Sequence[int], path: str) -> Tuple[int, int, int]:
    """The matrix view of a Muon parameter; 0-D/1-D ones (which take the momentum step) as one
    row."""
    if len(shape) < 2:
        return (1, 1, int(shape[0]) if shape else 1)
    return matrix_view(shape, path)


def work_dtype(dtype: mx.Dtype) -> mx.Dtype:
    """Weight arithmetic runs in fp32 (fp64 for fp64 weights), then casts back: bf16 weights
    would otherwise lose updates smaller than their 8-bit mantissa resolves."""
    return mx.float64 if dtype == mx.float64 else mx.float32


class TreeOptimizer(Optimizer):
    """Optimizer whose ``apply_gradients`` checks the trees and hands all leaves to
    ``_apply_all`` at once (so subclasses can batch across parameters)."""

    def apply_gradients(self, gradients, parameters):
        leaves = check_gradient_tree(gradients, parameters)
        self._check_leaves(leaves)
        init_missing_state(self, gradients, leaves)
        before = {name: self.state[name] for name in (*self._schedulers, "step") if name in self.state}
        for name, scheduler in self._schedulers.items():
            self.state[name] = scheduler(self.step)
        self.state["step"] = self.step + 1
        items = [(path, grad, param, state_at(self.state, keys)) for path, keys, grad, param in leaves]
        try:
            updated = dict(zip((item[0] for item in items), self._apply_all(items)))
        except BaseException:  # the step counter (and the schedules) advance only with the weights
            self.state.update(before)
            raise
        return tree_map_with_path(lambda path, _: updated[path], gradients)

    def _check_leaves(self, leaves) -> None:
        """Raise, naming the path, for parameters this optimizer cannot update."""

    def _apply_all(self, items) -> List[mx.array]:
        return [self.apply_single(grad, param, state) for _, grad, param, state in items]

    def _lr(self, dtype: mx.Dtype) -> mx.array:
        return mx.array(self.learning_rate).astype(dtype)

    def init_single(self, parameter: mx.array, state: dict):
        state["skipped_steps"] = mx.array(0, mx.int32)


class CheckedMultiOptimizer(MultiOptimizer):
    """``MultiOptimizer`` that checks the gradient tree first (naming the path) and returns the
    gradients' own structure. (``mlx.utils.tree_merge``, which MultiOptimizer uses to join the
    parts, fails on a parameter-less module inside a list, such as an activation in
    ``nn.Sequential``, when only one part reaches past it.)"""

    def apply_gradients(self, gradients, parameters):
        leaves = check_gradient_tree(gradients, parameters)
        self._prepare(leaves, parameters)
        updated: dict = {}
        for optimizer, part in zip(self.optimizers, self._split_dictionary(gradients)):
            tree_flatten(optimizer.apply_gradients(part, parameters), destination=updated)
        return tree_map_with_path(lambda path, _: updated[path], gradients)

    def _prepare(self, leaves, parameters) -> None:
        """Hook run after the checks, before the split."""


