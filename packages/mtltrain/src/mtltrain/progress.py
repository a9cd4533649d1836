"""Progress output of the trainer: tqdm bars and one line per epoch, on rank 0, only when
asked for or when stderr is a terminal; nothing per step otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["Progress", "RunningLoss", "rank", "write_line"]


def rank() -> int:
    """This process's rank in a torch.distributed job (0 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


class Progress:
    """``enabled``: True / False, or None for "when stderr is a terminal". ``label`` goes in
    front of every bar (e.g. "run 3 of 12, dbmtl seed 1")."""

    def __init__(self, enabled: bool | None, label: str | None = None) -> None:
        self.enabled = enabled
        self.label = label

    def shown(self) -> bool:
        if rank() != 0:
            return False
        return sys.stderr.isatty() if self.enabled is None else self.enabled

    def bar(
        self, iterable: Iterable[Any], desc: str, initial: int = 0, total: int | None = None
    ) -> Iterable[Any]:
        """``iterable`` with a bar (total from ``total`` or ``len(iterable)``: a bar with a
        total shows the ETA)."""
        if not self.shown():
            return iterable
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            return iterable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        desc = f"{self.label}: {desc}" if self.label else desc
        return tqdm(
            iterable, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True
        )

    def line(self, text: str) -> None:
        if self.shown():
            write_line(text)


class RunningLoss:
    """Each task's mean training loss since the bar last showed it, summed on the device every
    step and read back (one host copy) only when the bar refreshes, every ``every`` steps."""

    def __init__(self, tasks: Iterable[str], every: int) -> None:
        self.tasks = tuple(tasks)
        self.every = every
        self._sum: Tensor | None = None
        self._n = 0

    def add(self, losses: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            step = torch.stack([losses[t].detach().float() for t in self.tasks])
            self._sum = step if self._sum is None else self._sum + step
        self._n += 1

    def due(self) -> bool:
        return self._n >= self.every

    def text(self) -> str:
        """``"loss a 0.312, b 41.2"`` (at most four tasks named; more: their sum), and reset."""
        if self._sum is None:
            return ""
        means = (self._sum / self._n).tolist()
        self._sum, self._n = None, 0
        if len(self.tasks) > 4:
            return f"loss (sum of {len(self.tasks)} tasks) {sum(means):.4g}"
        return "loss " + ", ".join(f"{t} {v:.4g}" for t, v in zip(self.tasks, means, strict=True))


def write_line(text: str) -> None:
    """One line on stderr that does not break a running tqdm bar."""
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]

        tqdm.write(text, file=sys.stderr)
    except ImportError:
        print(text, file=sys.stderr)
