"""Hard parameter sharing and mixtures of experts: Shared-Bottom, OMoE, MMoE, CGC, PLE.

Following LibMTL, experts *and gates* are shared parameters (they belong to the encoder), the
towers are the task-specific parameters; CGC/PLE's task-specific experts are shared
parameters too (only task t's gate reads them, so other tasks' rows of the gradient matrix
are zero there). The representation handed to the balancer is what the towers read: one
tensor for Shared-Bottom and OMoE, a tuple with one tensor per task (in task order) for MMoE,
CGC and PLE — independent tensors, so ``engine="representation"`` is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .base import MLP, MultiTaskRecModel, Tower, check_count, check_layers, gate_mix
from .embeddings import EmbeddingConfig
from .inputs import RecInputs

__all__ = ["CGC", "PLE", "MMoE", "OMoE", "SharedBottom"]

_DOC_COMMON = """
    Args:
        features: embedding config, feature -> ``(num_embeddings, dim)`` (may be empty when
            every input is dense).
        tasks: ``{task: "binary" | "regression" | "multiclass"}`` or a list of names (all
            binary).
        dense_dim: number of dense features (``inputs.dense`` is ``(N, dense_dim)``).
        tower: hidden widths of each task's tower (then a linear output).
        dropout: after every hidden ReLU.
        backend, init_std, check_ids: for :class:`~mtlrec.models.SparseEmbeddings`.
        num_classes: ``{task: C}`` for every multiclass task (its tower outputs ``(N, C)``).
"""


class SharedBottom(MultiTaskRecModel):
    __doc__ = (
        """Shared-Bottom (Caruana 1997): ``z = bottom(x)``, ``ŷ_t = tower_t(z)``.
    Shared: embeddings, bottom. Task: towers. Representation: ``z``.
"""
        + _DOC_COMMON
        + """        bottom: hidden widths of the shared bottom MLP."""
    )

    def __init__(
        self,
        features: EmbeddingConfig,
        tasks: Mapping[str, str] | Sequence[str],
        *,
        dense_dim: int = 0,
        bottom: Sequence[int] = (128, 64),
        tower: Sequence[int] = (32,),
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
        self.bottom = MLP(self.input_dim, check_layers("bottom", bottom), self.dropout)
        tower = check_layers("tower", tower, allow_empty=True)
        self.towers = nn.ModuleDict(
            {
                t: Tower(self.bottom.out_features, tower, self.dropout, self.outputs[t])
                for t in self.tasks
            }
        )

    def dense_shared_modules(self) -> list[nn.Module]:
        return [self.bottom]

    def task_modules(self) -> dict[str, nn.Module]:
        return {t: self.towers[t] for t in self.tasks}

    def forward(self, inputs: RecInputs) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.bottom(self.embed(inputs))
        return z, {t: self.towers[t](z) for t in self.tasks}


class _Experts(nn.Module):
    """``E`` expert MLPs on the same input; ``(N, in) -> (N, E, H)``."""

    def __init__(self, in_features: int, count: int, hidden: Sequence[int], dropout: float):
        super().__init__()
        self.experts = nn.ModuleList(MLP(in_features, hidden, dropout) for _ in range(count))
        self.out_features = hidden[-1]

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1)


class MMoE(MultiTaskRecModel):
    __doc__ = (
        r"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018):
    ``z_t = Σ_i softmax(W_t x)_i · e_i(x)``, ``ŷ_t = tower_t(z_t)``.
    Shared: embeddings, experts and the per-task gates (as in LibMTL: the gates are part of the
    encoder). Task: towers. Representation: the tuple ``(z_t for t in tasks)``.
"""
        + _DOC_COMMON
        + """        num_experts: number of experts.
        expert: hidden widths of each expert MLP."""
    )

    _single_gate = False

    def __init__(
        self,
        features: EmbeddingConfig,
        tasks: Mapping[str, str] | Sequence[str],
        *,
        dense_dim: int = 0,
        num_experts: int = 4,
        expert: Sequence[int] = (64,),
        tower: Sequence[int] = (32,),
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
        check_count("num_experts", num_experts)
        self.experts = _Experts(
            self.input_dim, num_experts, check_layers("expert", expert), self.dropout
        )
        gate_names = ["all"] if self._single_gate else list(self.tasks)
        self.gates = nn.ModuleDict({g: nn.Linear(self.input_dim, num_experts) for g in gate_names})
        tower = check_layers("tower", tower, allow_empty=True)
        self.towers = nn.ModuleDict(
            {
                t: Tower(self.experts.out_features, tower, self.dropout, self.outputs[t])
                for t in self.tasks
            }
        )

    def dense_shared_modules(self) -> list[nn.Module]:
        return [self.experts, self.gates]

    def task_modules(self) -> dict[str, nn.Module]:
        return {t: self.towers[t] for t in self.tasks}

    def forward(self, inputs: RecInputs) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        x = self.embed(inputs)
        experts = self.experts(x)
        zs = tuple(gate_mix(experts, self.gates[t](x)) for t in self.tasks)
        return zs, {t: self.towers[t](z) for t, z in zip(self.tasks, zs, strict=True)}


class OMoE(MMoE):
    __doc__ = (
        r"""One-gate Mixture-of-Experts (the MMoE paper's baseline):
    ``z = Σ_i softmax(W x)_i · e_i(x)``, ``ŷ_t = tower_t(z)``.
    Shared: embeddings, experts, the gate. Task: towers. Representation: ``z``.
"""
        + _DOC_COMMON
        + """        num_experts: number of experts.
        expert: hidden widths of each expert MLP."""
    )

    _single_gate = True

    def forward(self, inputs: RecInputs) -> tuple[Tensor, dict[str, Tensor]]:  # type: ignore[override]
        x = self.embed(inputs)
        z = gate_mix(self.experts(x), self.gates["all"](x))
        return z, {t: self.towers[t](z) for t in self.tasks}


class _Level(nn.Module):
    """One extraction layer of PLE: per-task experts and a gate per task over (own experts,
    shared experts); on every level but the last, the shared experts' gate over all experts."""

    def __init__(
        self,
        tasks: Sequence[str],
        in_features: int,
        shared_experts: int,
        task_experts: int,
        expert: Sequence[int],
        dropout: float,
        last: bool,
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.task_experts = nn.ModuleDict(
            {t: _Experts(in_features, task_experts, expert, dropout) for t in tasks}
        )
        self.shared_experts = _Experts(in_features, shared_experts, expert, dropout)
        self.task_gates = nn.ModuleDict(
            {t: nn.Linear(in_features, task_experts + shared_experts) for t in tasks}
        )
        total = task_experts * len(self.tasks) + shared_experts
        self.shared_gate = None if last else nn.Linear(in_features, total)
        self.out_features = expert[-1]

    def forward(
        self, task_inputs: Sequence[Tensor], shared_input: Tensor
    ) -> tuple[list[Tensor], Tensor | None]:
        shared = self.shared_experts(shared_input)
        own = [self.task_experts[t](h) for t, h in zip(self.tasks, task_inputs, strict=True)]
        outs = [
            gate_mix(torch.cat([e, shared], dim=1), self.task_gates[t](h))
            for t, e, h in zip(self.tasks, own, task_inputs, strict=True)
        ]
        if self.shared_gate is None:
            return outs, None
        every = torch.cat([*own, shared], dim=1)
        return outs, gate_mix(every, self.shared_gate(shared_input))


class PLE(MultiTaskRecModel):
    __doc__ = (
        r"""Progressive Layered Extraction (Tang et al., RecSys 2020), ``num_levels`` extraction
    layers of Customized Gate Control: level ``l`` has ``task_experts`` experts per task and
    ``shared_experts`` shared ones; task t's gate mixes its own and the shared experts, and
    (below the top level) a shared gate mixes all experts for the next level's shared input.
    ``ŷ_t = tower_t(h_t^{(L)})``.
    Shared: embeddings, every expert (task-specific ones included) and gate, as in LibMTL.
    Task: towers. Representation: the tuple ``(h_t^{(L)} for t in tasks)``.
"""
        + _DOC_COMMON
        + """        num_levels: extraction layers (1 is CGC).
        shared_experts, task_experts: experts per level, shared and per task.
        expert: hidden widths of each expert MLP."""
    )

    def __init__(
        self,
        features: EmbeddingConfig,
        tasks: Mapping[str, str] | Sequence[str],
        *,
        dense_dim: int = 0,
        num_levels: int = 2,
        shared_experts: int = 1,
        task_experts: int = 1,
        expert: Sequence[int] = (64,),
        tower: Sequence[int] = (32,),
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
        check_count("num_levels", num_levels)
        check_count("shared_experts", shared_experts)
        check_count("task_experts", task_experts)
        expert = check_layers("expert", expert)
        levels = []
        width = self.input_dim
        for level in range(num_levels):
            levels.append(
                _Level(
                    self.tasks,
                    width,
                    shared_experts,
                    task_experts,
                    expert,
                    self.dropout,
                    last=level == num_levels - 1,
                )
            )
            width = levels[-1].out_features
        self.levels = nn.ModuleList(levels)
        tower = check_layers("tower", tower, allow_empty=True)
        self.towers = nn.ModuleDict(
            {t: Tower(width, tower, self.dropout, self.outputs[t]) for t in self.tasks}
        )

    def dense_shared_modules(self) -> list[nn.Module]:
        return [self.levels]

    def task_modules(self) -> dict[str, nn.Module]:
        return {t: self.towers[t] for t in self.tasks}

    def forward(self, inputs: RecInputs) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        x = self.embed(inputs)
        hs: list[Tensor] = [x] * len(self.tasks)
        shared: Tensor | None = x
        for level in self.levels:
            assert shared is not None
            hs, shared = level(hs, shared)
        zs = tuple(hs)
        return zs, {t: self.towers[t](z) for t, z in zip(self.tasks, zs, strict=True)}


class CGC(PLE):
    __doc__ = (
        r"""Customized Gate Control (Tang et al., RecSys 2020): PLE with one extraction layer —
    ``h_t = Σ softmax(W_t x) · [task t's experts, shared experts](x)``, ``ŷ_t = tower_t(h_t)``.
    Shared: embeddings, all experts and gates. Task: towers. Representation: ``(h_t)``.
"""
        + _DOC_COMMON
        + """        shared_experts, task_experts: number of shared and per-task experts.
        expert: hidden widths of each expert MLP."""
    )

    def __init__(
        self,
        features: EmbeddingConfig,
        tasks: Mapping[str, str] | Sequence[str],
        *,
        dense_dim: int = 0,
        shared_experts: int = 1,
        task_experts: int = 1,
        expert: Sequence[int] = (64,),
        tower: Sequence[int] = (32,),
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
            num_levels=1,
            shared_experts=shared_experts,
            task_experts=task_experts,
            expert=expert,
            tower=tower,
            dropout=dropout,
            backend=backend,
            init_std=init_std,
            check_ids=check_ids,
            num_classes=num_classes,
        )
