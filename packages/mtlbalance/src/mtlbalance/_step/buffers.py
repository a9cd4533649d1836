"""What lasts between the steps of one balancer: the gradient engine (with its fallback) and
its (T, P) buffer, the two flat buffers of the shared update."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .._params import FlatLayout
from ..engines import (
    AutoEngine,
    BatchingUnsupported,
    Engine,
    EngineInputs,
    EngineResult,
    LoopEngine,
)


class EngineSlot:
    """The balancer's gradient engine, its fallback to the loop engine when a layer cannot
    be vmapped, and the (T, P) buffer the rows are written into."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.fallback_from: str | None = None
        self._rows: Tensor | None = None

    @property
    def label(self) -> str:
        """The engine that computed the last step ("auto" for the auto engine's trials)."""
        return self.engine.current if isinstance(self.engine, AutoEngine) else self.engine.name

    @property
    def buffer(self) -> Tensor | None:
        """The (T, P) buffer of the last step's rows (None before the first)."""
        return self._rows

    def rows(self, num_tasks: int, layout: FlatLayout) -> Tensor:
        """The preallocated (T, P) buffer (reused from step to step)."""
        shape = (num_tasks, layout.total)
        if self._rows is None or self._rows.shape != shape:
            self._rows = torch.empty(shape, device=layout.device, dtype=layout.dtype)
        return self._rows

    def compute(self, inputs: EngineInputs, out: Tensor, retain_graph: bool) -> EngineResult:
        if self.engine.needs_representation and inputs.representation is None:
            raise ValueError(
                "the representation engine needs the shared representation: call "
                "balancer.backward(losses, representation=z)"
            )
        try:
            return self.engine.compute(inputs, out, retain_graph)
        except BatchingUnsupported as err:
            warnings.warn(
                f"mtlbalance: the {self.engine.name} engine cannot vmap {err.op}; falling back "
                f"to the loop engine for the rest of the run (for an RNN, "
                f"mtlbalance.without_cudnn_rnn(model) makes it batchable)",
                stacklevel=6,
            )
            self.fallback_from = self.engine.name
            self.engine = LoopEngine()
            return self.engine.compute(inputs, out, retain_graph)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.engine.name, "state": self.engine.state()}
        if self.fallback_from is not None:
            state["fallback_from"] = self.fallback_from
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        if "fallback_from" in state:
            self.fallback_from = state["fallback_from"]
            self.engine = LoopEngine()
        elif state.get("name") == self.engine.name:
            self.engine.load_state(state.get("state", {}))


class UpdateBuffers:
    """Two flat (P,) buffers for the shared update, and their per-parameter views."""

    def __init__(self, layout: FlatLayout):
        self.layout = layout
        self._bufs: list[Tensor] = []
        self._views: list[list[Tensor]] = []

    def free(self) -> tuple[int, Tensor]:
        """The buffer no shared ``.grad`` is a view of (allocated on first use)."""
        layout = self.layout
        if not self._bufs:
            for _ in range(2):
                buf = torch.empty(layout.total, device=layout.device, dtype=layout.dtype)
                self._bufs.append(buf)
                self._views.append(layout.views(buf))
        for index, views in enumerate(self._views):
            if not any(
                p.grad is not None and p.grad.data_ptr() == v.data_ptr()
                for p, v in zip(layout.params, views, strict=True)
            ):
                return index, self._bufs[index]
        raise AssertionError("unreachable: the two update buffers cannot both be in use")

    def buffer(self, index: int) -> Tensor:
        return self._bufs[index]

    def assign(self, index: int) -> None:
        """Buffer ``index`` into the shared ``.grad``: as views where ``.grad`` is None, added
        (one multi-tensor kernel) where it is not."""
        add_to, add_from = [], []
        for p, v in zip(self.layout.params, self._views[index], strict=True):
            if p.grad is None:
                p.grad = v
            else:
                add_to.append(p.grad)
                add_from.append(v)
        if add_to:
            torch._foreach_add_(add_to, add_from)
