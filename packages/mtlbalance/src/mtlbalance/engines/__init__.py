"""Gradient engines for the ``(T, P)`` matrix of per-task shared gradients (all exact)."""

from __future__ import annotations

from .auto import AutoEngine
from .base import BatchingUnsupported, Engine, EngineInputs, EngineResult
from .batched import BatchedEngine
from .loop import LoopEngine
from .representation import RepresentationEngine

ENGINES: dict[str, type[Engine]] = {
    "loop": LoopEngine,
    "batched": BatchedEngine,
    "representation": RepresentationEngine,
    "auto": AutoEngine,
}


def make_engine(
    name: str | Engine, chunk_size: int | None = None, deterministic: bool = False
) -> Engine:
    """An engine by name (``"auto"``, ``"loop"``, ``"batched"``, ``"representation"``)."""
    if isinstance(name, Engine):
        return name
    if name == "loop":
        return LoopEngine()
    if name == "batched":
        return BatchedEngine(chunk_size)
    if name == "representation":
        return RepresentationEngine(chunk_size)
    if name == "auto":
        return AutoEngine(chunk_size, deterministic=deterministic)
    raise ValueError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")


__all__ = [
    "ENGINES",
    "AutoEngine",
    "BatchedEngine",
    "BatchingUnsupported",
    "Engine",
    "EngineInputs",
    "EngineResult",
    "LoopEngine",
    "RepresentationEngine",
    "make_engine",
]
