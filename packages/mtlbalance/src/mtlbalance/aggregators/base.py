"""Aggregators: the gradient level of balancing.

Three kinds, by what they need (the class attribute ``requires``):

* ``"losses"`` — :class:`LossWeighting`: weights from the losses alone; the balancer runs one
  backward of ``sum_t w_t ℓ̃_t`` (the cost of EW). Loss-level methods.
* ``"jacobian"`` — :class:`GradientAggregator`: the ``(T, P)`` matrix of per-task gradients of
  the shared parameters in, the ``(P,)`` shared update out. :class:`GramWeighting` is the
  sub-kind that needs only the Gram matrix ``J Jᵀ`` and returns weights.
* ``"representation"`` — :class:`RepresentationWeighting`: weights from the per-task gradients
  at the shared representation (``(T, R)``), then one weighted backward (MGDA-UB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

Requirement = Literal["losses", "jacobian", "representation"]


@dataclass
class Aggregation:
    """What a :class:`GradientAggregator` returns besides the update it wrote.

    Attributes:
        weights: effective per-task weights (T,) for stats (``update = Σ_t weights_t · row_t``
            of whatever rows the method combines), or None where no such weights exist.
        task_weights: factors (T,) applied to each task's task-specific gradients, or None for
            1 (Algorithm 1: task parameters get the plain gradient of their transformed loss).
    """

    weights: Tensor | None = None
    task_weights: Tensor | None = None


class Aggregator(nn.Module):
    """Base class of every aggregator. Holds state as module parameters/buffers or as extra
    state, so ``state_dict()`` carries it.

    A subclass that sets ``name`` in its own body is registered under that name (see
    :mod:`mtlbalance.registry`); it also sets ``reference`` (the paper) and ``cost`` (the
    work per step beyond what its ``requires`` already costs), and its constructor's keyword
    defaults are the paper's hyperparameters.
    """

    name: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    cost: ClassVar[str] = ""
    randomized: ClassVar[bool] = False
    requires: ClassVar[Requirement] = "jacobian"

    def setup(self, task_names: Sequence[str]) -> None:
        """Called once, when the task names are known."""

    def epoch_end(self) -> None:
        """Hook called by ``Balancer.epoch_end()``."""

    def after_step(self, losses: Tensor) -> None:
        """Hook called by ``Balancer.after_step(losses)`` (losses after the optimizer step)."""

    def reset(self) -> None:
        """Forget all training state."""


class LossWeighting(Aggregator):
    """Weights from the losses; the update is one backward of ``Σ_t w_t ℓ̃_t``."""

    requires: ClassVar[Requirement] = "losses"
    cost: ClassVar[str] = "one backward (as EW)"

    def forward(self, losses: Tensor, transformed: Tensor) -> Tensor | None:
        """Return weights (T,) or None for all ones (which skips the multiplication)."""
        raise NotImplementedError


class GradientAggregator(Aggregator):
    """``(T, P)`` per-task gradients -> ``(P,)`` shared update, written into ``out``."""

    requires: ClassVar[Requirement] = "jacobian"

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        raise NotImplementedError


class GramWeighting(GradientAggregator):
    """An aggregator that needs only the Gram matrix ``G = J Jᵀ`` (T × T) and returns weights
    ``w``; the update is ``wᵀ J``. Cheaper than methods that read the whole matrix.

    Set ``weights_task_params = True`` where the method's weights also scale the task-specific
    gradients (MGDA, Nash-MTL: the weights act as loss weights)."""

    weights_task_params: ClassVar[bool] = False

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        gram = gram_matrix(jacobian)
        w = self.weights_from_gram(gram, losses).to(jacobian.dtype)
        torch.mv(jacobian.T, w, out=out)
        return Aggregation(weights=w, task_weights=w if self.weights_task_params else None)


class RepresentationWeighting(Aggregator):
    """Weights from the ``(T, R)`` per-task gradients at the shared representation; the update
    is one backward of ``Σ_t w_t ℓ̃_t``. Needs ``representation=`` in ``Balancer.backward``."""

    requires: ClassVar[Requirement] = "representation"

    def forward(self, rep_jacobian: Tensor, *, losses: Tensor) -> Tensor:
        raise NotImplementedError


def gram_matrix(jacobian: Tensor) -> Tensor:
    """``J Jᵀ`` in at least float32."""
    j = jacobian if jacobian.dtype in (torch.float32, torch.float64) else jacobian.float()
    return j @ j.T
