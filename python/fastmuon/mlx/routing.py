"""Which parameters Muon updates, and the two-optimizer compositions built on that.

``muon_filter(path, array)`` is the predicate ``mlx.optimizers.MultiOptimizer`` expects: True for
hidden weights (2-D matrices, 3-D stacks, 4-D convs), False for embeddings, heads, biases and
norms. ``MuonWithAdamW`` is that ``MultiOptimizer`` with Muon (or NorMuon) and AdamW;
``embedding_signsgd_with_adamw`` is the seed's set-up (SignSGD for one named sparse embedding at
100x the learning rate, AdamW for the rest). All are used as ``opt.update(model, grads)``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Tuple, Union

import mlx.core as mx
import mlx.nn as nn
from mlx.optimizers import AdamW, MultiOptimizer
from mlx.utils import tree_flatten, tree_map_with_path

from .._optim_rules import DEFAULT_EXCLUDE, check_hyperparameters, name_is_excluded
from .optim import LearningRate, Muon, NorMuon, SignSGD, _check_learning_rate, check_gradient_tree

EMBEDDING_TYPES = (nn.Embedding, nn.QuantizedEmbedding)


def muon_filter(path: str, array: mx.array, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> bool:
    """True if the parameter at ``path`` should be updated by Muon.

    Muon takes 2-D, 3-D (stacked) and 4-D (conv) weights, except those whose top-level module or
    owning module names an embedding, head or output layer (``fastmuon._optim_rules.
    name_is_excluded``: ``embed_tokens.weight``, ``lm_head.weight``, ``output.weight``; BERT's
    hidden ``encoder.layer.0.output.dense.weight`` stays with Muon). 0-D/1-D parameters (biases,
    norm scales) and 5-D+ arrays are always False. Embeddings with unrelated names (GPT-2's
    ``wte``) are caught by type in ``MuonWithAdamW``, or pass their names in ``exclude``.
    """
    return isinstance(array, mx.array) and 2 <= array.ndim <= 4 and not name_is_excluded(path, exclude)


class _FiniteAdamW(AdamW):
    """mlx's AdamW (bias-corrected here, as ``torch.optim.AdamW``), with the fastmuon
    non-finite policy: a parameter whose gradient holds a NaN or Inf keeps its value and its
    moments for the step (counted in ``skipped_steps``)."""

    def init_single(self, parameter: mx.array, state: dict):
        super().init_single(parameter, state)
        state["skipped_steps"] = mx.array(0, mx.int32)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        ok = mx.all(mx.isfinite(gradient))
        moments = {key: state[key] for key in ("m", "v")}
        updated = super().apply_single(mx.where(ok, gradient, mx.zeros_like(gradient)), parameter, state)
        for key, old in moments.items():
            state[key] = mx.where(ok, state[key], old)
        state["skipped_steps"] = state["skipped_steps"] + (1 - ok.astype(mx.int32))
        return mx.where(ok, updated, parameter)


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(prefix == "" or path == prefix or path.startswith(prefix + ".") for prefix in prefixes)


class _CheckedMultiOptimizer(MultiOptimizer):
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


class MuonWithAdamW(_CheckedMultiOptimizer):
    """Muon (or NorMuon) for hidden matrices, AdamW for everything else, as one optimizer.

    Routing: ``filter(path, array)`` (default :func:`muon_filter` with ``exclude``) picks Muon's
    parameters, and parameters of ``nn.Embedding``/``nn.QuantizedEmbedding`` modules always go
    to AdamW whatever their names (recognised when ``update(model, grads)`` or
    ``apply_gradients(grads, model)`` is given the module). State is
    ``{"states": [muon_state, adamw_state]}``; learning rates may be schedules.

    Muon keyword arguments (``momentum``, ``nesterov``, ``weight_decay``, ``method``,
    ``ns_steps``, ``adjust_lr``, ``cautious_weight_decay``, ``backend``, ``ns_dtype``) are those
    of :class:`~fastmuon.mlx.Muon`; setting ``beta2`` makes it :class:`~fastmuon.mlx.NorMuon`
    (as in ``fastmuon.torch.MuonWithAdamW``). The AdamW is ``torch.optim.AdamW``'s rule
    (decoupled decay, bias correction; mlx's AdamW without bias correction by default) with
    ``adamw_betas`` (0.9, 0.95), ``adamw_eps`` 1e-10 and ``adamw_weight_decay`` 0, the defaults of
    ``fastmuon.torch.MuonWithAdamW``, and the same non-finite policy as Muon.
    """

    def __init__(
        self,
        lr_muon: LearningRate = 0.02,
        lr_adamw: LearningRate = 1e-3,
        *,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        method: str = "polar_express",
        ns_steps: int = 5,
        adjust_lr: str = "original",
        cautious_weight_decay: bool = False,
        backend: str = "auto",
        ns_dtype: Optional[mx.Dtype] = None,
        beta2: Optional[float] = None,
        adamw_betas: Tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        adamw_weight_decay: float = 0.0,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        filter: Optional[Callable[[str, mx.array], bool]] = None,
    ):
        muon_kwargs = dict(
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            method=method,
            ns_steps=ns_steps,
            adjust_lr=adjust_lr,
            cautious_weight_decay=cautious_weight_decay,
            backend=backend,
            ns_dtype=ns_dtype,
        )
        muon = Muon(lr_muon, **muon_kwargs) if beta2 is None else NorMuon(lr_muon, beta2=beta2, **muon_kwargs)
        adamw = _make_adamw(lr_adamw, adamw_betas, adamw_eps, adamw_weight_decay)
        exclude = tuple(exclude)
        self._muon_filter = filter if filter is not None else (lambda path, a: muon_filter(path, a, exclude))
        self._embedding_paths: Tuple[str, ...] = ()
        super().__init__([muon, adamw], [self._routes_to_muon])

    def _routes_to_muon(self, path: str, array: mx.array) -> bool:
        return not _under(path, self._embedding_paths) and bool(self._muon_filter(path, array))

    def _prepare(self, leaves, parameters) -> None:
        if isinstance(parameters, nn.Module):
            self._embedding_paths = tuple(
                name for name, module in parameters.named_modules() if isinstance(module, EMBEDDING_TYPES)
            )

    @property
    def muon(self) -> Muon:
        return self.optimizers[0]

    @property
    def adamw(self) -> AdamW:
        return self.optimizers[1]


def _make_adamw(learning_rate, betas, eps, weight_decay) -> AdamW:
    _check_learning_rate(learning_rate)
    check_hyperparameters(lr=0.0, weight_decay=weight_decay)
    if len(betas) != 2:
        raise ValueError(f"AdamW betas must be a pair, got {betas!r}")
    return _FiniteAdamW(learning_rate, betas=list(betas), eps=eps, weight_decay=weight_decay, bias_correction=True)


class _NamedSplit(_CheckedMultiOptimizer):
    """MultiOptimizer([first, rest]) sending the parameters under the named modules to the first;
    raises if a step's gradients contain none of them (a misspelt name would otherwise silently
    hand the embedding to the second optimizer)."""

    def __init__(self, first, rest, names: Tuple[str, ...]):
        self.names = names
        super().__init__([first, rest], [lambda path, _: _under(path, names)])

    def _prepare(self, leaves, parameters) -> None:
        if not any(_under(path, self.names) for path, *_ in leaves):
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
    """The seed's two-optimizer set-up: :class:`SignSGD` for the named sparse embedding(s) at
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
        _check_learning_rate(learning_rate)
        embedding_lr = embedding_lr_ratio * learning_rate
    signsgd = SignSGD(embedding_lr, weight_decay=embedding_weight_decay, sparse=sparse)
    adamw = _make_adamw(learning_rate, betas, eps, weight_decay)
    return _NamedSplit(signsgd, adamw, names)
