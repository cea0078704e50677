"""Which parameters of a torch model Muon should optimize, and which AdamW."""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

from ..rules import DEFAULT_EXCLUDE, name_is_excluded

__all__ = ["muon_param_groups"]

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
# Module classes (by name, so that their libraries need not be imported) whose 2-D weight is
# stored (in, out) rather than nn.Linear's (out, in): Hugging Face transformers' Conv1D (GPT-2).
TRANSPOSED_MODULES = ("Conv1D",)


def muon_param_groups(
    model: nn.Module,
    *,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    exclude_first: bool = False,
    transposed_modules: Iterable[str] = TRANSPOSED_MODULES,
    muon_options: Optional[Mapping] = None,
    adamw_options: Optional[Mapping] = None,
) -> List[dict]:
    """Param groups for :class:`MuonWithAdamW`, each carrying ``use_muon`` and ``param_names``.

    Hidden weights with two or more dimensions go to Muon. To AdamW go: parameters of
    embedding modules (``nn.Embedding``, ``nn.EmbeddingBag``), parameters whose name has a word
    of ``exclude`` in its top-level module or in the module that owns it (heads and outputs, see
    ``fastmuon.rules.name_is_excluded``), and every 0-D/1-D parameter (biases, norms,
    scalars). With ``exclude_first`` the first parameter of two or more dimensions in
    registration order (the input layer, e.g. a CNN's stem conv) goes to AdamW too; it changes
    nothing when that parameter is an embedding already.

    A tied weight appears once, under its first name, and goes to AdamW if any of its names or
    owners says so (an embedding tied to the output head stays with AdamW). Frozen parameters
    (``requires_grad=False``) are left out. Empty groups are left out.

    Weights of modules whose class is named in ``transposed_modules`` (default: Hugging Face's
    ``Conv1D``, which stores (in, out)) go to a Muon group of their own with ``transposed=True``,
    so that the lr shape scale reads them as (out, in); orthogonalization itself does not depend
    on the orientation. Pass ``transposed_modules=()`` to treat every weight as (out, in).

    Muon groups carry ``allow_nd=True``: conv and stacked (3-D) weights routed here are
    orthogonalized per matrix (see :class:`fastmuon.torch.Muon`).

    ``muon_options`` / ``adamw_options`` are added to the Muon and AdamW groups (e.g.
    ``{"lr": 3e-4}``).
    """
    exclude = tuple(exclude)
    names: Dict[int, List[str]] = {}
    tensors: Dict[int, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        tensors.setdefault(id(p), p)
    embedding_ids = {
        id(p) for module in model.modules() if isinstance(module, _EMBEDDING_TYPES)
        for p in module.parameters(recurse=False)
    }
    transposed_names = tuple(transposed_modules)
    transposed_ids = {
        id(p) for module in model.modules() if type(module).__name__ in transposed_names
        for p in module.parameters(recurse=False) if p.ndim == 2
    }
    first_matrix = next((key for key, p in tensors.items() if p.ndim >= 2), None)

    muon, muon_transposed, adamw = ([], []), ([], []), ([], [])
    for key, p in tensors.items():
        if not p.requires_grad:
            continue
        to_muon = (
            p.ndim >= 2
            and key not in embedding_ids
            and not any(name_is_excluded(name, exclude) for name in names[key])
            and not (exclude_first and key == first_matrix)
        )
        params, param_names = (muon_transposed if key in transposed_ids else muon) if to_muon else adamw
        params.append(p)
        param_names.append(names[key][0])

    groups = []
    kinds = ((muon, {"use_muon": True, "allow_nd": True}, muon_options),
             (muon_transposed, {"use_muon": True, "allow_nd": True, "transposed": True}, muon_options),
             (adamw, {"use_muon": False}, adamw_options))
    for (params, param_names), kind, options in kinds:
        if params:
            groups.append({"params": params, "param_names": param_names, **kind, **dict(options or {})})
    return groups
