"""Where data sets live, the error a missing one raises, and small option checks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_ENV",
    "DatasetNotFoundError",
    "data_root",
    "options",
    "positive_int",
]

#: The environment variable naming the folder that holds every data set (one sub-folder each).
DATA_ENV = "MTLVISION_DATA"
_DEFAULT_BASE = "~/.cache/mtlvision"


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where the loader looked. The message says where the files go,
    in what layout, and how to obtain them."""


def data_root(name: str, given: str | os.PathLike[str] | None) -> Path:
    """The folder of data set ``name``: ``given`` when set, else ``$MTLVISION_DATA/<name>``,
    else ``~/.cache/mtlvision/<name>``. Relative paths are taken from the working directory."""
    if given not in (None, ""):
        return Path(str(given)).expanduser()
    base = os.environ.get(DATA_ENV) or _DEFAULT_BASE
    return Path(base).expanduser() / name


def where_hint(name: str, given: str | os.PathLike[str] | None) -> str:
    """How the root was chosen, for error messages."""
    if given not in (None, ""):
        return "the [data] root option"
    if os.environ.get(DATA_ENV):
        return f"${DATA_ENV}/{name}"
    return f"the default {_DEFAULT_BASE}/{name} (set ${DATA_ENV} or [data] root to change it)"


def options(given: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``defaults`` updated with ``given``; an unknown key is an error naming the known ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown [{what}] options {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def positive_int(value: Any, what: str, *, allow_zero: bool = False) -> int:
    """``value`` as an int that is positive (or zero when allowed); else a ValueError."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{what} must be {kind} integer, not {value!r}")
    return value


def optional_int(value: Any, what: str) -> int | None:
    """None / 0 / "" -> None; else a positive int."""
    if value in (None, 0, ""):
        return None
    return positive_int(value, what)
