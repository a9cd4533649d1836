"""Data errors that say where: file, line / data row, column, value, and how to fix it.

Every problem ``mtlrec.data`` finds in input data is a :class:`DataError`. Its message is one
self-contained line; the same facts are attributes (``path``, ``row``, ``line``, ``column``,
``value``) for callers that format errors themselves.

Row numbers are counted in the *file*, not in a split or shuffled frame: the readers add two
origin columns (:data:`ORIGIN_FILE`, :data:`ORIGIN_ROW`) when they read, and every check reads
them back. Terms used in messages:

- **data row** ``r``: the ``r``-th record of the file, 1-based, the header not counted (a blank
  line is a record: polars reads it as a row of nulls).
- **line** ``l``: the 1-based physical line of the file, the header counted. Given when known
  exactly: always for errors in the file's structure, and for value errors in formats without
  quoting (where a record is one line).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ORIGIN_COLUMNS", "ORIGIN_FILE", "ORIGIN_ROW", "DataError", "show_value"]

ORIGIN_FILE = "__mtlrec_file"
"""Column the readers add: the file each row was read from (the path as given)."""
ORIGIN_ROW = "__mtlrec_row"
"""Column the readers add: the row's 1-based data row in its file (header not counted)."""
ORIGIN_COLUMNS = (ORIGIN_FILE, ORIGIN_ROW)

_VALUE_CHARS = 40


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def show_value(value: Any, limit: int = _VALUE_CHARS) -> str:
    """A value for a message: ``repr`` of at most ``limit`` characters (longer values are cut
    and their length given), ``a missing value (null)`` for ``None``."""
    if value is None:
        return "a missing value (null)"
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


class DataError(ValueError):
    """Bad input data, located.

    The message (``str(err)``) is one line: ``<where>: <problem>. <fix>``, where ``<where>`` is
    the file, the line and/or data row, and the column, as far as they are known. The message
    never holds more of the file than the offending value, cut to 40 characters.

    Attributes:
        path: the file, as given to the reader (``None`` for data not read from a file).
        row: 1-based data row in ``path`` (header not counted); the row of the frame when
            ``path`` is ``None``.
        line: 1-based physical line in ``path`` (header counted), when known exactly.
        column: the column (a name, or ``"field 4"`` where the file has no such column).
        value: the offending value as shown in the message (``None``: no value shown).
        problem: what is wrong (``{value}`` in it is replaced by the value; otherwise the
            value follows it); ``fix``: what to do about it.
        task: the task whose label it is, for label columns.
    """

    def __init__(
        self,
        problem: str,
        *,
        path: str | None = None,
        row: int | None = None,
        line: int | None = None,
        column: str | None = None,
        value: Any = _UNSET,
        fix: str | None = None,
        task: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = path
        self.row = row
        self.line = line
        self.column = column
        self.value = None if value is _UNSET else show_value(value)
        self.fix = fix
        self.task = task
        super().__init__(self._message())

    def _message(self) -> str:
        where: list[str] = []
        if self.line is not None and self.row is not None:
            where.append(f"line {self.line} (data row {self.row})")
        elif self.line is not None:
            where.append(f"line {self.line}")
        elif self.row is not None:
            where.append(
                f"data row {self.row} (1-based, header not counted)"
                if self.path is not None
                else f"row {self.row} of the frame (1-based)"
            )
        if self.column is not None:
            col = self.column if self.column.startswith("field ") else f"column {self.column!r}"
            where.append(col + (f" (task {self.task!r})" if self.task else ""))
        head = ", ".join(where)
        if self.path is not None:
            head = f"{self.path}: {head}" if head else self.path
        text = self.problem
        if "{value}" in text:
            text = text.replace("{value}", self.value if self.value is not None else "?")
        elif self.value is not None:
            text += f": {self.value}"
        out = f"{head}: {text}" if head else text
        if self.fix:
            out += f". {self.fix}"
        return " ".join(out.split("\n"))
