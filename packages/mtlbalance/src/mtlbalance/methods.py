"""Named balancers as classes, for the two-line change in a training loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._params import ParamSource
from .aggregators import MaxNorm, Sum
from .balancer import Balancer
from .transforms import Identity, Log


class DBMTL(Balancer):
    r"""DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning", Algorithm 1)::

        g_t = ∇θ log(ℓ_t + ε);  ĝ_t ← β_k ĝ_t + (1 − β_k) g_t,  β_k = β / k^σ
        shared update = max_t ‖ĝ_t‖ · Σ_t ĝ_t / (‖ĝ_t‖ + ε);  task t's own: ∇ψ_t log(ℓ_t + ε)

    Args:
        shared, task_params: as :class:`~mtlbalance.Balancer`.
        beta, sigma: the EMA schedule (the paper grid-searches β ∈ {0.1, 0.5, 0.9} and
            σ ∈ {0, 0.5} per benchmark; defaults β = 0.9, σ = 0.5).
        eps: ε of Algorithm 1 (log transform and normalisation).
        **options: the Balancer's options (``engine``, ``tasks``, ``max_update_norm``, …),
            among them ``mode`` (``"exact"``, the default; or the approximations ``"probe"``,
            ``"representation"``, ``"periodic"``: docs/mtlbalance.md, "Fast modes").
    """

    def __init__(
        self,
        shared: ParamSource,
        task_params: Mapping[str, ParamSource] | None = None,
        *,
        beta: float = 0.9,
        sigma: float = 0.5,
        eps: float = 1e-8,
        **options: Any,
    ):
        super().__init__(
            shared,
            task_params,
            transform=Log(eps),
            aggregator=MaxNorm(beta=beta, sigma=sigma, eps=eps),
            **options,
        )


class EW(Balancer):
    """Equal weighting: ``Σ_t ℓ_t``, one ordinary backward (the floor of every comparison)."""

    def __init__(
        self,
        shared: ParamSource,
        task_params: Mapping[str, ParamSource] | None = None,
        **options: Any,
    ):
        super().__init__(shared, task_params, transform=Identity(), aggregator=Sum(), **options)
