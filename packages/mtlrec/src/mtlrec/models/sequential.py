"""Models of sequential conversion funnels (impression -> click -> conversion): ESMM and AITM.

In both, a later task's prediction is computed from an earlier task's network, so those
networks are reached by several tasks' losses: they are *shared* parameters (a parameter that
several losses reach must be, or the balancer would drop the other losses' gradients). Only
what a single task's loss reaches is task-specific. No tensor separates the shared part from
the heads without one being computed from another, so both models return ``None`` as the
representation: use the ``loop``/``batched`` engines (``auto`` picks one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MLP, MultiTaskRecModel, Tower, check_layers
from .embeddings import EmbeddingConfig
from .inputs import RecInputs

__all__ = ["AITM", "ESMM", "logit_of_product"]


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2``."""
    cut = -math.log(2.0)
    # each branch on inputs clamped to its own side, so the branch not taken has a finite
    # gradient (torch.where would otherwise propagate its inf * 0 = nan)
    near = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near, far)


def logit_of_product(a: Tensor, b: Tensor) -> Tensor:
    """``logit(σ(a)·σ(b))`` computed in log space (no ``log(0)`` for large logits)."""
    log_p = F.logsigmoid(a) + F.logsigmoid(b)
    log_p = log_p.clamp(max=-torch.finfo(log_p.dtype).tiny)
    return log_p - _log1mexp(log_p)


class ESMM(MultiTaskRecModel):
    r"""Entire Space Multi-task Model (Ma et al., SIGIR 2018).

    Two towers read the same embeddings: ``a = CTR(x)``, ``b = CVR(x)``;
    ``pCTR = σ(a)``, ``pCVR = σ(b)``, ``pCTCVR = pCTR · pCVR``, all over the entire impression
    space (no sample selection bias: CVR is never trained on clicked rows only).

    Tasks and losses: the two tasks are ``(ctr, ctcvr)`` (names configurable) and both
    predictions are *logits* — ``ctr`` gives ``a``, ``ctcvr`` gives ``logit(pCTR·pCVR)``
    (computed stably in log space) — so both losses are ``BCEWithLogits``: ``ctr`` against
    the click label, ``ctcvr`` against ``click AND conversion``. The paper's loss is the sum of
    the two (EW); a balancer weighs them instead. pCVR itself is never supervised; read it with
    :meth:`cvr_logit`.

    Parameters: the CTR tower is reached by both losses, so it is *shared* (dense shared,
    beside the embeddings); the CVR tower is reached only by the ``ctcvr`` loss and is that
    task's parameters; the ``ctr`` task has no parameters of its own (an empty module).
    Representation: None (see the module docstring).

    Args:
        features, dense_dim, dropout, backend, init_std, check_ids: as for the other models.
        tasks: the two task names, ``(ctr, ctcvr)``, in that order.
        tower: hidden widths of each of the two towers.
    """

    def __init__(
        self,
        features: EmbeddingConfig,
        tasks: Mapping[str, str] | Sequence[str] = ("ctr", "ctcvr"),
        *,
        dense_dim: int = 0,
        tower: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        backend: str = "auto",
        init_std: float = 0.05,
        check_ids: bool = True,
    ) -> None:
        if isinstance(tasks, Mapping):
            bad = {t: k for t, k in tasks.items() if k != "binary"}
            if bad:
                raise ValueError(f"ESMM's tasks are binary (click, click-and-convert), got {bad}")
            tasks = list(tasks)
        if isinstance(tasks, str) or len(tasks) != 2:
            raise ValueError(
                f"ESMM takes exactly two tasks, (ctr, ctcvr) in that order, got {tasks!r}"
            )
        super().__init__(
            features,
            {t: "binary" for t in tasks},
            dense_dim=dense_dim,
            backend=backend,
            init_std=init_std,
            check_ids=check_ids,
            dropout=dropout,
        )
        tower = check_layers("tower", tower, allow_empty=True)
        self.ctr_task, self.ctcvr_task = self.tasks
        self.ctr_tower = Tower(self.input_dim, tower, self.dropout)
        self.cvr_tower = Tower(self.input_dim, tower, self.dropout)
        self._no_params = nn.Module()

    def dense_shared_modules(self) -> list[nn.Module]:
        return [self.ctr_tower]

    def task_modules(self) -> dict[str, nn.Module]:
        return {self.ctr_task: self._no_params, self.ctcvr_task: self.cvr_tower}

    def forward(self, inputs: RecInputs) -> tuple[None, dict[str, Tensor]]:
        x = self.embed(inputs)
        a, b = self.ctr_tower(x), self.cvr_tower(x)
        return None, {self.ctr_task: a, self.ctcvr_task: logit_of_product(a, b)}

    def cvr_logit(self, inputs: RecInputs) -> Tensor:
        """The logit of pCVR (conversion given click), for evaluation on clicked rows."""
        return self.cvr_tower(self.embed(inputs))


class _AIT(nn.Module):
    """Adaptive Information Transfer attention over ``(p, q)`` (Xi et al. 2021, Eq. 4–6):
    ``w_u = softmax_u(<h2(u), h3(u)> / √d)``, ``z = Σ_u w_u h1(u)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.h1 = nn.Linear(dim, dim)
        self.h2 = nn.Linear(dim, dim)
        self.h3 = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, p: Tensor, q: Tensor) -> Tensor:
        u = torch.stack([p, q], dim=1)  # (N, 2, d)
        scores = (self.h2(u) * self.h3(u)).sum(-1) * self.scale  # (N, 2)
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(-1) * self.h1(u)).sum(1)


class AITM(MultiTaskRecModel):
    r"""Adaptive Information Transfer Multi-task (Xi et al., KDD 2021) for a sequence of tasks
    (e.g. click -> conversion): tower ``q_t = T_t(x)``; for ``t > 1`` the information
    ``p_{t-1} = g_{t-1}(z_{t-1})`` of the previous task is fused by attention,
    ``z_t = AIT_t(p_{t-1}, q_t)`` (``z_1 = q_1``); ``ŷ_t = head_t(z_t)``.

    Parameters: a later task's loss reaches every earlier tower, transfer and attention layer,
    so those are shared (beside the embeddings); each task's head (an MLP and a linear output)
    is its own. Representation: None (``z_t`` is computed from ``z_{t-1}``).
    :meth:`calibration_loss` is the paper's behavioural expectation calibrator
    ``mean(max(ŷ_t − ŷ_{t-1}, 0))`` on probabilities of consecutive binary tasks; the trainer
    does not add it — add ``λ·calibration_loss(preds)`` to a task's loss in your own loop.

    Args:
        features, dense_dim, dropout, backend, init_std, check_ids, num_classes: as for the
            other models.
        tasks: the tasks in funnel order, ``{task: kind}`` or names (all binary).
        tower: hidden widths of each task's tower (``d = tower[-1]``).
        head: hidden widths of each task's head before its linear output.
    """

    def __init__(
        self,
        features: EmbeddingConfig,
        tasks: Mapping[str, str] | Sequence[str],
        *,
        dense_dim: int = 0,
        tower: Sequence[int] = (64, 32),
        head: Sequence[int] = (),
        dropout: float = 0.0,
        backend: str = "auto",
        init_std: float = 0.05,
        check_ids: bool = True,
        num_classes: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(
            features,
            tasks,
            dense_dim=dense_dim,
            backend=backend,
            init_std=init_std,
            check_ids=check_ids,
            dropout=dropout,
            num_classes=num_classes,
        )
        if len(self.tasks) < 2:
            raise ValueError(
                f"AITM transfers information between tasks: give >= 2, got {self.tasks}"
            )
        tower = check_layers("tower", tower)
        head = check_layers("head", head, allow_empty=True)
        dim = tower[-1]
        self.towers = nn.ModuleDict(
            {t: MLP(self.input_dim, tower, self.dropout) for t in self.tasks}
        )
        later = self.tasks[1:]
        self.transfer = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(dim, dim), nn.ReLU()) for t in later}
        )
        self.attention = nn.ModuleDict({t: _AIT(dim) for t in later})
        self.heads = nn.ModuleDict(
            {t: Tower(dim, head, self.dropout, self.outputs[t]) for t in self.tasks}
        )

    def dense_shared_modules(self) -> list[nn.Module]:
        return [self.towers, self.transfer, self.attention]

    def task_modules(self) -> dict[str, nn.Module]:
        return {t: self.heads[t] for t in self.tasks}

    def forward(self, inputs: RecInputs) -> tuple[None, dict[str, Tensor]]:
        x = self.embed(inputs)
        preds: dict[str, Tensor] = {}
        z_prev: Tensor | None = None
        for t in self.tasks:
            q = self.towers[t](x)
            z = q if z_prev is None else self.attention[t](self.transfer[t](z_prev), q)
            preds[t] = self.heads[t](z)
            z_prev = z
        return None, preds

    def calibration_loss(self, preds: Mapping[str, Tensor]) -> Tensor:
        """``mean over rows and consecutive binary task pairs of max(σ(ŷ_t) − σ(ŷ_{t-1}), 0)``:
        a later step of the funnel should not be likelier than an earlier one."""
        terms = [
            torch.relu(torch.sigmoid(preds[b]) - torch.sigmoid(preds[a])).mean()
            for a, b in zip(self.tasks[:-1], self.tasks[1:], strict=True)
            if self.task_kinds[a] == "binary" and self.task_kinds[b] == "binary"
        ]
        if not terms:
            raise ValueError("calibration_loss needs two consecutive binary tasks")
        return torch.stack(terms).mean()
