"""Per-step values on their device until ``log_every`` steps are buffered, then to the host in
one transfer: what lets the Tracker log every step without a host sync on the others."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from .spool import MetricRecord

__all__ = ["Entry", "StepBuffer", "check_step", "entries", "to_records"]


class Entry(NamedTuple):
    """Buffered values of one step: ``keys[i]`` has value ``payload[i]``."""

    step: int
    timestamp: int
    keys: tuple[str, ...]
    payload: Tensor | tuple[float, ...]  # a detached 1-D device tensor, or host floats


def check_step(step: object) -> int:
    if isinstance(step, bool | Tensor) or not isinstance(step, numbers.Integral):
        raise TypeError(
            f"step must be an int (the global step or epoch counter), not {type(step).__name__}"
            + (
                ": pass a Python int; reading a tensor would sync"
                if isinstance(step, Tensor)
                else ""
            )
        )
    return int(step)


def to_records(entries: list[Entry]) -> list[MetricRecord]:
    """Host values for buffered entries: all tensors on one device are concatenated and copied
    in ONE transfer (``torch.cat`` promotes mixed dtypes)."""
    by_device: dict[torch.device, list[int]] = {}
    for i, e in enumerate(entries):
        if isinstance(e.payload, Tensor):
            by_device.setdefault(e.payload.device, []).append(i)
    host: dict[int, list[float]] = {}
    for idx in by_device.values():
        payloads = [entries[i].payload for i in idx]
        flat = torch.cat(payloads).tolist()  # type: ignore[arg-type]
        pos = 0
        for i in idx:
            n = len(entries[i].keys)
            host[i] = flat[pos : pos + n]
            pos += n
    records: list[MetricRecord] = []
    for i, e in enumerate(entries):
        values = host.get(i, e.payload)
        assert not isinstance(values, Tensor)
        records.extend(
            MetricRecord(k, float(v), e.step, e.timestamp)
            for k, v in zip(e.keys, values, strict=True)
        )
    return records


def entries(
    values: Mapping[str, Tensor | float], step: int, ts: int, check_key: Callable[[str], str]
) -> list[Entry]:
    if not isinstance(values, Mapping):
        raise TypeError(f"metrics must be a mapping of name to value, not {type(values).__name__}")
    entries: list[Entry] = []
    float_keys: list[str] = []
    floats: list[float] = []
    on_device: dict[torch.device, tuple[list[str], list[Tensor]]] = {}
    for key, value in values.items():
        check_key(key)
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(
                    f"metric {key!r} is a tensor of shape {tuple(value.shape)}; log one "
                    "value per key (one key per task, or log_balance_stats for BalanceStats)"
                )
            if value.is_complex():
                raise TypeError(f"metric {key!r} is a complex tensor; log a real value")
            group = on_device.setdefault(value.device, ([], []))
            group[0].append(key)
            group[1].append(value if value.dim() == 0 else value.reshape(()))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            float_keys.append(key)
            floats.append(float(value))
        else:
            raise TypeError(
                f"metric {key!r} must be a float, an int or a one-element tensor, not "
                f"{type(value).__name__}"
            )
    if on_device:
        # One small copy per device and step, detached from autograd (holds no graph);
        # stack promotes mixed dtypes. No host sync.
        with torch.no_grad():
            for keys, tensors in on_device.values():
                entries.append(Entry(step, ts, tuple(keys), torch.stack(tensors)))
    if floats:
        entries.append(Entry(step, ts, tuple(float_keys), tuple(floats)))
    return entries


class StepBuffer:
    """Entries of the steps not yet copied to the host. A new step arriving when
    ``log_every`` steps are buffered hands back everything buffered (to be written)."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self._entries: list[Entry] = []
        self._steps = 0
        self._last_step: int | None = None

    def add(self, new: list[Entry], step: int) -> list[Entry]:
        """Buffer ``new`` (of ``step``); returns the entries to write now (maybe none)."""
        due: list[Entry] = []
        if step != self._last_step:
            if self._steps >= self.log_every:
                due = self.drain()
            self._steps += 1
            self._last_step = step
        self._entries.extend(new)
        return due

    def drain(self) -> list[Entry]:
        """Everything buffered, emptying the buffer."""
        out, self._entries = self._entries, []
        self._steps, self._last_step = 0, None
        return out
