"""docs/tutorial-own-table.md cannot rot: its commands run here, as written, on a small file in
the tutorial's format (Census-Income: headerless, ", "-separated, "?" for missing values,
string labels), with its edits applied the way the text tells a reader to apply them.

The markdown marks what runs: fenced blocks ```bash tutorial (commands, run in order in one
folder), ```toml tutorial-edit (lines that replace the draft's lines of the same key) and
```toml tutorial-tasks (tables that replace the draft's [tasks.*] tables at its end).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "census_like", Path(__file__).with_name("census_like.py")
)
assert _spec is not None and _spec.loader is not None
census_like_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(census_like_module)
write_census_like = census_like_module.write_census_like

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial-own-table.md"
_BLOCK = re.compile(r"^```(\w+) (tutorial[\w-]*)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    """The bodies of the tutorial's ```<lang> <kind> blocks, in order."""
    return [body for _, k, body in _BLOCK.findall(TUTORIAL.read_text()) if k == kind]


def commands() -> list[str]:
    out = []
    for body in blocks("tutorial"):
        out += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    return out


def apply_edits(draft: str, edits: list[str], tasks: str) -> str:
    """What the tutorial asks of the reader: replace the draft's line of each key the edit
    blocks give (each key has one such line), and the [tasks.*] tables at the end."""
    lines = draft.splitlines()
    for block in edits:
        for new in block.splitlines():
            if " = " not in new:
                continue
            key = new.split(" = ", 1)[0]
            at = [i for i, line in enumerate(lines) if line.split(" = ", 1)[0] == key]
            assert len(at) == 1, f"the draft has {len(at)} lines for {key!r}"
            lines[at[0]] = new
    first = next(i for i, line in enumerate(lines) if line.startswith("[tasks."))
    return "\n".join([*lines[:first], *tasks.strip().splitlines()]) + "\n"


def test_the_tutorial_marks_its_steps() -> None:
    cmds = commands()
    assert [c.split()[:2] for c in cmds] == [
        ["mtlbench", "init-spec"],
        ["mtlbench", "run"],
        ["mtlbench", "report"],
    ]
    assert len(blocks("tutorial-edit")) == 2 and len(blocks("tutorial-tasks")) == 1
    tasks = tomllib.loads(blocks("tutorial-tasks")[0])["tasks"]
    columns = tomllib.loads(blocks("tutorial-edit")[0])
    named = {v["task"] for v in columns.values() if isinstance(v, dict) and "task" in v}
    assert named == set(tasks)  # every task has its metric table, and no more


def test_what_the_tutorial_shows_is_the_committed_output() -> None:
    """The draft excerpt and the table it shows are lines of the real run's files, committed
    under benchmarks/results/tables/census/ (so a changed draft or table is re-run, not
    retyped)."""
    text = TUTORIAL.read_text()
    results = ROOT / "benchmarks" / "results" / "tables" / "census"
    draft = (results / "census.draft.toml").read_text().splitlines()
    excerpt = blocks_of("toml", text)[0]
    shown = [line for line in excerpt.splitlines() if line.strip() not in ("", "...")]
    assert shown and all(line in draft for line in shown), set(shown) - set(draft)
    report = (results / "report.md").read_text().splitlines()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) >= 5 and all(line in report for line in table)
    spec = (results / "census.toml").read_text()
    edited = apply_edits(
        (results / "census.draft.toml").read_text(),
        blocks("tutorial-edit"),
        blocks("tutorial-tasks")[0],
    )
    assert spec == edited  # the committed spec is the draft with the tutorial's edits


def test_tutorial_commands_run_on_a_census_like_file(
    tmp_path: Path,
) -> None:
    pytest.importorskip("mlflow")  # the tutorial tracks in MLflow, as a user's run would
    write_census_like(tmp_path / "census-income.test.gz", 400)
    exe = Path(sys.executable).with_name("mtlbench")
    env = dict(os.environ)
    env["PATH"] = f"{exe.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MTLBENCH_SPECS", None)
    outputs = []
    for cmd in commands():
        if cmd.split()[1] == "run":  # the reader edits the draft before running it
            spec = tmp_path / shlex.split(cmd)[2]
            edited = apply_edits(
                spec.read_text(), blocks("tutorial-edit"), blocks("tutorial-tasks")[0]
            )
            spec.write_text(edited)
        done = subprocess.run(
            cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    draft_summary, run_out, report_out = outputs
    assert "GUESSED task: column_42" in draft_summary
    for out in (run_out, report_out):
        assert "| Method |" in out and "Δp ↑" in out
        assert "| ew |" in out and "| dbmtl |" in out and "| STL |" in out
        assert "weeks_worked mae" in out and "income auc" in out and "never_married auc" in out
    assert (tmp_path / "mtlbench-out" / "reports" / "census" / "report.md").is_file()
    # the error the tutorial quotes for a text label without positive = [...]
    spec = tmp_path / "census.toml"
    text = spec.read_text()
    cut = 'column_42 = {task = "income", kind = "binary", positive = ["50000+."]}'
    assert cut in text
    spec.write_text(text.replace(cut, 'column_42 = {task = "income", kind = "binary"}'))
    done = subprocess.run(
        ["mtlbench", "run", "census.toml", "--no-tracking", "--out", "out-2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    quoted = blocks_of("text", TUTORIAL.read_text())
    error = next(b for b in quoted if b.startswith("mtlbench run: error:"))
    head = "column 'column_42' (task 'income'): a binary label must be 0 or 1, not "
    assert head in error and head in done.stderr
    hint = 'Name the value(s) that mean 1 in the task\'s spec entry, e.g. positive = ["50000+."]'
    assert hint in error and hint in done.stderr


def blocks_of(lang: str, text: str) -> list[str]:
    """Bodies of the plain ```<lang> blocks of ``text``."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)
