"""Mutation testing of the modules that decide results, with cosmic-ray.

    python benchmarks/mutation/run.py [TARGET ...] [--timeout SECONDS] [--out DIR]

Targets and the tests that should catch their mutants are in ``targets.toml`` beside this
file. Mutants are applied to a scratch copy of the repository's tracked files (your checkout is
never edited), with the copy's sources first on PYTHONPATH. For each target it writes
``<out>/<target>.md``: every surviving mutant as a diff, marked "reviewed: equivalent" when
``reviewed.toml`` explains why no test can catch it; ``<out>/README.md`` sums up the survival
rate per target (a target not run this time keeps its last numbers). The nox session
``mutate`` runs this (``python3 -m nox -s mutate -- deltap metrics``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SUMMARY_JSON = "summary.json"


@dataclass
class Mutant:
    operator: str
    occurrence: int
    line: int
    outcome: str  # KILLED | SURVIVED | INCOMPETENT (timeout, broken code)
    removed: str  # the original line(s), stripped
    added: str  # the mutated line(s), stripped
    diff: str


def _load_targets() -> dict[str, dict[str, object]]:
    with open(HERE / "targets.toml", "rb") as f:
        return tomllib.load(f)


def _load_reviewed() -> list[dict[str, str]]:
    path = HERE / "reviewed.toml"
    if not path.exists():
        return []
    with open(path, "rb") as f:
        return list(tomllib.load(f).get("equivalent", []))


def _scratch_copy(dest: Path) -> None:
    """The repository's tracked files (as in the working tree) into ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _pythonpath(root: Path) -> str:
    srcs = sorted(str(p) for p in root.glob("packages/*/src")) + sorted(
        str(p) for p in root.glob("apps/*/src")
    )
    return os.pathsep.join(srcs)


def _diff_lines(diff: str) -> tuple[str, str]:
    removed = [
        ln[1:].strip()
        for ln in diff.splitlines()
        if ln.startswith("-") and not ln.startswith("---")
    ]
    added = [
        ln[1:].strip()
        for ln in diff.splitlines()
        if ln.startswith("+") and not ln.startswith("+++")
    ]
    return "\n".join(removed), "\n".join(added)


def run_target(name: str, target: dict[str, object], root: Path, timeout: float) -> list[Mutant]:
    module = str(target["module"])
    tests = " ".join(str(t) for t in target["tests"])  # type: ignore[attr-defined]
    config = root / f"cr-{name}.toml"
    session = root / f"cr-{name}.sqlite"
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider -W ignore {tests}"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    env = {**os.environ, "PYTHONPATH": _pythonpath(root)}
    cr = [sys.executable, "-m", "cosmic_ray.cli"]
    subprocess.run([*cr, "init", str(config), str(session)], cwd=root, env=env, check=True)
    base = subprocess.run([*cr, "baseline", str(config)], cwd=root, env=env)
    if base.returncode != 0:
        raise SystemExit(f"{name}: the tests fail without any mutation ({tests}); fix them first")
    subprocess.run([*cr, "exec", str(config), str(session)], cwd=root, env=env, check=True)
    with sqlite3.connect(session) as con:
        rows = con.execute(
            "SELECT s.operator_name, s.occurrence, s.start_pos_row, r.test_outcome,"
            " r.worker_outcome, r.diff FROM mutation_specs s JOIN work_results r USING (job_id)"
            " ORDER BY s.start_pos_row, s.operator_name, s.occurrence"
        ).fetchall()
    mutants = []
    for op, occ, row, test_outcome, worker_outcome, diff in rows:
        outcome = test_outcome if worker_outcome == "NORMAL" else "INCOMPETENT"
        removed, added = _diff_lines(diff or "")
        mutants.append(Mutant(op, occ, row, outcome, removed, added, diff or ""))
    return mutants


def _reviewed_reason(module: str, m: Mutant, reviewed: list[dict[str, str]]) -> str | None:
    for r in reviewed:  # without "added": every mutant of that line
        if (
            r["module"] == module
            and r["removed"] == m.removed
            and r.get("added", m.added) == m.added
        ):
            return r["reason"]
    return None


def write_target(
    out: Path, name: str, module: str, mutants: list[Mutant], seconds: float
) -> dict[str, object]:
    reviewed = _load_reviewed()
    survivors = [m for m in mutants if m.outcome == "SURVIVED"]
    killed = sum(m.outcome == "KILLED" for m in mutants)
    incompetent = sum(m.outcome == "INCOMPETENT" for m in mutants)
    explained = [m for m in survivors if _reviewed_reason(module, m, reviewed)]
    lines = [
        f"# Mutation testing: `{module}`",
        "",
        f"{len(mutants)} mutants: {killed} killed, {len(survivors)} survived "
        f"({len(explained)} reviewed as equivalent), {incompetent} incompetent (timeout or "
        f"invalid code). {seconds / 60:.1f} min.",
        "",
    ]
    for m in survivors:
        reason = _reviewed_reason(module, m, reviewed)
        status = f"reviewed: equivalent — {reason}" if reason else "**not reviewed**"
        lines += [f"## line {m.line}: {m.operator} #{m.occurrence} ({status})", "", "```diff"]
        lines += [ln for ln in m.diff.splitlines() if not ln.startswith("--- mutation diff")]
        lines += ["```", ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    return {
        "module": module,
        "mutants": len(mutants),
        "killed": killed,
        "survived": len(survivors),
        "equivalent": len(explained),
        "incompetent": incompetent,
        "minutes": round(seconds / 60, 1),
        "date": dt.date.today().isoformat(),
    }


def write_summary(out: Path, results: dict[str, dict[str, object]], command: str) -> None:
    path = out / SUMMARY_JSON
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(results)
    path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    lines = [
        "# Mutation testing results",
        "",
        "cosmic-ray mutates one place of a module at a time and runs that module's tests",
        "(`benchmarks/mutation/targets.toml`); a mutant the tests pass with *survived*. Survival",
        "rate = survived / (killed + survived); *equivalent* survivors change nothing a test",
        "could observe (reasons in `benchmarks/mutation/reviewed.toml`); each other survivor is a",
        "missing test. Per-target files list every survivor as a diff.",
        "",
        f"Last command: `{command}` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}).",
        "",
        "| target | module | mutants | killed | survived | of which equivalent | survival rate "
        "| not reviewed | date |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in sorted(summary.items()):
        judged = int(r["killed"]) + int(r["survived"])
        rate = f"{100 * int(r['survived']) / judged:.1f}%" if judged else "—"
        open_ = int(r["survived"]) - int(r["equivalent"])
        lines.append(
            f"| [{name}]({name}.md) | `{r['module']}` | {r['mutants']} | {r['killed']} | "
            f"{r['survived']} | {r['equivalent']} | {rate} | {open_} | {r['date']} |"
        )
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    targets = _load_targets()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"default: all of {sorted(targets)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "mutation"))
    args = parser.parse_args()
    unknown = [t for t in args.targets if t not in targets]
    if unknown:
        raise SystemExit(f"unknown targets {unknown}; known: {sorted(targets)}")
    chosen = args.targets or sorted(targets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="mtl-mutate-") as tmp:
        root = Path(tmp)
        _scratch_copy(root)
        for name in chosen:
            start = time.monotonic()
            mutants = run_target(name, targets[name], root, args.timeout)
            module = str(targets[name]["module"])
            results[name] = write_target(out, name, module, mutants, time.monotonic() - start)
            print(f"{name}: {results[name]}", flush=True)
    command = "python benchmarks/mutation/run.py " + " ".join(sys.argv[1:])
    write_summary(out, results, command.strip())


if __name__ == "__main__":
    main()
