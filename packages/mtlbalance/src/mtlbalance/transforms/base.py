"""Loss transforms: the loss level of balancing, ``(T,) losses -> (T,) losses to differentiate``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

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
