"""Loss transforms: the loss level of balancing, ``(T,) losses -> (T,) losses to differentiate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn


class LossTransform(nn.Module):
    """Maps the vector of task losses to the vector whose gradients are balanced.

    Subclasses implement :meth:`forward`. A transform may hold state (learnable parameters,
    which the :class:`~mtlbalance.Balancer` hands to the optimizer through
    ``balancer.parameters()``; loss history updated in :meth:`epoch_end`) and declares the
    losses it cannot take in :meth:`domain_violation`.

    The transform's own parameters receive the gradient of ``sum_t transformed_t``.
    """

    #: Registry name; a subclass that sets it in its own body is registered (with the
    #: ``sum`` aggregator as the method of the same name). Also set ``reference``.
    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    cost: ClassVar[str] = "one backward (as EW)"
    randomized: ClassVar[bool] = False
    #: True when ℓ̃_t depends on ℓ_t alone (then ∂ℓ̃/∂ℓ is diagonal and each task's backward
    #: touches only that task's graph). Set False for transforms that mix the losses.
    elementwise: ClassVar[bool] = True

    def setup(self, task_names: Sequence[str]) -> None:
        """Called once, when the task names are known (before the first forward)."""

    def forward(self, losses: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def domain_violation(self, losses: Tensor) -> Tensor | None:
        """Boolean mask (T,) of losses this transform cannot take, or None if it takes any."""
        return None

    def domain_message(self) -> str:
        return "loss outside the domain of the loss transform"

    def epoch_end(self) -> None:
        """Hook called by ``Balancer.epoch_end()`` (DWA, STCH keep per-epoch loss history)."""

    def after_step(self, losses: Tensor) -> None:
        """Hook called by ``Balancer.after_step(losses)`` with losses computed after the
        optimizer step (FAMO)."""

    def reset(self) -> None:
        """Forget all training state (learnable parameters back to their initial values)."""


class LearnedScales(LossTransform):
    """Base of transforms with one learned scalar per task, ``s`` (initialised at 0), created
    when the tasks are known and moved to the losses' device on the first forward. ``s`` is
    the balancer's own parameter: give ``balancer.parameters()`` to the optimizer."""

    s: nn.Parameter

    def setup(self, task_names: Sequence[str]) -> None:
        self.s = nn.Parameter(torch.zeros(len(task_names)))

    def scales(self, losses: Tensor) -> Tensor:
        if self.s.device != losses.device:
            self.s.data = self.s.data.to(losses.device)
        return self.s

    def reset(self) -> None:
        if "s" in self._parameters:
            with torch.no_grad():
                self.s.zero_()


class LogDomain:
    """Mixin of transforms that take ``log(ℓ + ε)``: losses must be greater than ``-ε``."""

    eps: float
    #: how the message names the transform, e.g. "the log transform"
    domain_subject: ClassVar[str] = "this transform"

    def domain_violation(self, losses: Tensor) -> Tensor:
        return losses <= -self.eps

    def domain_message(self) -> str:
        return (
            f"{self.domain_subject} needs losses > -eps (eps={self.eps:g}); use a non-negative "
            f"loss (e.g. MSE, cross-entropy), shift it, or use a method without the log"
        )
