"""Norms of gradients: the fast ones every step reads, and the overflow-free one the checks
use to tell a huge finite gradient from a non-finite one (private)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def norms(tensors: Sequence[Tensor]) -> Tensor:
    """Norms of each tensor (float32 at least: half-precision squares overflow), with one
    multi-tensor kernel where possible instead of one launch per tensor. A sparse gradient
    (of a table) counts its coalesced values."""
    if any(t.is_sparse for t in tensors):
        device = tensors[0].device
        return torch.stack([norm_of(t).to(device) for t in tensors])
    if all(t.dtype in (torch.float32, torch.float64) for t in tensors):
        by_dtype = {t.dtype for t in tensors}
        if len(by_dtype) == 1:
            return torch.stack(torch._foreach_norm(list(tensors)))
    return torch.stack(
        [
            torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32)).double()
            for t in tensors
        ]
    )


def norm_of(t: Tensor) -> Tensor:
    """One tensor's norm in float64 (a sparse tensor: of its coalesced values)."""
    values = t.coalesce().values() if t.is_sparse else t
    return torch.linalg.vector_norm(
        values, dtype=torch.promote_types(values.dtype, torch.float32)
    ).double()


def exact_norm(tensors: Sequence[Tensor]) -> float | None:
    """The norm of these tensors together, computed without overflow (in float64, scaled by
    the largest magnitude), or None if some entry is not finite. For the rare path of a
    check that found a non-finite fast norm: costs copies and host reads."""
    flat = [
        (t.coalesce().values() if t.is_sparse else t).detach().reshape(-1).double() for t in tensors
    ]
    if not all(bool(torch.isfinite(f).all()) for f in flat):
        return None
    big = max((float(f.abs().max()) for f in flat if f.numel()), default=0.0)
    if big == 0.0:
        return 0.0
    return big * math.sqrt(sum(float((f / big).square().sum()) for f in flat))


def overflow_message(subject: str, tensors: Sequence[Tensor], norm: float) -> str:
    """What to say about a finite gradient whose norm overflows its dtype's arithmetic."""
    dtype = tensors[0].dtype
    return (
        f"{subject} is finite, but too large for the balancing arithmetic in {dtype}: its "
        f"norm is {norm:.3g} and the squares of its entries overflow (norms, Gram matrices "
        f"and moving averages of it would be inf or NaN); nothing was written to .grad or to "
        f"the balancer's state. Look for an exploding gradient (learning rate, loss), or keep "
        f"the parameters in float64"
    )
