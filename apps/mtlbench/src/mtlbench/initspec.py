"""``mtlbench init-spec FILE``: draft a spec for a CSV/TSV/Parquet table, for the user to edit.

The draft (:func:`mtlrec.draft.draft_table_spec`) names the file, how to read it (separator,
header, null tokens, trimming: sniffed), every column's role (feature kinds guessed from the
values) and a guessed task, each guess marked ``GUESS`` in a comment. This module only wires
the command; it imports nothing heavy until the command runs (``mtlbench --help`` stays fast).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``init-spec`` under the ``mtlbench`` subcommands."""
    p = sub.add_parser(
        "init-spec",
        help="draft a spec for your own CSV/TSV/Parquet table (columns, kinds, a guessed task)",
        description="Draft a spec for a table: how to read it, the role of every column "
        "(dense, sparse, multi_hot, ignore, or a task) and a guessed task, each guess marked "
        "GUESS for you to check. Then: mtlbench run SPEC.toml --stl",
    )
    p.add_argument("file", help="the data file (.csv, .tsv, .txt, .data, gzipped or not, .parquet)")
    p.add_argument(
        "--out",
        default=None,
        help="where to write the spec (default: <name>.toml in the current directory; - for "
        "standard output)",
    )
    p.add_argument("--name", default=None, help="the spec's name (default: from the file name)")
    p.add_argument(
        "--separator", default=None, help="field separator (default: sniffed from the file)"
    )
    header = p.add_mutually_exclusive_group()
    header.add_argument(
        "--header",
        dest="header",
        action="store_true",
        default=None,
        help="the first line names the columns",
    )
    header.add_argument(
        "--no-header", dest="header", action="store_false", help="the first line holds data"
    )
    p.add_argument(
        "--rows",
        type=int,
        default=100_000,
        help="rows read to guess the column kinds (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing spec file")


def command(args: argparse.Namespace) -> int:
    """Run ``init-spec``: write the draft and say what to do next."""
    try:
        from mtlrec.draft import draft_table_spec
    except ImportError as e:
        raise ImportError(
            f"init-spec drafts specs for mtlrec's table problem, and mtlrec is not importable "
            f"({e}); install the mtlrec package"
        ) from e
    draft = draft_table_spec(
        args.file,
        separator=args.separator,
        header=args.header,
        max_rows=args.rows,
        name=args.name,
    )
    if args.out == "-":
        sys.stdout.write(draft.text)
        return 0
    out = Path(args.out) if args.out else Path(f"{draft.name}.toml")
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it, or --out another file")
    _write(out, draft.text)
    print(f"wrote {out}: {draft.summary()}")
    print(
        "Next: check every line marked GUESS and name your tasks (at least two), then\n"
        f"  mtlbench run {out} --stl"
    )
    return 0


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a spec is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
