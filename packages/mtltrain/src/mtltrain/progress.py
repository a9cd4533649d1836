"""Progress output of the trainer: tqdm bars and one line per epoch, on rank 0, only when
asked for or when stderr is a terminal; nothing per step otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["Progress", "rank", "write_line"]


def rank() -> int:
    """This process's rank in a torch.distributed job (0 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_rank())
    return 0


class Progress:
    """``enabled``: True / False, or None for "when stderr is a terminal"."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled

    def shown(self) -> bool:
        if rank() != 0:
            return False
        return sys.stderr.isatty() if self.enabled is None else self.enabled

    def bar(self, iterable: Iterable[Any], desc: str, initial: int = 0) -> Iterable[Any]:
        if not self.shown():
            return iterable
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            return iterable
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        return tqdm(
            iterable, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True
        )

    def line(self, text: str) -> None:
        if self.shown():
            write_line(text)


def write_line(text: str) -> None:
    """One line on stderr that does not break a running tqdm bar."""
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]

        tqdm.write(text, file=sys.stderr)
    except ImportError:
        print(text, file=sys.stderr)
