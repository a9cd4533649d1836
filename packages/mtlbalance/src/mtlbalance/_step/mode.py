"""The balancer's mode: exact (Algorithm 1) or one of the named approximations of the engine
stage (``Balancer(mode=...)``), with the state a mode keeps between steps.

* ``"exact"``: the (T, P) rows of every shared parameter, every step.
* ``"probe"``: the rows of a small subset of the shared parameters (the *probe*) only; the
  aggregator's factors ``c_t`` from them; ONE backward of ``Σ_t c_t ℓ̃_t`` into every shared
  parameter.
* ``"representation"``: the rows ``∇_z ℓ̃_t`` at the shared representation (through the heads
  only); DB-MTL's factors from an EMA of their norms (a Gram weighting: from their Gram
  matrix); one backward of ``Σ_t c_t ℓ̃_t``.
* ``"periodic"``: an exact step every ``period`` steps; in between, its factors ``c_t`` reused
  in one backward of ``Σ_t c_t ℓ̃_t``.

The definitions, and where each departs from Algorithm 1: :mod:`._step.fast` and
docs/mtlbalance.md, "Fast modes (approximate)".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._params import FlatLayout, ParamSource, named_params
from ..aggregators.base import Aggregator, GramWeighting
from ..engines import Engine, make_engine
from .buffers import EngineSlot

MODES = ("exact", "probe", "representation", "periodic")
DEFAULT_PERIOD = 4
#: what ``mode="fast"`` means: the approximate mode chosen by the measurements of
#: benchmarks/results/fast/README.md (the balancer reports and saves the mode itself)
FAST = "probe"

ProbeSource = ParamSource | str | Sequence[str] | None


def _probe_by_name(layout: FlatLayout, names: Sequence[str]) -> list[int]:
    """Indices of the shared tensors named (as in the layout: ``shared.encoder.2.weight``,
    ``shared[3]``) or under a named module prefix (``shared.encoder.2``)."""
    picked: list[int] = []
    for wanted in names:
        hits = [
            i
            for i, n in enumerate(layout.names)
            if n == wanted or n.startswith(wanted + ".") or n.startswith(wanted + "[")
        ]
        if not hits:
            shown = ", ".join(layout.names[:8]) + (" …" if len(layout.names) > 8 else "")
            raise ValueError(
                f"probe={wanted!r} names no shared parameter; the shared parameters are "
                f"named {shown} (give a name or a module prefix of these, or the parameters)"
            )
        picked.extend(i for i in hits if i not in picked)
    return sorted(picked)


def _probe_indices(layout: FlatLayout, probe: ProbeSource) -> list[int] | None:
    """The shared tensors in the probe (None: chosen on the first step, see
    :func:`default_probe`)."""
    if probe is None:
        return None
    if isinstance(probe, str):
        return _probe_by_name(layout, [probe])
    if isinstance(probe, Sequence) and probe and all(isinstance(p, str) for p in probe):
        return _probe_by_name(layout, list(probe))
    where = {id(p): i for i, p in enumerate(layout.params)}
    picked = []
    for name, p in named_params(probe, "probe"):  # type: ignore[arg-type]
        if id(p) not in where:
            raise ValueError(
                f"{name} is not among the shared parameters; the probe is a subset of "
                f"`shared` (e.g. its last layer)"
            )
        picked.append(where[id(p)])
    if not picked:
        raise ValueError("probe= holds no parameter that requires grad")
    return sorted(set(picked))


def default_probe(layout: FlatLayout, reached: Tensor) -> list[int]:
    """The default probe, from the first step's exact rows: the shortest tail of the shared
    tensors (in the order given), starting at a tensor of 2 or more dimensions (a weight),
    that every task's gradient reaches (a nonzero block). ``reached`` is (T, n_tensors) bool.
    All shared tensors when no shorter tail qualifies."""
    n = len(layout.params)
    ok = reached.cpu()
    for start in range(n - 1, -1, -1):
        if layout.params[start].dim() >= 2 and bool(ok[:, start:].any(dim=1).all()):
            return list(range(start, n))
    return list(range(n))


class FastMode:
    """What one balancer's mode needs between steps: the probe (its layout, its columns in
    the (T, P) rows, its own engine and buffer), the periodic phase and the reused factors."""

    def __init__(
        self,
        name: str,
        layout: FlatLayout,
        aggregator: Aggregator,
        probe: ProbeSource = None,
        period: int | None = None,
        engine: str | Engine = "auto",
        chunk_size: int | None = None,
        deterministic: bool = False,
    ):
        name = FAST if name == "fast" else name
        if name not in MODES:
            raise ValueError(
                f"unknown mode {name!r}; choose one of {list(MODES)} or 'fast' (= {FAST!r})"
            )
        if probe is not None and name != "probe":
            raise ValueError(f"probe= is read by mode='probe' only (this balancer has {name!r})")
        if period is not None and name != "periodic":
            raise ValueError(
                f"period= is read by mode='periodic' only (this balancer has {name!r})"
            )
        method = aggregator.name or type(aggregator).__name__
        if name != "exact" and aggregator.requires != "jacobian":
            raise ValueError(
                f"mode={name!r} approximates a gradient-level method; {method!r} reads "
                f"{aggregator.requires} and already costs one backward: use mode='exact'"
            )
        if name == "representation" and not (
            hasattr(aggregator, "weigh_norms") or isinstance(aggregator, GramWeighting)
        ):
            raise ValueError(
                f"mode='representation' is defined for DB-MTL's max-norm (an EMA of the norms "
                f"at z) and for Gram weightings (their weights of the Gram matrix at z); "
                f"{method!r} is neither: use mode='probe' or 'periodic'"
            )
        if period is not None and (
            isinstance(period, bool) or not isinstance(period, int) or period < 1
        ):
            raise ValueError(
                f"period must be an integer >= 1 (steps per exact step), got {period!r}"
            )
        self.name = name
        self.layout = layout
        self.period = DEFAULT_PERIOD if period is None else period
        self.count = 0  # steps taken (not skipped) in this mode
        self.factors: Tensor | None = None  # periodic: c_t of the last exact step
        self.task_weights: Tensor | None = None
        self._engine_args = (
            engine if isinstance(engine, str) else "loop",
            chunk_size,
            deterministic,
        )
        self.probe: list[int] | None = None
        self.probe_given = name == "probe" and probe is not None
        if self.probe_given:
            self.set_probe(_probe_indices(layout, probe) or [])

    @property
    def approximate(self) -> bool:
        return self.name != "exact"

    # ------------------------------------------------------------------ probe
    def set_probe(self, indices: list[int]) -> None:
        layout = self.layout
        self.probe = indices
        self.probe_layout = FlatLayout([(layout.names[i], layout.params[i]) for i in indices])
        self.probe_engine = EngineSlot(make_engine(*self._engine_args))
        columns = [torch.arange(layout.offsets[i], layout.offsets[i + 1]) for i in indices]
        self.probe_columns = torch.cat(columns).to(layout.device)
        self.scratch = torch.empty(
            self.probe_layout.total, device=layout.device, dtype=layout.dtype
        )

    @property
    def probe_names(self) -> list[str] | None:
        return None if self.probe is None else [self.layout.names[i] for i in self.probe]

    # ------------------------------------------------------------------ periodic
    def refresh_due(self) -> bool:
        """Periodic mode: this step is an exact one (steps 0, K, 2K, … of the mode)."""
        return self.name == "periodic" and self.count % self.period == 0

    def remember(self, weights: Tensor | None, task_weights: Tensor | None, method: str) -> None:
        if weights is None:
            raise ValueError(
                f"mode='periodic' reuses the per-task weights of the exact step; the {method!r} "
                f"aggregator reports none (it does not combine the rows linearly): use "
                f"mode='exact'"
            )
        self.factors = weights.detach().clone()
        self.task_weights = None if task_weights is None else task_weights.detach().clone()

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "period": self.period,
            "count": self.count,
            "probe": self.probe_names,
            "factors": None if self.factors is None else self.factors.clone(),
            "task_weights": None if self.task_weights is None else self.task_weights.clone(),
        }

    def load_state(self, state: dict[str, Any] | None) -> None:
        saved = "exact" if state is None else state.get("name")
        if saved != self.name:
            raise ValueError(
                f"the saved state was made with mode={saved!r}, this balancer has "
                f"mode={self.name!r}; resume with the same mode (the aggregator's state "
                f"depends on it)"
            )
        if state is None:
            return
        self.period = int(state["period"])
        self.count = int(state["count"])
        if state.get("probe") is not None:
            names = list(state["probe"])
            if self.probe_given and names != self.probe_names:
                raise ValueError(
                    f"the saved state was made with the probe {names}, this balancer has "
                    f"{self.probe_names}"
                )
            self.set_probe(_probe_by_name(self.layout, names))
        self.factors = None if state["factors"] is None else state["factors"].clone()
        tw = state["task_weights"]
        self.task_weights = None if tw is None else tw.clone()

    def reset(self) -> None:
        self.count = 0
        self.factors = self.task_weights = None
        if not self.probe_given:
            self.probe = None
