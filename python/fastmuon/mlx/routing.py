"""Which parameters of an MLX model Muon should update, and which AdamW.

``muon_filter(path, array)`` is the predicate ``mlx.optimizers.MultiOptimizer`` expects: True for
hidden weights (2-D matrices, 3-D stacks, 4-D convs), False for embeddings, heads, biases and
norms. ``MuonWithAdamW`` (``optimizers.py``) routes with it, and sends the parameters of
embedding modules (``embedding_paths``) to AdamW whatever their names.
"""

from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import mlx.core as mx
import mlx.nn as nn

from ..rules import DEFAULT_EXCLUDE, name_is_excluded

EMBEDDING_TYPES = (nn.Embedding, nn.QuantizedEmbedding)


def muon_filter(path: str, array: mx.array, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> bool:
    """True if the parameter at ``path`` should be updated by Muon.

    Muon takes 2-D, 3-D (stacked) and 4-D (conv) weights, except those whose top-level module or
    owning module names an embedding, head or output layer (``fastmuon.rules.name_is_excluded``:
    ``embed_tokens.weight``, ``lm_head.weight``, ``output.weight``; BERT's hidden
    ``encoder.layer.0.output.dense.weight`` stays with Muon). 0-D/1-D parameters (biases, norm
    scales) and 5-D+ arrays are always False. Embeddings with unrelated names (GPT-2's ``wte``)
    are caught by type in ``MuonWithAdamW``, or pass their names in ``exclude``.
    """
    return isinstance(array, mx.array) and 2 <= array.ndim <= 4 and not name_is_excluded(path, exclude)


def embedding_paths(model: nn.Module) -> Tuple[str, ...]:
    """The module paths of ``model``'s embedding modules (``EMBEDDING_TYPES``)."""
    return tuple(name for name, module in model.named_modules() if isinstance(module, EMBEDDING_TYPES))


def under(path: str, prefixes: Sequence[str]) -> bool:
    """Whether the parameter ``path`` lies under one of the module paths ``prefixes``."""
    return any(prefix == "" or path == prefix or path.startswith(prefix + ".") for prefix in prefixes)
