"""What ``Balancer.backward`` reports, kept on the device until asked for."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BalanceStats:
    """Per-task statistics of one balancing step. Tensors stay on the device (no host sync);
    :meth:`to_dict` copies them to the host in one transfer.

    Attributes:
        task_names: task order of every (T,) tensor below.
        losses: raw task losses (T,), detached.
        transformed: transformed losses ℓ̃_t (T,), detached.
        grad_norms: ‖∇θ ℓ̃_t‖ of the shared parameters per task (T,), where per-task
            gradients were computed (None for loss-level methods, which never form them).
        weights: effective per-task weights (T,) as the aggregator reports them, or None.
        update_norm: norm of the shared update written to ``.grad`` (scalar tensor).
        engine: the gradient engine that computed this step (None if none was needed).
        skipped: True when a ``loss_scale`` was given and some gradient was not finite (the
            fp16 backward overflowed): nothing was written to ``.grad`` or to the balancer's
            state; ``update_norm`` is None and ``grad_norms`` show which rows overflowed. The
            caller lowers its loss scale and skips ``optimizer.step()``.
        table_factors: with ``Balancer(tables=...)``, the factors ``c_t`` (T,) of the one
            backward of ``Σ_t c_t ℓ̃_t`` that gave the tables their gradient (None without
            tables, and for a skipped step whose factors were never formed).
    """

    task_names: tuple[str, ...]
    losses: Tensor
    transformed: Tensor
    grad_norms: Tensor | None
    weights: Tensor | None
    update_norm: Tensor | None
    engine: str | None
    skipped: bool = False
    table_factors: Tensor | None = None

    def to_dict(self) -> dict[str, float]:
        """``{"loss/<task>": ..., "grad_norm/<task>": ..., "weight/<task>": ...,
        "table_factor/<task>": ..., "update_norm": ...}`` as Python floats (one device-to-host
        copy); a skipped step adds ``"skipped": 1.0``."""
        parts: list[tuple[str, Tensor]] = [("loss", self.losses), ("transformed", self.transformed)]
        if self.grad_norms is not None:
            parts.append(("grad_norm", self.grad_norms))
        if self.weights is not None:
            parts.append(("weight", self.weights))
        if self.table_factors is not None:
            parts.append(("table_factor", self.table_factors))
        rows = [t.detach().reshape(-1).to(torch.float64) for _, t in parts]
        extra = [] if self.update_norm is None else [self.update_norm.detach().reshape(1).double()]
        host = torch.cat([r.to(rows[0].device) for r in rows + extra]).cpu().tolist()
        out: dict[str, float] = {}
        i = 0
        for key, _ in parts:
            for name in self.task_names:
                out[f"{key}/{name}"] = host[i]
                i += 1
        if extra:
            out["update_norm"] = host[i]
        if self.skipped:
            out["skipped"] = 1.0
        return out
