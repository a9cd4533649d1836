"""Writing TOML values (the standard library reads TOML but does not write it)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["toml_key", "toml_str", "toml_value"]

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_str(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped
    (TOML forbids U+0000-U+001F but tab, and U+007F, unescaped)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(name: str) -> str:
    """``name`` as a TOML key: bare (``A-Za-z0-9_-``) when it can be, else quoted."""
    if name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        return name
    return toml_str(name)


def toml_value(value: Any) -> str:
    """A TOML value: string, bool, int, finite float, list or inline table of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no place here for {value!r}")
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")
