"""Dynamic weight average (DWA): weights from the rate of change of per-epoch losses."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import LossTransform


class DWA(LossTransform):
    r"""Dynamic weight average: ``ℓ̃_t = w_t ℓ_t`` with weights fixed for a whole epoch::

        r_t = L_t(e−1) / L_t(e−2),     w_t = T · exp(r_t / τ) / Σ_i exp(r_i / τ)

    ``L_t(e)`` is task t's average training loss over epoch e; ``w = 1`` in the first two
    epochs. The weights are positive and sum to T.

    Call ``balancer.epoch_end()`` at the end of every epoch: the losses of each step are
    summed on the device (no host sync) and folded into the history there. Without
    ``epoch_end`` this is EW. A task whose previous average loss is 0 gets ``r_t = 1``; a
    non-finite loss (a step the balancer rejects) is left out of the averages.

    Reference: S. Liu, E. Johns, A. J. Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019.

    Args:
        temperature: the softmax temperature τ (the paper's T = 2).
    """

    name: ClassVar[str] = "dwa"
    reference: ClassVar[str] = (
        "Liu et al., End-to-End Multi-Task Learning with Attention (MTAN), CVPR 2019"
    )
    cost: ClassVar[str] = "one backward (as EW); per-epoch loss averages"

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self._fresh()

    def _fresh(self) -> None:
        self.running: Tensor | None = None  # sum of this epoch's finite losses, per task
        self.count: Tensor | None = None  # number of finite losses this epoch, per task
        self.history: list[Tensor] = []  # average losses of the last two epochs, oldest first
        self.weights: Tensor | None = None  # None: all ones

    def forward(self, losses: Tensor) -> Tensor:
        self.running, self.count = accumulate(self.running, self.count, losses.detach())
        if self.weights is None:
            return losses
        return self.weights.to(device=losses.device, dtype=losses.dtype) * losses

    def epoch_end(self) -> None:
        if self.running is None or self.count is None:
            return  # an epoch without steps leaves the history as it is
        self.history = [*self.history, self.running / self.count.clamp_min(1)][-2:]
        self.running, self.count = None, None
        if len(self.history) == 2:
            self.weights = self.compute_weights(self.history[1], self.history[0])

    def compute_weights(self, last: Tensor, before: Tensor) -> Tensor:
        """``T · softmax(r / τ)`` with ``r = last / before`` (1 where ``before`` is 0)."""
        ratio = torch.where(before != 0, last / before, torch.ones_like(last))
        big = torch.finfo(ratio.dtype).max / 4  # (softmax subtracts the max: no overflow)
        logits = torch.nan_to_num(ratio / self.temperature, nan=0.0, posinf=big, neginf=-big)
        return last.shape[0] * torch.softmax(logits.clamp(-big, big), dim=0)

    def reset(self) -> None:
        self._fresh()

    def get_extra_state(self) -> Any:
        return {
            "running": None if self.running is None else self.running.clone(),
            "count": None if self.count is None else self.count.clone(),
            "history": [h.clone() for h in self.history],
            "weights": None if self.weights is None else self.weights.clone(),
        }

    def set_extra_state(self, state: Any) -> None:
        running = state["running"]
        self.running = None if running is None else running.clone()
        count = state["count"]
        self.count = None if count is None else count.clone()
        self.history = [h.clone() for h in state["history"]]
        weights = state["weights"]
        self.weights = None if weights is None else weights.clone()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}"


def accumulate(
    running: Tensor | None, count: Tensor | None, losses: Tensor
) -> tuple[Tensor, Tensor]:
    """Add the finite entries of ``losses`` to a per-task running sum and count (on the
    losses' device, no host sync)."""
    finite = torch.isfinite(losses)
    if running is None or count is None:
        dtype = torch.promote_types(losses.dtype, torch.float32)
        running = torch.zeros(losses.shape, dtype=dtype, device=losses.device)
        count = torch.zeros(losses.shape, dtype=dtype, device=losses.device)
    elif running.device != losses.device:
        running, count = running.to(losses.device), count.to(losses.device)
    running.add_(torch.where(finite, losses, torch.zeros_like(losses)).to(running.dtype))
    count.add_(finite.to(count.dtype))
    return running, count
