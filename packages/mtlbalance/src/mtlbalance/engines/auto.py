"""The auto engine: measures the exact engines on the first steps and keeps the fastest."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .base import BatchingUnsupported, Engine, EngineInputs, EngineResult
from .batched import BatchedEngine
from .loop import LoopEngine
from .representation import RepresentationEngine

#: Order of preference when nothing is measured (deterministic mode) and the tie-break order.
PREFERENCE = ("representation", "batched", "loop")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


class AutoEngine(Engine):
    """Picks an exact engine by measuring, not guessing.

    On the first step every candidate computes the same step (the graph is kept between them):
    this warms them up (cuDNN autotuning, vmap set-up) and checks each candidate's matrix
    against the loop engine's, so a representation that some shared parameter bypasses is
    caught. Then each candidate runs ``trials`` whole steps, in turn; a step is timed from one
    ``backward`` call to the next, so forward, optimizer and memory effects count. The fastest
    by median step time is kept for the rest of the run and saved in ``state_dict`` so a
    resumed run does not switch. A candidate that fails (no vmap rule) or disagrees is
    dropped with a warning.

    With ``deterministic=True`` nothing is timed: the first candidate in the order
    representation (when a representation is given) > batched > loop that works is kept, so
    two runs of one configuration always use the same engine.
    """

    name: ClassVar[str] = "auto"

    def __init__(
        self,
        chunk_size: int | None = None,
        deterministic: bool = False,
        trials: int = 2,
        candidates: Sequence[str] = PREFERENCE,
        check_rtol: float = 1e-2,
    ):
        if trials < 1:
            raise ValueError(f"trials must be >= 1, got {trials}")
        unknown = set(candidates) - set(PREFERENCE)
        if unknown:
            raise ValueError(
                f"unknown candidate engines {sorted(unknown)}; choose from {PREFERENCE}"
            )
        self.engines: dict[str, Engine] = {
            "loop": LoopEngine(),
            "batched": BatchedEngine(chunk_size),
            "representation": RepresentationEngine(chunk_size),
        }
        self.deterministic = deterministic
        self.trials = trials
        self.candidates = [c for c in PREFERENCE if c in candidates]
        self.check_rtol = check_rtol
        self.chosen: str | None = None
        self.timings: dict[str, list[float]] = {}
        self.dropped: dict[str, str] = {}
        self._step = 0
        self._last = "auto"
        self._schedule: list[str] = []
        self._pending: str | None = None
        self._started = 0.0

    @property
    def current(self) -> str:
        """The engine that computed the last step ("auto" for a measured trial step)."""
        return self._last

    def compute(self, inputs: EngineInputs, out: Tensor, retain_graph: bool) -> EngineResult:
        if self.chosen is not None:
            self._last = self.chosen
            return self.engines[self.chosen].compute(inputs, out, retain_graph)
        candidates = [
            c
            for c in self.candidates
            if c not in self.dropped
            and (c != "representation" or inputs.representation is not None)
        ]
        if self.deterministic:
            return self._pick_first(candidates, inputs, out, retain_graph)
        return self._trial(candidates, inputs, out, retain_graph)

    def _pick_first(
        self, candidates: list[str], inputs: EngineInputs, out: Tensor, retain_graph: bool
    ) -> EngineResult:
        for name in candidates:
            try:
                result = self.engines[name].compute(inputs, out, retain_graph or name != "loop")
            except BatchingUnsupported as err:
                self._drop(name, f"no vmap batching rule for {err.op}")
                continue
            self.chosen = self._last = name
            return result
        raise RuntimeError("no engine could compute the per-task gradients")  # pragma: no cover

    def _trial(
        self, candidates: list[str], inputs: EngineInputs, out: Tensor, retain_graph: bool
    ) -> EngineResult:
        synchronize(out.device)
        now = time.perf_counter()
        if self._pending is not None:  # the whole previous step, forward and optimizer included
            self.timings.setdefault(self._pending, []).append(now - self._started)
            self._pending = None
        self._last = "auto"
        if self._step == 0:
            result = self._verify(candidates, inputs, out)
            valid = [c for c in candidates if c not in self.dropped]
            self._schedule = (
                [c for _ in range(self.trials) for c in valid] if len(valid) > 1 else []
            )
            self._step += 1
            if not self._schedule:
                self.chosen = valid[0] if valid else "loop"
            return result
        self._schedule = [c for c in self._schedule if c not in self.dropped]
        if not self._schedule:
            measured = [c for c in candidates if c in self.timings and c not in self.dropped]
            self.chosen = min(
                measured or ["loop"],
                key=lambda c: (statistics.median(self.timings.get(c, [0.0])), PREFERENCE.index(c)),
            )
            self._last = self.chosen
            return self.engines[self.chosen].compute(inputs, out, retain_graph)
        name = self._schedule.pop(0)
        self._pending, self._started = name, now
        self._step += 1
        return self.engines[name].compute(inputs, out, True)

    def _verify(self, candidates: list[str], inputs: EngineInputs, out: Tensor) -> EngineResult:
        """First step: every candidate computes the same step (the graph is kept); each matrix
        is checked against the loop engine's. Also warms every engine up (cuDNN autotuning,
        vmap set-up), so the timed steps that follow measure the steady state."""
        reference = self.engines["loop"].compute(inputs, out, True)
        for name in candidates:
            if name == "loop":
                continue
            buf = torch.empty_like(out)
            try:
                self.engines[name].compute(inputs, buf, True)
            except BatchingUnsupported as err:
                self._drop(name, f"no vmap batching rule for {err.op}")
                continue
            err_rel = _row_rel_error(buf, out)
            if err_rel > self.check_rtol:
                why = (
                    "some shared parameter reaches the losses without passing through the "
                    "representation passed to backward()"
                    if name == "representation"
                    else "its matrix differs from the loop engine's"
                )
                self._drop(name, f"{why} (largest row relative error {err_rel:.2e})")
        return reference

    def _drop(self, name: str, why: str) -> None:
        self.dropped[name] = why
        warnings.warn(f"mtlbalance auto engine: not using the {name} engine: {why}", stacklevel=5)

    def state(self) -> dict[str, object]:
        return {
            "chosen": self.chosen,
            "timings": {k: list(v) for k, v in self.timings.items()},
            "dropped": dict(self.dropped),
            "step": self._step,
            "schedule": list(self._schedule),
        }

    def load_state(self, state: dict[str, object]) -> None:
        chosen = state.get("chosen")
        self.chosen = None if chosen is None else str(chosen)
        self.timings = {k: list(v) for k, v in dict(state.get("timings", {})).items()}  # type: ignore[call-overload]
        self.dropped = dict(state.get("dropped", {}))  # type: ignore[call-overload]
        self._step = int(state.get("step", 0))  # type: ignore[call-overload]
        self._schedule = list(state.get("schedule", []))  # type: ignore[call-overload]
        self._pending = None  # a step interrupted by a checkpoint is not timed


def _row_rel_error(candidate: Tensor, reference: Tensor) -> float:
    diff = torch.linalg.vector_norm((candidate - reference).double(), dim=1)
    scale = torch.linalg.vector_norm(reference.double(), dim=1).clamp_min(1e-30)
    return float((diff / scale).max())
