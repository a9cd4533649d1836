"""Turn polars' parse errors into :class:`~mtlrec.data.errors.DataError` s that name the file,
the line, the data row and the column.

polars reports a malformed file without a position (``found more fields than defined in
'Schema'``, ``invalid utf-8 sequence``, ``unexpected end of file``) or with a slice of the file
itself (an unclosed quote: everything after it). When a read fails, :func:`reading` re-reads
the file with a small streaming checker (:func:`diagnose`) that finds the first malformed
record — the error path only; a file that parses costs nothing extra — and raises a
:class:`DataError` that shows no more of the file than a few bytes. The original exception
stays chained (``__cause__``).

The checker follows polars' CSV rules: a record ends at a newline outside quotes (every quote
character toggles), a field that starts with a quote ends at the next single quote and
``""`` inside it is a literal quote; a record with more fields than the header is an error,
one with fewer is not (polars fills nulls).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from .errors import ORIGIN_FILE, DataError

_BLOCK = 1 << 20
_MAX_RECORD = 1 << 20  # bytes of a multi-line record kept to count its fields


@dataclass(frozen=True)
class CsvFormat:
    """How a CSV-like file was scanned (what the checker must assume)."""

    separator: str = ","
    quote_char: str | None = '"'
    has_header: bool = True
    columns: tuple[str, ...] | None = None  # names given for a headerless file


@dataclass(frozen=True)
class ParquetFormat:
    """A Parquet file."""


FileFormat = CsvFormat | ParquetFormat

_FORMATS: dict[str, FileFormat] = {}


def remember(path: str, fmt: FileFormat) -> None:
    """Record how ``path`` was scanned, for diagnosing it later."""
    _FORMATS[path] = fmt


def format_of(path: str) -> FileFormat:
    """The format ``path`` was scanned with, else a guess from its name and first bytes."""
    if path in _FORMATS:
        return _FORMATS[path]
    name = path.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return ParquetFormat()
    try:
        with Path(path).open("rb") as fh:
            if fh.read(4) == b"PAR1":
                return ParquetFormat()
    except OSError:
        pass
    return CsvFormat(separator="\t" if name.endswith(".tsv") else ",")


def exact_line(path: str, row: int) -> int | None:
    """The physical line of data row ``row`` of ``path`` when it follows from the format
    (no quoting: one record per line), else None."""
    fmt = _FORMATS.get(path)
    if isinstance(fmt, CsvFormat) and fmt.quote_char is None:
        return row + (1 if fmt.has_header else 0)
    return None


# ---------------------------------------------------------------------------- frame paths
_SCAN = re.compile(r"^\s*\w+ SCAN \[(.*)\]\s*$")


def scan_paths(frame: pl.LazyFrame | pl.DataFrame) -> list[str]:
    """Files a lazy frame scans, read from its plan (best effort: ``[]`` when unknown)."""
    if isinstance(frame, pl.DataFrame):
        return []
    try:
        plan = frame.explain(optimized=False)
    except Exception:  # an unreadable plan only means "unknown"
        return []
    out: list[str] = []
    for text in plan.splitlines():
        m = _SCAN.match(text)
        if m:
            p = re.sub(r", \.\.\. \d+ other sources?$", "", m.group(1))
            if p not in out and Path(p).is_file():
                out.append(p)
    return out


def frame_paths(frame: pl.LazyFrame | pl.DataFrame, source: str | None) -> list[str]:
    """Files behind ``frame``: ``source`` if it is a file, else the scanned files in its
    plan, else the values of its origin column (for a collected frame)."""
    if source is not None and Path(source).is_file():
        return [source]
    paths = scan_paths(frame)
    if not paths and isinstance(frame, pl.DataFrame) and ORIGIN_FILE in frame.columns:
        paths = [str(p) for p in frame[ORIGIN_FILE].unique(maintain_order=True).head(8)]
    return paths


# ---------------------------------------------------------------------------- translation
_PASS_THROUGH = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@contextmanager
def reading(
    paths: Sequence[str] | pl.LazyFrame | pl.DataFrame, source: str | None = None
) -> Iterator[None]:
    """Run a read; a polars parse error (or a broken compressed stream) inside becomes a
    :class:`DataError` naming the file and, where it can be found, the line and column."""
    try:
        yield
    except DataError:
        raise
    except _PASS_THROUGH:
        raise
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as e:
        if isinstance(paths, pl.LazyFrame | pl.DataFrame):
            files = frame_paths(paths, source)
        else:
            files = list(paths)
        if not files:  # data not read from a file (or from one we cannot name): not ours
            raise
        raise translate(e, files) from e


def translate(exc: BaseException, paths: Sequence[str]) -> DataError:
    """The :class:`DataError` for a failed read of ``paths``: the first malformed record
    found in them, else a message naming the file(s) and the kind of failure."""
    for p in paths:
        found = diagnose(p)
        if found is not None:
            return found
    return DataError(
        f"could not be read ({type(exc).__name__}: {_sanitize(exc)}); mtlrec's check of the "
        "file found no malformed record to name",
        path=", ".join(paths),
        fix="Check that the file is complete and in the expected format",
    )


def _sanitize(exc: BaseException) -> str:
    """The first line of ``exc``'s message without quoted file content (polars puts fields
    it could not parse between backticks), at most 120 characters."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = re.sub(r"`[^`]*`?", "`…`", text)
    return text[:120] + ("…" if len(text) > 120 else "")


# ------------------------------------------------------------------------------- checkers
def diagnose(path: str) -> DataError | None:
    """The first problem in the file at ``path`` that polars would fail on, or None."""
    fmt = format_of(path)
    try:
        if isinstance(fmt, ParquetFormat):
            return _diagnose_parquet(path)
        return _CsvChecker(path, fmt).run()
    except (OSError, ValueError):  # unreadable, or a format the checker does not handle
        return None


def _diagnose_parquet(path: str) -> DataError | None:
    size = Path(path).stat().st_size
    with Path(path).open("rb") as fh:
        head = fh.read(4)
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if size == 0:
        return DataError(
            "the file is empty (0 bytes), not a Parquet file", path=path, fix="Re-write it"
        )
    if head != b"PAR1":
        return DataError(
            "not a Parquet file (it does not start with the magic bytes 'PAR1')",
            path=path,
            fix="Check the path, or read the file with the reader for its format",
        )
    if tail != b"PAR1" or size < 12:
        return DataError(
            f"the Parquet file is incomplete ({size} bytes, no 'PAR1' footer at the end: "
            "truncated, e.g. by an interrupted copy or write)",
            path=path,
            fix="Copy or write the file again",
        )
    return DataError(
        "the Parquet file is corrupted (its footer is present but its data or metadata "
        "could not be decoded); no row can be named",
        path=path,
        fix="Copy or write the file again",
    )


class _Truncated(Exception):
    """The compressed stream ends early or is damaged."""


def _chunks(path: str) -> Iterator[bytes]:
    """The file's bytes, gzip-decompressed when it starts with gzip's magic bytes.

    Decompresses with :mod:`zlib` step by step, so that everything before a truncation or a
    damaged spot is still returned; then raises :class:`_Truncated`.
    """
    with Path(path).open("rb") as fh:
        first = fh.read(_BLOCK)
        if first[:2] != b"\x1f\x8b":
            chunk = first
            while chunk:
                yield chunk
                chunk = fh.read(_BLOCK)
            return
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = first
        while True:
            try:
                out = d.decompress(data)
            except zlib.error as e:
                raise _Truncated(f"the gzip data is damaged ({e})") from e
            if out:
                yield out
            if d.eof:
                rest = d.unused_data
                if rest.strip(b"\0"):  # another gzip member follows
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    data = rest
                    continue
                return
            data = fh.read(_BLOCK)
            if not data:
                raise _Truncated("the gzip stream ends before its end marker")


def _blocks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Blocks of whole lines (each ends with a newline, except perhaps the last)."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            rest = data
            continue
        yield data[: cut + 1]
        rest = data[cut + 1 :]
    if rest:
        yield rest


class _CsvChecker:
    """Streams a CSV-like file and returns the first record polars would fail on."""

    def __init__(self, path: str, fmt: CsvFormat) -> None:
        if len(fmt.separator) != 1:
            raise ValueError(f"separator must be one character, not {fmt.separator!r}")
        self.path = path
        self.fmt = fmt
        self.sep = ord(fmt.separator)
        self.sep_bytes = fmt.separator.encode()
        self.quote = ord(fmt.quote_char) if fmt.quote_char else None
        self.names: list[str] | None = list(fmt.columns) if fmt.columns else None
        self.expected: int | None = len(fmt.columns) if fmt.columns else None
        self.header_pending = fmt.has_header
        self.line = 0  # physical lines read
        self.row = 0  # data rows read (records after the header)
        # a record that continues over lines (a newline inside quotes):
        self.open = False
        self.open_line = 0
        self.open_first = b""
        self.open_parts: list[bytes] | None = None
        self.open_size = 0

    # -- where ---------------------------------------------------------------------------
    def _col(self, index: int) -> str:
        if self.names is not None and index < len(self.names):
            return self.names[index]
        return f"field {index + 1}"

    def _where(self, line: int) -> dict[str, Any]:
        """Location of the record starting at ``line`` (the one being read)."""
        return {
            "path": self.path,
            "line": line,
            "row": None if self.header_pending else self.row + 1,
        }

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> DataError | None:
        try:
            for block in _blocks(_chunks(self.path)):
                found = self._block(block)
                if found is not None:
                    return found
        except _Truncated as e:
            return DataError(
                f"{e}: the file is truncated or damaged after line {self.line}",
                path=self.path,
                fix="Copy or download the file again (gzip -t checks a .gz file)",
            )
        if self.open:
            return self._unclosed()
        if self.line == 0:
            return DataError(
                "the file holds no lines", path=self.path, fix="It needs a header and data rows"
            )
        return None

    def _block(self, block: bytes) -> DataError | None:
        bad: tuple[int, int] | None = None
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as e:
            bad = (e.start, e.end)
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        pos = 0
        for raw in lines:
            end = pos + len(raw)
            if bad is not None and bad[0] <= end:
                return self._bad_utf8(raw, bad[0] - pos, bad[1] - pos)
            pos = end + 1
            found = self._line(raw[:-1] if raw.endswith(b"\r") else raw)
            if found is not None:
                return found
        return None

    def _bad_utf8(self, raw: bytes, start: int, end: int) -> DataError:
        here = self.line + 1
        column = None if self.open else self._col(_field_at(raw, start, self.sep, self.quote))
        shown = raw[start : min(end, start + 4)]
        return DataError(
            f"invalid UTF-8 at byte {start + 1} of line {here} (bytes {shown!r})",
            column=column,
            fix="Re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or fix these bytes",
            **self._where(self.open_line if self.open else here),
        )

    def _line(self, text: bytes) -> DataError | None:
        self.line += 1
        q = self.quote
        if self.open:  # inside quotes, continuing a record
            if self.open_parts is not None:
                self.open_parts.append(text)
                self.open_size += len(text)
                if self.open_size > _MAX_RECORD:
                    self.open_parts = None  # too long to keep: its fields are not counted
            if q is not None and text.count(q) % 2 == 1:
                parts, self.open_parts, self.open = self.open_parts, None, False
                return self._record(None if parts is None else b"\n".join(parts), self.open_line)
            return None
        if q is not None and q in text and text.count(q) % 2 == 1:
            self.open, self.open_line, self.open_first = True, self.line, text
            self.open_parts, self.open_size = [text], len(text)
            return None
        return self._record(text, self.line)

    def _record(self, record: bytes | None, line: int) -> DataError | None:
        if record is None:  # a very long multi-line record: its fields are not counted
            self._advance()
            return None
        q = self.quote
        fields: list[bytes] | None = None
        if q is None or q not in record:
            n = record.count(self.sep_bytes) + 1
        else:
            parsed = _split(record, self.sep, q)
            if isinstance(parsed, _Malformed):
                return self._malformed(parsed, line)
            fields, n = parsed, len(parsed)
        if self.header_pending:
            if fields is None:
                fields = record.split(self.sep_bytes)
            self.names = [f.decode("utf-8", "replace") for f in fields]
            self.expected = n
            self._advance()
            return None
        if self.expected is None:  # headerless, no names given: the first record decides
            self.expected = n
        if n > self.expected:
            if self.fmt.has_header:
                has = "the header has"
            elif self.fmt.columns:
                has = "the format has"
            else:
                has = "the first line has"
            return DataError(
                f"{n} fields where {has} {self.expected} (separator {self.fmt.separator!r})",
                column=self._col(self.expected),
                fix="Remove the extra field(s), or quote a value that contains "
                f"{self.fmt.separator!r}",
                **self._where(line),
            )
        self._advance()
        return None

    def _advance(self) -> None:
        if self.header_pending:
            self.header_pending = False
        else:
            self.row += 1

    def _malformed(self, m: _Malformed, line: int) -> DataError:
        what = {
            "after": "text follows the closing quote of a quoted field",
            "inside": "an unmatched quote inside an unquoted field",
            "unclosed": "a quoted field is never closed",
        }[m.kind]
        return DataError(
            f"{what} (quote character {self.fmt.quote_char!r})",
            column=self._col(m.field),
            fix='Quote the whole field and write a quote inside it as two (""), or remove the '
            "stray quote",
            **self._where(line),
        )

    def _unclosed(self) -> DataError:
        field = _unclosed_field(self.open_first, self.sep, self.quote)
        return DataError(
            f"a quote ({self.fmt.quote_char!r}) opened here is never closed, so everything "
            "after it would be one field",
            column=self._col(field),
            fix='Close the quote, or write a literal quote as two quotes ("")',
            **self._where(self.open_line),
        )


@dataclass(frozen=True)
class _Malformed:
    kind: str  # "after" | "inside" | "unclosed"
    field: int  # 0-based field index


def _split(record: bytes, sep: int, q: int) -> list[bytes] | _Malformed:
    """Fields of a record by polars' quoting rules, or where they break."""
    fields: list[bytes] = []
    i, n = 0, len(record)
    while True:
        k = len(fields)
        if i < n and record[i] == q:
            j = i + 1
            parts: list[bytes] = []
            while True:
                c = record.find(q, j)
                if c < 0:
                    return _Malformed("unclosed", k)
                parts.append(record[j:c])
                if c + 1 < n and record[c + 1] == q:
                    parts.append(bytes([q]))
                    j = c + 2
                    continue
                break
            fields.append(b"".join(parts))
            i = c + 1
            if i == n:
                return fields
            if record[i] == sep:
                i += 1
                continue
            return _Malformed("after", k)
        e = record.find(sep, i)
        value = record[i : e if e >= 0 else n]
        if value.count(q) % 2 == 1:
            return _Malformed("inside", k)
        fields.append(value)
        if e < 0:
            return fields
        i = e + 1


def _field_at(line: bytes, pos: int, sep: int, q: int | None) -> int:
    """0-based field index of byte ``pos`` of ``line`` (quotes respected)."""
    field, inq = 0, False
    for i in range(min(pos, len(line))):
        c = line[i]
        if q is not None and c == q:
            inq = not inq
        elif c == sep and not inq:
            field += 1
    return field


def _unclosed_field(first: bytes, sep: int, q: int | None) -> int:
    """Field of the quote that leaves the first line of a record inside quotes."""
    field, inq, opened = 0, False, 0
    for c in first:
        if q is not None and c == q:
            inq = not inq
            if inq:
                opened = field
        elif c == sep and not inq:
            field += 1
    return opened
