"""Multi-task ranking models over sparse embeddings (TorchRec or plain torch).

Every model takes :class:`RecInputs`, returns ``(representation, {task: prediction})`` (a
logit for a binary task, the value for a regression task, shape ``(N,)``) and names its
parameter groups: ``embedding_parameters()``, ``dense_shared_parameters()``,
``shared_parameters()`` (both) and ``task_parameters() -> {task: module}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import MLP, TASK_KINDS, MultiTaskRecModel, Tower
from .embeddings import BACKENDS, EmbeddingConfig, SparseEmbeddings, meta_tables, torchrec_available
from .inputs import RecInputs, random_inputs
from .moe import CGC, PLE, MMoE, OMoE, SharedBottom
from .sequential import AITM, ESMM, logit_of_product

__all__ = [
    "AITM",
    "BACKENDS",
    "CGC",
    "ESMM",
    "MLP",
    "MODELS",
    "PLE",
    "TASK_KINDS",
    "EmbeddingConfig",
    "MMoE",
    "MultiTaskRecModel",
    "OMoE",
    "RecInputs",
    "SharedBottom",
    "SparseEmbeddings",
    "Tower",
    "logit_of_product",
    "make_model",
    "meta_tables",
    "random_inputs",
    "torchrec_available",
]

MODELS: dict[str, type[MultiTaskRecModel]] = {
    "shared_bottom": SharedBottom,
    "omoe": OMoE,
    "mmoe": MMoE,
    "cgc": CGC,
    "ple": PLE,
    "esmm": ESMM,
    "aitm": AITM,
}
"""Model classes by name (for benchmark specs)."""


def make_model(
    name: str,
    features: EmbeddingConfig,
    tasks: Mapping[str, str] | Sequence[str],
    **options: Any,
) -> MultiTaskRecModel:
    """Build a model by name (``MODELS``); ``options`` go to its constructor."""
    key = name.lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[key]
    try:
        return cls(features, tasks, **options)
    except TypeError as err:
        raise TypeError(f"model {name!r}: {err}") from err
