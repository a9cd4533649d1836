"""What ``Balancer.backward`` reports, kept on the device until asked for."""

from __future__ import annotations

import functools
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
        mode: which mode computed the step: ``"exact"`` (Algorithm 1), or an approximation
            (``Balancer(mode=...)``): ``"probe"`` (``grad_norms`` are the probe's),
            ``"representation"`` (``grad_norms`` are those at z), ``"periodic/exact"`` (an
            exact step of the periodic mode) or ``"periodic/reuse"`` (factors reused; no
            ``grad_norms``).
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
    mode: str = "exact"

    def flat(self, prefix: str = "") -> tuple[tuple[str, ...], Tensor]:
        """The stats flattened for a tracker, without a host sync: the keys
        ``<prefix>loss/<task>``, ``<prefix>transformed/<task>``, ``<prefix>grad_norm/<task>``,
        ``<prefix>weight/<task>``, ``<prefix>table_factor/<task>`` (each part the step
        reports, in that order, tasks in order) and ``<prefix>update_norm``, and their values
        as one 1-D float64 tensor on the stats' device (copy it to the host when you like, in
        one transfer). ``skipped`` is not a value here (see :meth:`to_dict`)."""
        parts = [
            (name, tensor)
            for name, tensor in (
                ("loss", self.losses),
                ("transformed", self.transformed),
                ("grad_norm", self.grad_norms),
                ("weight", self.weights),
                ("table_factor", self.table_factors),
                ("update_norm", self.update_norm),
            )
            if tensor is not None
        ]
        keys = _keys(prefix, self.task_names, tuple(name for name, _ in parts))
        device = parts[0][1].device
        with torch.no_grad():
            values = torch.cat(
                [t.detach().reshape(-1).to(device=device, dtype=torch.float64) for _, t in parts]
            )
        if values.numel() != len(keys):
            raise ValueError(
                f"BalanceStats has {values.numel()} values for {len(keys)} keys {list(keys)}: "
                f"every per-task part must have one value per task {list(self.task_names)}"
            )
        return keys, values

    def to_dict(self) -> dict[str, float]:
        """``{"loss/<task>": ..., "grad_norm/<task>": ..., "weight/<task>": ...,
        "table_factor/<task>": ..., "update_norm": ...}`` as Python floats (the keys and values
        of :meth:`flat`, one device-to-host copy); a skipped step adds ``"skipped": 1.0``."""
        keys, values = self.flat()
        out = dict(zip(keys, values.cpu().tolist(), strict=True))
        if self.skipped:
            out["skipped"] = 1.0
        return out


@functools.lru_cache(maxsize=64)
def _keys(prefix: str, tasks: tuple[str, ...], parts: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        f"{prefix}update_norm" if part == "update_norm" else f"{prefix}{part}/{task}"
        for part in parts
        for task in (("",) if part == "update_norm" else tasks)
    )
