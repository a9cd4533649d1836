"""A small file in the format of UCI Census-Income (KDD) — 42 fields separated by ", ", no
header, "?" for missing values, string labels — written fresh by the tests (the real file is
never copied). Loaded by file path (tests use --import-mode=importlib), as
tests/mtltrain/trainer_problem.py is."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_TEXT = {
    2: ["Not in universe", "Private", "Self-employed-not incorporated", "Local government"],
    5: ["High school graduate", "Children", "Some college but no degree", "Bachelors degree"],
    7: ["Not in universe", "High school", "College or university"],
    8: ["Never married", "Married-civilian spouse present", "Divorced", "Widowed"],
    9: ["Not in universe or children", "Retail trade", "Manufacturing-durable goods"],
    10: ["Not in universe", "Adm support including clerical", "Professional specialty"],
    11: ["White", "Black", "Asian or Pacific Islander"],
    12: ["All other", "Mexican-American", "NA"],
    13: ["Female", "Male"],
    14: ["Not in universe", "No", "Yes"],
    15: ["Not in universe", "Other job loser", "Re-entrant"],
    16: ["Children or Armed Forces", "Full-time schedules", "Not in labor force"],
    20: ["Nonfiler", "Joint both under 65", "Single"],
    21: ["Not in universe", "South", "West"],
    22: ["Not in universe", "California", "Utah", "?"],
    23: ["Householder", "Child <18 never marr not in subfamily", "Spouse of householder"],
    24: ["Householder", "Child under 18 never married", "Spouse of householder"],
    26: ["?", "Nonmover", "MSA to MSA"],
    27: ["?", "Nonmover", "Same county"],
    28: ["?", "Nonmover", "Same county"],
    29: ["Not in universe under 1 year old", "Yes", "No"],
    30: ["?", "Not in universe", "No"],
    32: ["Not in universe", "Both parents present", "Mother only present"],
    33: ["United-States", "Mexico", "?"],
    34: ["United-States", "Mexico", "?"],
    35: ["United-States", "Mexico", "?"],
    36: ["Native- Born in the United States", "Foreign born- Not a citizen of U S"],
    38: ["Not in universe", "No", "Yes"],
}
_CODES = {3: [0, 33, 43, 4, 42], 4: [0, 2, 26, 19, 29], 31: list(range(7)), 37: [0, 1, 2]}
_CODES |= {39: [0, 1, 2], 41: [94, 95]}


def census_like_rows(n: int, seed: int = 0) -> list[str]:
    """``n`` lines in Census-Income's format: age (col 1), text and integer-code columns,
    money amounts (6, 17-19), the instance weight (25), weeks worked 0-52 (40), and the
    label (42: ``- 50000.`` or ``50000+.``, more likely with more weeks worked)."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        fields: list[str] = []
        weeks = int(rng.integers(0, 53))
        for col in range(1, 43):
            if col in _TEXT:
                fields.append(str(rng.choice(_TEXT[col])))
            elif col in _CODES:
                fields.append(str(rng.choice(_CODES[col])))
            elif col == 1:
                fields.append(str(int(rng.integers(0, 91))))
            elif col in (6, 17, 18, 19):
                fields.append(str(int(rng.choice([0, 0, 0, rng.integers(1, 5000)]))))
            elif col == 25:
                fields.append(f"{rng.uniform(100, 5000):.2f}")
            elif col == 40:
                fields.append(str(weeks))
            else:  # 42, the label
                rich = rng.random() < 0.1 + 0.4 * weeks / 52
                fields.append("50000+." if rich else "- 50000.")
        lines.append(", ".join(fields))
    return lines


def write_census_like(path: Path, rows: int = 400) -> Path:
    """Write ``rows`` Census-Income-like lines to ``path`` (gzipped when it ends in ``.gz``)."""
    text = "\n".join(census_like_rows(rows)) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path
