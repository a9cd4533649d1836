"""The registry of named methods: ``"ew"``, ``"dbmtl"``, and ``"TRANSFORM+AGGREGATOR"``
combinations such as ``"log+ew"`` or ``"maxnorm"`` (the paper's Table 6 ablation)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import aggregators as aggregators_pkg
from . import transforms as transforms_pkg
from ._params import ParamSource
from .aggregators import Aggregator, GramWeighting, LossWeighting, RepresentationWeighting
from .balancer import Balancer
from .transforms import LossTransform

TRANSFORMS: dict[str, type[LossTransform]] = {}
AGGREGATORS: dict[str, type[Aggregator]] = {}


def _discover() -> None:
    """Register every transform/aggregator class that sets ``name`` in its own body, from
    every module of :mod:`mtlbalance.transforms` and :mod:`mtlbalance.aggregators` (one file
    per method: adding a method is adding a file)."""
    for package in (transforms_pkg, aggregators_pkg):
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{module.name}")
    for base, table in ((LossTransform, TRANSFORMS), (Aggregator, AGGREGATORS)):
        stack: list[type] = [base]
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            name = cls.__dict__.get("name")
            if name and cls.__module__.startswith("mtlbalance."):
                if name in table and table[name] is not cls:
                    raise RuntimeError(f"two classes register {name!r}: {table[name]} and {cls}")
                table[name] = cls


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


def register_transform(name: str, factory: type[LossTransform]) -> None:
    """Register a user-defined transform (also usable as the method ``name`` with ``sum``)."""
    _check_new(name, TRANSFORMS)
    TRANSFORMS[name] = factory


def register_aggregator(name: str, factory: type[Aggregator]) -> None:
    """Register a user-defined aggregator (also usable as the method ``name``)."""
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


_discover()

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
for _mode, _name, _what in (
    ("probe", "dbmtl_probe", "factors from the rows of the last shared layer only"),
    ("representation", "dbmtl_rep", "factors from an EMA of the gradient norms at z"),
    ("periodic", "dbmtl_periodic", "exact every `period` steps, its factors reused between"),
):
    register_method(
        _name,
        "log",
        "maxnorm",
        reference="Lin et al., arXiv:2308.12029; approximation: issue 12, docs/mtlbalance.md",
        description=f"DB-MTL, approximate (mode={_mode!r}): {_what}; one weighted backward",
        defaults={"beta": 0.9, "sigma": 0.5, "eps": 1e-8, "mode": _mode},
    )


if "imtl_l" in TRANSFORMS and "imtl_g" in AGGREGATORS:
    register_method(
        "imtl",
        "imtl_l",
        "imtl_g",
        reference="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021 (hybrid IMTL)",
        description="IMTL-L learned loss scales with IMTL-G gradient weights",
    )


def available() -> list[str]:
    """Every method name: presets, bare aggregators (identity transform) and loss-level
    transforms (with the ``sum`` aggregator)."""
    names = set(METHODS) | set(AGGREGATORS) | (set(TRANSFORMS) - {"identity", "log"})
    return sorted(names - {"sum"})  # "sum" is EW


def needs(aggregator: type[Aggregator]) -> str:
    """What an aggregator reads: losses, the Gram matrix, the full per-task gradients, or the
    per-task gradients at the shared representation."""
    if issubclass(aggregator, LossWeighting):
        return "losses"
    if issubclass(aggregator, GramWeighting):
        return "Gram matrix (T×T)"
    if issubclass(aggregator, RepresentationWeighting):
        return "representation gradients (T×R)"
    return "per-task gradients (T×P)"


def _defaults(cls: type) -> dict[str, Any]:
    return {
        n: p.default
        for n, p in inspect.signature(cls).parameters.items()
        if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    }


def method_rows() -> list[dict[str, str]]:
    """One row per method, as in docs/methods.md."""
    rows = []
    for name in available():
        transform, aggregator, preset = parse(name)
        t_cls, a_cls = TRANSFORMS[transform], AGGREGATORS[aggregator]
        main: type[Aggregator] | type[LossTransform] = (
            a_cls if aggregator != "sum" or transform == "identity" else t_cls
        )
        named = [c for c in (t_cls, a_cls) if c.__dict__.get("name") not in ("identity", "sum")]
        defaults = {**_defaults(t_cls), **_defaults(a_cls), **preset}
        gradient_level = aggregator != "sum" and not issubclass(a_cls, LossWeighting)
        rows.append(
            {
                "method": name,
                "class": ", ".join(
                    f"`{c.__module__.removeprefix('mtlbalance.')}.{c.__name__}`"
                    for c in dict.fromkeys(named or [main])
                ),
                "reference": (METHODS[name].reference if name in METHODS else main.reference),
                "defaults": ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "—",
                "needs": needs(a_cls),
                "cost": a_cls.cost if gradient_level else t_cls.cost,
                "log": "yes" if gradient_level and transform == "identity" else "—",
            }
        )
    return rows


def methods_table() -> str:
    """The Markdown table of docs/methods.md (a test keeps the file equal to it)."""
    cols = ["method", "class", "reference", "defaults", "needs", "cost", "log"]
    head = "| method | class | reference | defaults | needs | cost per step | `log+` |"
    lines = [head, "|" + "---|" * len(cols)]
    for row in method_rows():
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


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
    elif head in TRANSFORMS and head not in ("identity", "log"):
        transform, aggregator, defaults = head, "sum", {}
    else:
        raise ValueError(f"unknown method {head!r}; available: {', '.join(available())}")
    if len(parts) == 2:
        if parts[0] not in TRANSFORMS:
            raise ValueError(f"unknown transform {parts[0]!r}; available: {sorted(TRANSFORMS)}")
        if transform != "identity":
            raise ValueError(
                f"{head!r} already has the {transform!r} transform; {spec!r} would apply two"
            )
        if issubclass(AGGREGATORS[aggregator], LossWeighting) and aggregator != "sum":
            raise ValueError(
                f"{head!r} weights the losses themselves; the log combination is for "
                f"gradient-level methods"
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
    preset = {k: v for k, v in defaults.items() if k in balancer_args}  # e.g. a fast mode
    hyper = {
        **{k: v for k, v in defaults.items() if k not in balancer_args},
        **{k: v for k, v in kwargs.items() if k not in balancer_args},
    }
    unknown = [k for k in hyper if k not in t_args | a_args]
    if unknown:
        raise TypeError(
            f"{spec!r} does not take {unknown}; its hyperparameters are "
            f"{sorted((t_args | a_args) - {'self'})}, the balancer's options are "
            f"{sorted(balancer_args)}"
        )
    transform = t_factory(**{k: v for k, v in hyper.items() if k in t_args})
    aggregator = a_factory(**{k: v for k, v in hyper.items() if k in a_args})
    options = {**preset, **{k: v for k, v in kwargs.items() if k in balancer_args}}
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
