"""SignSGD for MLX, and ``embedding_signsgd_with_adamw``: SignSGD for sparse embeddings beside
AdamW for the rest."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import mlx.core as mx
from mlx.optimizers import MultiOptimizer

from ...rules import check_hyperparameters
from ..functional import all_finite, rows_touched, signsgd_update
from ..routing import under
from .adamw import make_adamw
from .base import CheckedMultiOptimizer, LearningRate, TreeOptimizer, check_learning_rate, work_dtype

__all__ = ["SignSGD", "embedding_signsgd_with_adamw"]


class SignSGD(TreeOptimizer):
    r"""Sign SGD with decoupled weight decay, for sparse embeddings:

    .. math::

        W \leftarrow W (1 - \eta \lambda) - \eta\, \mathrm{sign}(G)

    No state besides ``skipped_steps``: a parameter whose gradient holds a NaN or Inf is left
    unchanged. MLX has no sparse arrays; ``sparse=True`` treats every row (index along the first
    axis) whose gradient is entirely zero as absent from the batch, as a sparse PyTorch embedding
    gradient would be: such rows get neither the decay nor an update.
    """

    def __init__(self, learning_rate: LearningRate = 1e-2, *, weight_decay: float = 0.1, sparse: bool = False):
        check_learning_rate(learning_rate)
        check_hyperparameters(lr=0.0, weight_decay=weight_decay)
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.weight_decay = float(weight_decay)
        self.sparse = bool(sparse)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        work = work_dtype(parameter.dtype)
        lr = self._lr(work)
        W = parameter.astype(work)
        ok = all_finite(gradient) & all_finite(lr)
        G = mx.where(ok, gradient, mx.zeros_like(gradient))
        W_new = signsgd_update(W, G, lr=lr, weight_decay=self.weight_decay)
        if self.sparse:
            W_new = mx.where(rows_touched(G), W_new, W)
        state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
        return mx.where(ok, W_new, W).astype(parameter.dtype)


class _NamedSplit(CheckedMultiOptimizer):
    """MultiOptimizer([first, rest]) sending the parameters under the named modules to the first;
    raises if a step's gradients contain none of them (a misspelt name would otherwise silently
    hand the embedding to the second optimizer)."""

    def __init__(self, first, rest, names: Tuple[str, ...]):
        self.names = names
        super().__init__([first, rest], [lambda path, _: under(path, names)])

    def _prepare(self, leaves, parameters) -> None:
        if not any(under(path, self.names) for path, *_ in leaves):
            raise ValueError(
                f"no gradient under {', '.join(repr(n) for n in self.names)}; gradient paths "
                f"start with {sorted({path.split('.')[0] for path, *_ in leaves})}"
            )


def embedding_signsgd_with_adamw(
    learning_rate: LearningRate,
    embedding: Union[str, Sequence[str]],
    *,
    embedding_lr_ratio: float = 100.0,
    embedding_weight_decay: float = 0.1,
    sparse: bool = True,
    betas: Tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
) -> MultiOptimizer:
    """A two-optimizer set-up for models with a sparse embedding: :class:`SignSGD` for the named sparse embedding(s) at
    ``embedding_lr_ratio`` (100) times ``learning_rate``, AdamW with betas (0.9, 0.95) and weight
    decay 0.1 (bias-corrected, as ``torch.optim.AdamW``) for every other parameter.

    ``embedding`` is the module path of the embedding (``"tok_embeddings"``; ``"encoder.embed"``
    for a nested one), or several. A schedule for ``learning_rate`` drives both optimizers.

    Example::

        opt = embedding_signsgd_with_adamw(3e-4, "tok_embeddings")
        loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
        opt.update(model, grads)
    """
    names = (embedding,) if isinstance(embedding, str) else tuple(embedding)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"embedding must name one or more modules, got {embedding!r}")
    if not (embedding_lr_ratio > 0):
        raise ValueError(f"embedding_lr_ratio must be > 0, got {embedding_lr_ratio!r}")
    if callable(learning_rate):
        schedule = learning_rate
        embedding_lr = lambda step: embedding_lr_ratio * schedule(step)  # noqa: E731
    else:
        check_learning_rate(learning_rate)
        embedding_lr = embedding_lr_ratio * learning_rate
    signsgd = SignSGD(embedding_lr, weight_decay=embedding_weight_decay, sparse=sparse)
    adamw = make_adamw(learning_rate, betas, eps, weight_decay)
    return _NamedSplit(signsgd, adamw, names)
