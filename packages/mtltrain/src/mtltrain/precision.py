"""Mixed precision for the trainer: bf16 autocast, or fp16 autocast with a dynamic loss scale
that the balancer applies to every task's backward (``Balancer.backward(loss_scale=S)``)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["Precision"]


class Precision:
    """Autocast and, for fp16, the dynamic loss scale S: an overflow (the balancer reports
    ``stats.skipped``) halves S and skips the step; ``growth_interval`` finite steps in a row
    double it."""

    def __init__(
        self, precision: str, device_type: str, init_scale: float, growth_interval: int
    ) -> None:
        self.precision = precision
        self.device_type = device_type
        self.growth_interval = growth_interval
        self.scale = float(init_scale)
        self.good_steps = 0
        self.skipped = 0  # steps skipped for an overflow, in the whole run

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device_type, dtype=dtype)

    def backward_kwargs(self) -> dict[str, Any]:
        """What ``Balancer.backward`` / ``accumulate`` take for this precision."""
        return {"loss_scale": self.scale} if self.precision == "fp16" else {}

    def after_backward(self, skipped: bool) -> bool:
        """Update the scale after a balanced backward; returns whether to take the step."""
        if skipped:
            self.scale /= 2.0
            self.good_steps = 0
            self.skipped += 1
            return False
        if self.precision == "fp16":
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= 2.0
                self.good_steps = 0
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.good_steps, self.skipped = state["scale"], state["good"], state["skipped"]
