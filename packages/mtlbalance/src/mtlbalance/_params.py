"""Parameter handling: named parameter groups and the flat (T, P) layout."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

ParamSource = nn.Module | Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Mapping[str, Tensor]


def named_params(source: ParamSource, prefix: str) -> list[tuple[str, Tensor]]:
    """Turn a module, a mapping, or an iterable of tensors / (name, tensor) pairs into named
    parameters that require grad. Names are used in error messages."""
    if isinstance(source, Tensor):
        raise TypeError(
            f"{prefix}: got a single tensor; pass a module, a list of parameters or "
            f"module.named_parameters()"
        )
    if isinstance(source, nn.Module):
        items: list[tuple[str, Tensor]] = [
            (f"{prefix}.{n}", p) for n, p in source.named_parameters()
        ]
    elif isinstance(source, Mapping):
        items = [(f"{prefix}.{n}", p) for n, p in source.items()]
    else:
        items = []
        for i, entry in enumerate(source):
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
                items.append((f"{prefix}.{entry[0]}", entry[1]))
            else:
                items.append((f"{prefix}[{i}]", entry))  # type: ignore[arg-type]
    out = []
    for name, p in items:
        if not isinstance(p, Tensor):
            raise TypeError(f"{name} is a {type(p).__name__}, not a tensor/parameter")
        if not p.is_leaf:
            raise ValueError(
                f"{name} is not a leaf tensor; pass the model's parameters, not results of "
                f"computations on them"
            )
        if p.requires_grad:
            out.append((name, p))
    return out


def check_disjoint(
    shared: list[tuple[str, Tensor]], task: Mapping[str, list[tuple[str, Tensor]]]
) -> None:
    """A parameter may be shared or belong to exactly one task, never both, never twice."""
    owner: dict[int, str] = {}
    for name, p in shared:
        if id(p) in owner:
            raise ValueError(f"{name} is listed twice among the shared parameters ({owner[id(p)]})")
        owner[id(p)] = name
    for task_name, params in task.items():
        for name, p in params:
            if id(p) in owner:
                raise ValueError(
                    f"parameter {name} of task {task_name!r} is also given as {owner[id(p)]}; a "
                    f"parameter is either shared or task-specific, not both (a parameter that "
                    f"several tasks' losses reach belongs to the shared group)"
                )
            owner[id(p)] = name


def check_table_overlap(shared: list[tuple[str, Tensor]], tables: list[tuple[str, Tensor]]) -> None:
    """A parameter is balanced exactly (``shared``) or approximately (``tables``), not both."""
    in_shared = {id(p): n for n, p in shared}
    seen: dict[int, str] = {}
    for name, p in tables:
        if id(p) in in_shared:
            raise ValueError(
                f"{name} is also given as {in_shared[id(p)]}; a parameter is balanced either "
                f"exactly (in `shared`, as a row of the (T, P) matrix) or approximately (in "
                f"`tables`), not both: remove it from one of them"
            )
        if id(p) in seen:
            raise ValueError(f"{name} is listed twice among the tables ({seen[id(p)]})")
        seen[id(p)] = name


class FlatLayout:
    """Where each shared parameter lives in a flat vector of length P (and in each row of a
    (T, P) matrix). All parameters must share one device and dtype."""

    def __init__(self, params: list[tuple[str, Tensor]]):
        if not params:
            raise ValueError(
                "no shared parameters that require grad; pass the shared part of the model "
                "(e.g. model.encoder) as `shared`"
            )
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        devices = {p.device for p in self.params}
        dtypes = {p.dtype for p in self.params}
        if len(devices) > 1 or len(dtypes) > 1:
            raise ValueError(
                f"all shared parameters must live on one device with one dtype, got devices "
                f"{sorted(map(str, devices))} and dtypes {sorted(map(str, dtypes))}; move the "
                f"model with model.to(device, dtype) first"
            )
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.numels = [p.numel() for p in self.params]
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        self.total = self.offsets[-1]

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of a (P,) tensor, shaped like the parameters (no copy)."""
        return [
            flat[a:b].view_as(p)
            for a, b, p in zip(self.offsets[:-1], self.offsets[1:], self.params, strict=True)
        ]

    def state_dtype(self) -> torch.dtype:
        """Float32 at least: norms and moving averages of half-precision gradients are kept in
        float32."""
        return torch.promote_types(self.dtype, torch.float32)


def instance_of(value: Any, kind: type, what: str, example: str) -> Any:
    """``value`` if it is a ``kind`` instance; else a TypeError saying what to pass (a method
    name is for :func:`mtlbalance.make`, not the Balancer)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str):
        raise TypeError(
            f"{what}={value!r}: the Balancer takes a {kind.__name__} instance (e.g. {example}); "
            f"to build a method by name use mtlbalance.make({value!r}, shared, task_params)"
        )
    raise TypeError(f"{what} must be a {kind.__name__}, got {type(value).__name__}")


def check_saved_tables(saved: Mapping[str, Any], own: list[tuple[str, Tensor]]) -> None:
    """A resumed state must come from a Balancer with the same ``tables=`` (name: shape)."""
    mine = {n: list(p.shape) for n, p in own}
    if dict(saved) != mine:
        raise ValueError(
            f"the saved state was made with tables {dict(saved) or 'none'} (name: shape), "
            f"this balancer has {mine or 'none'}; the aggregator's state covers the "
            f"`shared` parameters only, so a run resumes with the same split between "
            f"`shared` and `tables` (build the balancer with the same tables=)"
        )


_PER_RANK = "_mtlbalance_per_rank"


def per_rank(tensor: Tensor) -> Tensor:
    """Mark a tensor given in ``Balancer(tables=...)`` as holding THIS RANK'S OWN rows — an
    activation leaf such as mtlrec's table frontier (the pooled embeddings of this rank's
    samples), not a parameter replicated on every rank — and return the same tensor object.

    The mark is a plain attribute on the tensor (``tensor._mtlbalance_per_rank = True``): it
    survives ``tensor.data = ...`` (the frontier is refilled each forward) but not a copy.

    Data parallel (``Balancer(..., process_group=...)``, W ranks, each passing its local mean
    losses ``ℓ_t^r`` of an equal shard): the global loss is ``ℓ_t = (1/W) Σ_r ℓ_t^r`` and rank
    r's rows ``Ê_r`` enter only ``ℓ^r``, so ``∂ℓ/∂Ê_r = (1/W) ∂ℓ^r/∂Ê_r``: the tensor's gradient
    is this rank's local one times ``1/W`` — never averaged or summed across the ranks (a
    replicated table's gradient is averaged). What the balancer decides from it is made the
    same on every rank with one all-reduce of one float64 per such tensor (its squared norm,
    summed: the global norm ``sqrt(Σ_r ‖g_r‖²)``; a non-finite gradient on any rank makes it
    non-finite): the finiteness check, ``max_update_norm`` clipping and the reported norms.
    Such a tensor cannot be accumulated (``accumulate``) under a process group. With one
    process the mark changes nothing.

    Raises ``ValueError`` (naming the tensor) unless ``tensor`` is a leaf tensor that requires
    grad.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"per_rank() marks a tensor, got {type(tensor).__name__}")
    what = f"tensor of shape {tuple(tensor.shape)} and dtype {tensor.dtype}"
    if not tensor.is_leaf:
        raise ValueError(
            f"per_rank(): the {what} is not a leaf tensor (it was computed by "
            f"{type(tensor.grad_fn).__name__}); mark the leaf that holds this rank's rows "
            f"(e.g. mtlrec's model.table_frontier(), or x.detach().requires_grad_())"
        )
    if not tensor.requires_grad:
        raise ValueError(
            f"per_rank(): the {what} does not require grad, so the balancer would give it no "
            f"gradient; call .requires_grad_() on it first"
        )
    setattr(tensor, _PER_RANK, True)
    return tensor


def is_per_rank(tensor: Tensor) -> bool:
    """True for a tensor marked with :func:`per_rank`."""
    return bool(getattr(tensor, _PER_RANK, False))
