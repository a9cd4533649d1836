"""The registry of named methods: ``"ew"``, ``"dbmtl"``, and ``"TRANSFORM+AGGREGATOR"``
combinations such as ``"log+ew"`` or ``"maxnorm"`` (the paper's Table 6 ablation)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .aggregators import Aggregator, MaxNorm, Sum
from .transforms import Identity, Log, LossTransform

if TYPE_CHECKING:
    from ._params import ParamSource
    from .balancer import Balancer

TRANSFORMS: dict[str, Callable[..., LossTransform]] = {"identity": Identity, "log": Log}
AGGREGATORS: dict[str, Callable[..., Aggregator]] = {"sum": Sum, "maxnorm": MaxNorm}


@dataclass(frozen=True)
class MethodSpec:
    """A named preset: a transform, an aggregator, and their default hyperparameters."""

    name: str
    transform: str
    aggregator: str
    reference: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def register_transform(name: str, factory: Callable[..., LossTransform]) -> None:
    _check_new(name, TRANSFORMS)
    TRANSFORMS[name] = factory


def register_aggregator(name: str, factory: Callable[..., Aggregator]) -> None:
    _check_new(name, AGGREGATORS)
    AGGREGATORS[name] = factory


def register_method(
    name: str,
    transform: str,
    aggregator: str,
    *,
    reference: str,
    description: str,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    _check_new(name, METHODS)
    if transform not in TRANSFORMS:
        raise ValueError(f"method {name!r}: unknown transform {transform!r}")
    if aggregator not in AGGREGATORS:
        raise ValueError(f"method {name!r}: unknown aggregator {aggregator!r}")
    METHODS[name] = MethodSpec(
        name, transform, aggregator, reference, description, dict(defaults or {})
    )


def _check_new(name: str, table: Mapping[str, Any]) -> None:
    if "+" in name or not name:
        raise ValueError(f"invalid name {name!r}: names are non-empty and contain no '+'")
    if name in table:
        raise ValueError(f"{name!r} is already registered")


register_method(
    "ew",
    "identity",
    "sum",
    reference="Equal weighting; the baseline of every MTL paper",
    description="Sum of the task losses, one ordinary backward",
)
register_method(
    "dbmtl",
    "log",
    "maxnorm",
    reference="Lin et al., Dual-Balancing for Multi-Task Learning, arXiv:2308.12029",
    description="log(ℓ_t + ε) losses; EMA task gradients normalised to the largest norm",
    defaults={"beta": 0.9, "sigma": 0.5, "eps": 1e-8},
)


def available() -> list[str]:
    """Every preset name, plus the bare aggregator names (identity transform)."""
    return sorted(set(METHODS) | set(AGGREGATORS))


def parse(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"dbmtl"`` -> ("log", "maxnorm", defaults); ``"log+pcgrad"`` -> ("log", "pcgrad", …)."""
    parts = [p.strip().lower() for p in spec.split("+")]
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"invalid method {spec!r}; use NAME or TRANSFORM+NAME, e.g. 'log+ew'")
    head = parts[-1]
    if head in METHODS:
        m = METHODS[head]
        transform, aggregator, defaults = m.transform, m.aggregator, dict(m.defaults)
    elif head in AGGREGATORS:
        transform, aggregator, defaults = "identity", head, {}
    else:
        raise ValueError(f"unknown method {head!r}; available: {', '.join(available())}")
    if len(parts) == 2:
        if parts[0] not in TRANSFORMS:
            raise ValueError(f"unknown transform {parts[0]!r}; available: {sorted(TRANSFORMS)}")
        if transform != "identity":
            raise ValueError(
                f"{head!r} already has the {transform!r} transform; {spec!r} would apply two"
            )
        transform = parts[0]
    return transform, aggregator, defaults


def _accepted(factory: Callable[..., Any]) -> set[str]:
    return {
        n
        for n, p in inspect.signature(factory).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def make(
    spec: str,
    shared: ParamSource,
    task_params: Mapping[str, ParamSource] | None = None,
    **kwargs: Any,
) -> Balancer:
    """A :class:`~mtlbalance.Balancer` for a named method.

    Keyword arguments go to the Balancer (``engine``, ``tasks``, ``max_update_norm``, …) or to
    the method's transform/aggregator (``beta``, ``sigma``, ``eps``, …; a name both accept,
    like ``eps``, goes to both). An argument nobody accepts is an error.
    """
    from .balancer import Balancer

    transform_name, aggregator_name, defaults = parse(spec)
    t_factory, a_factory = TRANSFORMS[transform_name], AGGREGATORS[aggregator_name]
    t_args, a_args = _accepted(t_factory), _accepted(a_factory)
    balancer_args = _accepted(Balancer) - {
        "self",
        "shared",
        "task_params",
        "transform",
        "aggregator",
    }
    hyper = {**defaults, **{k: v for k, v in kwargs.items() if k not in balancer_args}}
    unknown = [k for k in hyper if k not in t_args | a_args]
    if unknown:
        raise TypeError(
            f"{spec!r} does not take {unknown}; its hyperparameters are "
            f"{sorted((t_args | a_args) - {'self'})}, the balancer's options are "
            f"{sorted(balancer_args)}"
        )
    transform = t_factory(**{k: v for k, v in hyper.items() if k in t_args})
    aggregator = a_factory(**{k: v for k, v in hyper.items() if k in a_args})
    options = {k: v for k, v in kwargs.items() if k in balancer_args}
    return Balancer(shared, task_params, transform=transform, aggregator=aggregator, **options)


def resolve_transform(value: str | LossTransform) -> LossTransform:
    if isinstance(value, LossTransform):
        return value
    if value not in TRANSFORMS:
        raise ValueError(f"unknown transform {value!r}; available: {sorted(TRANSFORMS)}")
    return TRANSFORMS[value]()


def resolve_aggregator(value: str | Aggregator) -> Aggregator:
    if isinstance(value, Aggregator):
        return value
    if value not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {value!r}; available: {sorted(AGGREGATORS)}")
    return AGGREGATORS[value]()
