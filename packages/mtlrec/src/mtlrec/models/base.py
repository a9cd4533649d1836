"""Building blocks shared by the models: the MLP, the per-task tower and
:class:`MultiTaskRecModel`, the base that owns the embeddings and names the parameter groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .embeddings import EmbeddingConfig, SparseEmbeddings
from .inputs import RecInputs, check_inputs

__all__ = ["MLP", "TASK_KINDS", "MultiTaskRecModel", "Tower", "check_num_classes"]

TASK_KINDS = ("binary", "regression", "multiclass")
"""``binary``: the model outputs a logit, shape ``(N,)``; ``regression``: the value, ``(N,)``;
``multiclass``: one logit per class, ``(N, C)`` (``num_classes[task] = C``)."""


def check_layers(name: str, layers: Sequence[int], *, allow_empty: bool = False) -> tuple[int, ...]:
    """Validate a tuple of hidden widths."""
    if isinstance(layers, int) or not isinstance(layers, Sequence):
        raise TypeError(
            f"{name} must be a sequence of layer widths such as (64, 32), not {layers!r}"
        )
    out = tuple(layers)
    if not allow_empty and not out:
        raise ValueError(f"{name} needs at least one layer width, got {layers!r}")
    if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in out):
        raise ValueError(f"{name} must hold positive ints, got {layers!r}")
    return out


def check_count(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


class MLP(nn.Sequential):
    """``(Linear -> ReLU -> Dropout)`` per width in ``hidden``; ``out_features`` is the last
    width (or ``in_features`` when ``hidden`` is empty)."""

    def __init__(self, in_features: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        super().__init__(*layers)
        self.out_features = width


class Tower(nn.Module):
    """A task's head: an MLP and a linear output; ``(N, in) -> (N,)`` (a logit for a binary
    task, the value for a regression task), or ``(N, outputs)`` logits when ``outputs > 1``
    (a multiclass task)."""

    def __init__(
        self, in_features: int, hidden: Sequence[int], dropout: float = 0.0, outputs: int = 1
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_features, hidden, dropout)
        self.out = nn.Linear(self.mlp.out_features, outputs)

    def forward(self, x: Tensor) -> Tensor:
        y = self.out(self.mlp(x))
        return y.squeeze(-1) if self.out.out_features == 1 else y


def normalize_tasks(tasks: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """``{task: kind}`` from a mapping or a sequence of names (all binary)."""
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a mapping task -> kind or a list of names, not {tasks!r}")
    pairs = list(tasks.items()) if isinstance(tasks, Mapping) else [(t, "binary") for t in tasks]
    if not pairs:
        raise ValueError("at least one task is needed")
    out: dict[str, str] = {}
    for name, kind in pairs:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task name {name!r} is not usable: a non-empty str without '.'")
        if name in out:
            raise ValueError(f"task {name!r} is named twice")
        if kind not in TASK_KINDS:
            raise ValueError(f"task {name!r}: kind must be one of {TASK_KINDS}, not {kind!r}")
        out[name] = kind
    return out


def check_num_classes(
    kinds: Mapping[str, str], num_classes: Mapping[str, int] | None
) -> dict[str, int]:
    """``{task: outputs}`` of the towers: ``num_classes[task]`` (>= 2) for a multiclass task,
    1 for the others; a class count for a task that is not multiclass is an error."""
    given = dict(num_classes or {})
    unknown = sorted(set(given) - {t for t, k in kinds.items() if k == "multiclass"})
    if unknown:
        raise ValueError(f"num_classes names tasks that are not multiclass: {unknown}")
    out: dict[str, int] = {}
    for task, kind in kinds.items():
        if kind != "multiclass":
            out[task] = 1
            continue
        c = given.get(task)
        if not isinstance(c, int) or isinstance(c, bool) or c < 2:
            raise ValueError(
                f"task {task!r} is multiclass: pass num_classes={{{task!r}: C}} with C >= 2, "
                f"not {c!r}"
            )
        out[task] = c
    return out


class MultiTaskRecModel(nn.Module):
    """Base of the mtlrec models: embeddings of the sparse features concatenated with the dense
    features form the input ``x`` (:meth:`embed`); subclasses build the rest.

    Parameter groups (what the balancer is given):

    - :meth:`embedding_parameters`: the embedding tables (shared by every task; large — the
      balancer may treat them approximately);
    - :meth:`dense_shared_parameters`: the shared dense layers (bottoms, experts, gates, ...);
    - :meth:`shared_parameters`: both of the above;
    - :meth:`task_parameters`: ``{task: module}``, what only that task's loss reaches.

    The groups are disjoint and cover every parameter of the model.
    ``forward(inputs) -> (representation, {task: prediction})``; the representation is what
    the task-specific parameters read (a tensor, a tuple of tensors, or None where no such
    frontier exists); each prediction has shape ``(N,)``, or ``(N, C)`` for a multiclass task
    (``num_classes={task: C}``).
    """

    def __init__(
        self,
        features: EmbeddingConfig,
        tasks: Mapping[str, str] | Sequence[str],
        *,
        dense_dim: int = 0,
        backend: str = "auto",
        init_std: float = 0.05,
        check_ids: bool = True,
        dropout: float = 0.0,
        num_classes: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.task_kinds = normalize_tasks(tasks)
        self.tasks = tuple(self.task_kinds)
        self.outputs = check_num_classes(self.task_kinds, num_classes)
        """``{task: width of its output}``: the class count of a multiclass task, else 1."""
        check_count("dense_dim", dense_dim, 0)
        if not (isinstance(dropout, int | float) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), not {dropout!r}")
        self.dropout = float(dropout)
        self.embedding = SparseEmbeddings(features, backend, init_std=init_std, check_ids=check_ids)
        self.dense_dim = dense_dim
        self.input_dim = self.embedding.output_dim + dense_dim
        if self.input_dim == 0:
            raise ValueError("the model has no inputs: give sparse features or dense_dim > 0")

    # ------------------------------------------------------------------ groups
    def dense_shared_modules(self) -> list[nn.Module]:
        """The shared dense modules (subclasses)."""
        raise NotImplementedError

    def task_modules(self) -> dict[str, nn.Module]:
        """``{task: module}`` (subclasses)."""
        raise NotImplementedError

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables, in feature order."""
        return list(self.embedding.parameters())

    def dense_shared_parameters(self) -> list[nn.Parameter]:
        """The shared parameters other than the embedding tables."""
        return [p for m in self.dense_shared_modules() for p in m.parameters()]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Embedding tables and dense shared layers."""
        return self.embedding_parameters() + self.dense_shared_parameters()

    def task_parameters(self) -> dict[str, nn.Module]:
        """``{task: module}`` of the task-specific parameters, in task order."""
        return self.task_modules()

    # ------------------------------------------------------------------ split backward
    def table_frontier(self) -> Tensor:
        """The leaf standing in for the embedding tables, for ``Balancer(tables=[...])``: the
        split backward that sharded tables and fused optimizers need (ONE backward of
        ``Σ_t c_t ℓ̃_t`` into the tables per step; see
        :meth:`SparseEmbeddings.table_frontier`). Call :meth:`backward_tables` after every
        ``balancer.backward``."""
        return self.embedding.table_frontier()

    def backward_tables(self) -> None:
        """The one backward through the embedding lookup (fused optimizers update the tables
        here); see :meth:`SparseEmbeddings.backward_tables`."""
        self.embedding.backward_tables()

    def skip_tables(self) -> None:
        """Drop the lookup waiting for :meth:`backward_tables` without running it, for a step
        the balancer skipped (``stats.skipped``); see :meth:`SparseEmbeddings.skip_tables`."""
        self.embedding.skip_tables()

    # ------------------------------------------------------------------ input
    def embed(self, inputs: RecInputs) -> Tensor:
        """``x = [pooled embeddings, dense]``, shape ``(N, input_dim)``, from a
        :class:`RecInputs` (bags as ``Jagged``; ``dense`` is ``(N, 0)`` when there are none)."""
        check_inputs(inputs, type(self).__name__)
        parts = [self.embedding(inputs)] if self.embedding.features else []
        if self.dense_dim:
            if inputs.dense.numel() == 0:
                raise ValueError(
                    f"{type(self).__name__} was built with dense_dim={self.dense_dim} but the "
                    f"inputs have no dense features"
                )
            if inputs.dense.dim() != 2 or inputs.dense.shape[1] != self.dense_dim:
                raise ValueError(
                    f"dense features: expected shape (N, {self.dense_dim}), got "
                    f"{tuple(inputs.dense.shape)}"
                )
            parts.append(inputs.dense.to(self.embedding_dtype()))
        elif inputs.dense.shape[-1] > 0:
            raise ValueError(
                f"the inputs have {inputs.dense.shape[-1]} dense features but "
                f"{type(self).__name__} was built with dense_dim=0; pass dense_dim"
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def embedding_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def forward(self, inputs: RecInputs) -> tuple[Any, dict[str, Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"tasks={self.task_kinds}, input_dim={self.input_dim}"


def gate_mix(experts: Tensor, gate_logits: Tensor) -> Tensor:
    """``Σ_i softmax(g)_i · e_i``: experts ``(N, E, H)``, gate logits ``(N, E)`` -> ``(N, H)``."""
    weights = torch.softmax(gate_logits, dim=-1)
    return torch.einsum("ne,neh->nh", weights, experts)
