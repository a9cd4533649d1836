"""MetaBalance: move every task gradient's magnitude towards the largest one."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Aggregation, GradientAggregator


class MetaBalance(GradientAggregator):
    r"""MetaBalance, multi-task form (every task scaled towards the largest magnitude).

    With ``n_t`` an EMA of ‖g_t‖ (starting at 0, no bias correction, as the authors' code)::

        n_t ← β n_t + (1 − β) ‖g_t‖
        c_t = r · n_max / n_t + (1 − r),   n_max = max_s n_s              (c_t = 1 if n_t = 0)
        update = Σ_t c_t g_t

    ``r`` (the relax factor) interpolates between the plain sum (0) and gradients rescaled to
    the largest magnitude (1). The weights reported are ``c``.

    Deviation: MetaBalance is written for a target task (task 0) helped by auxiliary tasks,
    and rescales every auxiliary gradient towards the target's magnitude. Multi-task
    benchmarks (the DB-MTL paper's baselines) have no target task; LibMTL has no MetaBalance
    file, so this class scales towards the largest EMA norm (as DB-MTL's max-norm), which
    keeps it permutation-equivariant (the paper's "enlarge the smaller gradients" strategy
    relative to the largest task). The authors' code also works per parameter tensor; this
    class uses the norm of the whole shared gradient.

    Reference: Y. He, X. Feng, C. Cheng, G. Ji, Y. Guo, J. Caverlee, "MetaBalance: Improving
    Multi-Task Recommendations via Adapting Gradient Magnitudes of Auxiliary Tasks", WWW 2022.

    Args:
        relax_factor: r ∈ [0, 1] (paper: 0.7).
        beta: EMA rate β ∈ [0, 1) of the gradient norms (paper: 0.9).
    """

    name: ClassVar[str] = "metabalance"
    reference: ClassVar[str] = (
        "He et al., MetaBalance: Improving Multi-Task Recommendations via Adapting Gradient "
        "Magnitudes of Auxiliary Tasks, WWW 2022"
    )
    cost: ClassVar[str] = "O(T·P) norms; T EMA norms"

    def __init__(self, relax_factor: float = 0.7, beta: float = 0.9):
        super().__init__()
        if not 0.0 <= relax_factor <= 1.0:
            raise ValueError(f"relax_factor must be in [0, 1], got {relax_factor}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.relax_factor = float(relax_factor)
        self.beta = float(beta)
        self.norms: Tensor | None = None

    def forward(self, jacobian: Tensor, out: Tensor, *, losses: Tensor) -> Aggregation:
        num_tasks = jacobian.shape[0]
        dtype = torch.promote_types(jacobian.dtype, torch.float32)
        if self.norms is None or self.norms.shape[0] != num_tasks:
            if self.norms is not None:
                raise ValueError(
                    f"the number of tasks changed from {self.norms.shape[0]} to {num_tasks} "
                    f"mid-run; call balancer.reset() to start over"
                )
            self.norms = torch.zeros(num_tasks, device=jacobian.device, dtype=dtype)
        elif self.norms.device != jacobian.device:
            self.norms = self.norms.to(jacobian.device)
        norms = self.norms
        current = torch.linalg.vector_norm(jacobian, dim=1, dtype=norms.dtype)
        norms.mul_(self.beta).add_(current, alpha=1.0 - self.beta)
        largest = norms.max()
        tiny = torch.finfo(norms.dtype).tiny
        r = self.relax_factor
        coef = torch.where(
            norms > 0, r * (largest / norms.clamp_min(tiny)) + (1.0 - r), torch.ones_like(norms)
        )
        weights = coef.to(jacobian.dtype)
        torch.mv(jacobian.T, weights, out=out)
        return Aggregation(weights=weights)

    def reset(self) -> None:
        self.norms = None

    def get_extra_state(self) -> Any:
        return {"norms": None if self.norms is None else self.norms.clone()}

    def set_extra_state(self, state: Any) -> None:
        norms = state["norms"]
        self.norms = None if norms is None else norms.clone()

    def extra_repr(self) -> str:
        return f"relax_factor={self.relax_factor:g}, beta={self.beta:g}"
