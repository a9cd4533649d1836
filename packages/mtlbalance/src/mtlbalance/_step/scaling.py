"""Boundary stage "loss scale": in at the seed of every backward through the network, out of
every gradient that backward returns, before any other stage reads it.

With a loss scale ``S`` (fp16 autocast) the backward is seeded with ``S ∂ℓ̃/∂ℓ`` so that small
fp16 gradients do not underflow, and what comes back is divided by ``S`` at once (in float32
at least: a scale such as 2¹⁶ does not fit in float16). The stages between never see a scaled
value; a non-finite gradient then means an overflow, and the check skips the step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

LossScale = float | Tensor | None


def parse(loss_scale: LossScale, like: Tensor) -> Tensor | None:
    """``loss_scale`` as a 0-dim tensor on the losses' device and dtype (None stays None).

    A number is validated here; a tensor's value is validated with the step's one host
    check (see :func:`bad_flag`), so a scale kept on the device costs no extra sync."""
    if loss_scale is None:
        return None
    if isinstance(loss_scale, Tensor):
        if loss_scale.numel() != 1:
            raise ValueError(
                f"loss_scale must be a number or a one-element tensor, got a tensor of shape "
                f"{tuple(loss_scale.shape)}"
            )
        if loss_scale.dtype == torch.bool or loss_scale.is_complex():
            raise ValueError(
                f"loss_scale must be a real number or a floating-point tensor, got a "
                f"{loss_scale.dtype} tensor"
            )
        return loss_scale.detach().reshape(()).to(device=like.device, dtype=like.dtype)
    if isinstance(loss_scale, bool) or not isinstance(loss_scale, numbers.Real):
        raise ValueError(
            f"loss_scale must be None, a positive number or a one-element tensor, got "
            f"{type(loss_scale).__name__} {loss_scale!r}"
        )
    value = float(loss_scale)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"loss_scale must be a positive finite number (e.g. 2.0**16), got {loss_scale!r}"
        )
    finfo = torch.finfo(like.dtype)
    if not finfo.tiny <= value <= finfo.max:
        raise ValueError(
            f"loss_scale {value:g} is not representable in the losses' dtype {like.dtype}; "
            f"use a smaller scale"
        )
    return torch.full((), value, dtype=like.dtype, device=like.device)


def bad_flag(scale: Tensor) -> Tensor:
    """Device flag: the loss scale is zero, negative or not finite."""
    return ~(torch.isfinite(scale) & (scale > 0))


def seeded(seed: Tensor, scale: Tensor | None) -> Tensor:
    """What a backward through the network is seeded with: ``S ∂ℓ̃/∂ℓ``."""
    return seed if scale is None else seed * scale


def unscale_(tensor: Tensor, scale: Tensor) -> None:
    """``tensor /= scale`` in place, at least in float32 (a half tensor is divided in float32
    and stored back in its own dtype)."""
    if tensor.dtype == scale.dtype:
        tensor.div_(scale)
    else:
        wide = torch.promote_types(torch.promote_types(tensor.dtype, scale.dtype), torch.float32)
        tensor.copy_(tensor.to(wide).div_(scale.to(device=tensor.device, dtype=wide)))


def unscaled(grads: Sequence[Tensor | None], scale: Tensor | None) -> list[Tensor | None]:
    """``g / scale`` for each gradient, out of place (autograd may return views or expanded
    tensors), computed in float32 at least and stored in the gradient's dtype; sparse
    gradients (tables) stay sparse; None stays None. Without a scale: the list unchanged."""
    if scale is None:
        return list(grads)
    present = [g for g in grads if g is not None]
    if not present:
        return list(grads)
    if all(
        not g.is_sparse and g.dtype == scale.dtype and g.device == scale.device for g in present
    ):
        divided = list(torch._foreach_div(present, scale))
    else:
        divided = []
        for g in present:
            wide = torch.promote_types(torch.promote_types(g.dtype, scale.dtype), torch.float32)
            divided.append((g.to(wide) / scale.to(device=g.device, dtype=wide)).to(g.dtype))
    it = iter(divided)
    return [None if g is None else next(it) for g in grads]
