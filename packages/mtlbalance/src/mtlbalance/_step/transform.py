"""Stage "transform": ``ℓ̃ = transform(ℓ)``, its Jacobian ``∂ℓ̃/∂ℓ`` (the seed of every
backward) and the transform's own parameters' gradients ``∇ Σ_t ℓ̃_t``."""

from __future__ import annotations

import torch
from torch import Tensor

from ..transforms.base import LossTransform
from .context import Grads


def _zero_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g


def apply(
    transform: LossTransform, vec: Tensor, params: list[Tensor]
) -> tuple[Tensor, Tensor, Grads | None]:
    """``(ℓ̃, ∂ℓ̃/∂ℓ, ∇_params Σ_t ℓ̃_t)``. The transform runs on a detached copy of the losses,
    so its Jacobian and its parameters' gradients come from a tiny graph of T values: a
    (T,) diagonal for an elementwise transform, else a (T, T) matrix."""
    leaf = vec.detach().requires_grad_(True)
    transformed = transform(leaf)
    if transformed.shape != vec.shape:
        raise ValueError(
            f"{type(transform).__name__} returned shape {tuple(transformed.shape)} for "
            f"{vec.shape[0]} losses; a transform must return one value per task"
        )
    if transform.elementwise:
        grads = torch.autograd.grad(
            transformed.sum(), [leaf, *params], retain_graph=False, allow_unused=True
        )
        seed = _zero_if_none(grads[0], leaf)
        param_grads: Grads | None = list(grads[1:]) if params else None
    else:
        rows = [
            _zero_if_none(
                torch.autograd.grad(transformed[t], leaf, retain_graph=True, allow_unused=True)[0],
                leaf,
            )
            for t in range(vec.shape[0])
        ]
        seed = torch.stack(rows)
        param_grads = (
            list(torch.autograd.grad(transformed.sum(), params, allow_unused=True))
            if params
            else None
        )
    return transformed.detach(), seed.detach(), param_grads
