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
    """A *weighting* of the Gram matrix ``G = J Jᵀ`` (T × T): weights ``w``, aggregated as
    the update ``wᵀ J`` — as torchjd separates a ``Weighting`` from its ``Aggregator``. A
    method implements :meth:`weights_from_gram` only (MGDA, PCGrad, IMTL-G, CAGrad,
    Nash-MTL, Aligned-MTL, UPGrad, FairGrad, GradVac); it never sees the (T, P) matrix, so
    whatever forms G (from the rows, or block by block) can run it.

    Set ``weights_task_params = True`` where the method's weights also scale the task-specific
    gradients (MGDA, Nash-MTL: the weights act as loss weights)."""

    weights_task_params: ClassVar[bool] = False

    def weights_from_gram(self, gram: Tensor, losses: Tensor) -> Tensor:
        raise NotImplementedError

    def weigh(self, gram: Tensor, losses: Tensor) -> Aggregation:
        """The weighting: the weights of the update ``wᵀ J`` and (``weights_task_params``) of
        the task-specific gradients. A method whose update is a rescaled ``wᵀ J`` (Nash-MTL's
        clip, from ``‖wᵀJ‖² = wᵀ G w``) overrides this, still from the Gram matrix only."""
        w = self.weights_from_gram(gram, losses)
        return Aggregation(weights=w, task_weights=w if self.weights_task_params else None)

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        """The aggregation: ``out = wᵀ J`` with the weighting of ``G = J Jᵀ``."""
        result = self.weigh(gram_matrix(jacobian), losses)
        assert result.weights is not None
        w = result.weights.to(jacobian.dtype)
        torch.mv(jacobian.T, w, out=out)
        task_weights = result.task_weights
        if task_weights is result.weights:
            task_weights = w
        elif task_weights is not None:
            task_weights = task_weights.to(jacobian.dtype)
        return Aggregation(weights=w, task_weights=task_weights)


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
