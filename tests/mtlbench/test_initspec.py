"""`mtlbench init-spec` drafts a spec from a file (every guess marked as one), the draft is a
valid spec that builds, and specs ship with the package so `mtlbench list` works anywhere."""

from __future__ import annotations

import fnmatch
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtlbench.cli import main
from mtlbench.runner import build_problem
from mtlbench.spec import PACKAGED_SPECS, find_spec, list_specs, load_spec
from mtlrec._toml import toml_key, toml_str, toml_value
from mtlrec.draft import draft_table_spec

_HELPER = Path(__file__).with_name("census_like.py")  # loaded by path: --import-mode=importlib
_spec = importlib.util.spec_from_file_location("census_like", _HELPER)
assert _spec is not None and _spec.loader is not None
census_like_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(census_like_module)
write_census_like = census_like_module.write_census_like

ROOT = Path(__file__).resolve().parents[2]


def _lines(text: str) -> dict[str, str]:
    """``key -> line`` of the [data.columns] table of a draft."""
    body = text.split("[data.columns]\n", 1)[1].split("\n\n", 1)[0]
    return {line.split(" = ", 1)[0]: line for line in body.splitlines() if " = " in line}


def test_draft_of_a_census_like_file(
    tmp_path: Path,
) -> None:
    path = write_census_like(tmp_path / "census-income.test.gz", 400)
    draft = draft_table_spec(path)
    raw = tomllib.loads(draft.text)
    data = raw["data"]
    assert (data["separator"], data["header"], data["trim"]) == (",", False, True)
    assert set(data["nulls"]) == {"?", "NA"}  # the fixture has both; both are GUESSes
    cols = data["columns"]
    assert list(cols) == [f"column_{i}" for i in range(1, 43)]
    assert cols["column_1"] == "dense"  # ages 0..90: a quantity
    assert cols["column_2"] == "sparse"  # text
    assert cols["column_3"] == "sparse"  # integer codes with 5 values
    assert cols["column_25"] == "dense"  # the instance weight (a float)
    # the last column is guessed a binary task, positive = the rarer value; said so
    assert cols["column_42"] == {"task": "column_42", "kind": "binary", "positive": ["50000+."]}
    lines = _lines(draft.text)
    assert "GUESS" in lines["column_42"] and "rarer" in lines["column_42"]
    assert "GUESS" in lines["column_3"]  # codes or a quantity: the user decides
    assert raw["tasks"] == {"column_42": {"auc": "higher"}}
    assert draft.task == "column_42" and "GUESSED task" in draft.summary()
    # every guess about reading the file is marked as one too
    for key in ("separator", "header", "nulls"):
        line = next(x for x in draft.text.splitlines() if x.startswith(f"{key} ="))
        assert "GUESS" in line, line


def test_the_draft_builds_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_census_like(tmp_path / "census.txt", 300)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(draft_table_spec("census.txt").text)
    spec = load_spec(tmp_path / "c.toml")
    assert spec.problem == "mtlrec.bench:table" and list(spec.tasks) == ["column_42"]
    problem = build_problem(spec)
    assert problem.info["split_rows"] == [210, 45, 45]


def test_draft_kinds_of_a_csv_with_header_and_a_parquet_file(tmp_path: Path) -> None:
    n = 300
    df = pl.DataFrame(
        {
            "user id": [f"u{i}" for i in range(n)],  # a different value in every row: an id
            "price": [i * 0.37 for i in range(n)],
            "tags": ["a|b", "b|c", "c"] * (n // 3),
            "city": ["Paris", "Lyon", None] * (n // 3),
            "empty": [None] * n,
            "stars": [1, 2, 3, 4, 5] * (n // 5),  # a last column with 5 values: multiclass
        },
        schema_overrides={"empty": pl.String},
    )
    df.write_csv(tmp_path / "shop.csv")
    draft = draft_table_spec(tmp_path / "shop.csv")
    raw = tomllib.loads(draft.text)
    assert raw["data"]["header"] is True and raw["data"]["separator"] == ","
    cols = raw["data"]["columns"]
    assert cols["user id"] == "ignore" and "an id?" in _lines(draft.text)['"user id"']
    assert cols["price"] == "dense"
    assert cols["tags"] == {"kind": "multi_hot", "separator": "|"}
    assert cols["city"] == "sparse" and cols["empty"] == "ignore"
    assert cols["stars"] == {"task": "stars", "kind": "multiclass"}
    assert raw["tasks"] == {"stars": {"accuracy": "higher"}}
    df.write_parquet(tmp_path / "shop.parquet")
    pq = tomllib.loads(draft_table_spec(tmp_path / "shop.parquet").text)
    assert "separator" not in pq["data"] and pq["data"]["columns"]["price"] == "dense"


def test_a_numeric_last_column_is_guessed_regression(tmp_path: Path) -> None:
    rows = ["x,y", *[f"{'abc'[i % 3]},{i * 1.5}" for i in range(200)]]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    raw = tomllib.loads(draft_table_spec(tmp_path / "r.csv").text)
    assert raw["data"]["columns"]["y"] == {"task": "y", "kind": "regression"}
    assert raw["tasks"] == {"y": {"mae": "lower"}}


def test_init_spec_command_writes_refuses_to_overwrite_and_prints(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_census_like(tmp_path / "census-income.test.gz", 200)
    monkeypatch.chdir(tmp_path)
    assert main(["init-spec", "census-income.test.gz", "--name", "census"]) == 0
    out = capsys.readouterr().out
    assert "wrote census.toml" in out and "mtlbench run census.toml --stl" in out
    first = (tmp_path / "census.toml").read_text()
    assert load_spec(tmp_path / "census.toml").name == "census"
    assert main(["init-spec", "census-income.test.gz", "--name", "census"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["init-spec", "census-income.test.gz", "--out", "-", "--no-header"]) == 0
    assert capsys.readouterr().out.startswith("# Drafted by `mtlbench init-spec")
    assert main(["init-spec", "census-income.test.gz", "--name", "census", "--force"]) == 0
    assert (tmp_path / "census.toml").read_text() == first
    assert main(["init-spec", "missing.csv"]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err


@given(st.text(max_size=40))
def test_toml_strings_and_keys_round_trip(text: str) -> None:
    assert tomllib.loads(f"k = {toml_str(text)}")["k"] == text
    if text:
        assert tomllib.loads(f"{toml_key(text)} = 1") == {text: 1}
    value = {"a": [text, 1, 2.5, True], "b": {"c": text}}
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


# ------------------------------------------------------------------------------ shipped specs
def test_specs_ship_with_the_package_and_benchmarks_specs_only_points_there() -> None:
    shipped = sorted(p.name for p in PACKAGED_SPECS.glob("*.toml"))
    assert {"synthetic-hetero.toml", "census-income-mmoe.toml"} <= set(shipped)
    assert list((ROOT / "benchmarks" / "specs").glob("*.toml")) == []  # one copy of each spec
    assert "apps/mtlbench/src/mtlbench/specs" in (ROOT / "benchmarks/specs/README.md").read_text()
    data = tomllib.loads((ROOT / "apps" / "mtlbench" / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["mtlbench"]
    assert all(any(fnmatch.fnmatch(f"specs/{n}", pat) for pat in patterns) for n in shipped)


def test_list_outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MTLBENCH_SPECS", raising=False)
    env = {k: v for k, v in __import__("os").environ.items() if k != "MTLBENCH_SPECS"}
    out = subprocess.run(
        [sys.executable, "-m", "mtlbench.cli", "list"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "synthetic-hetero:" in out and "census-income-mmoe:" in out
    assert find_spec("synthetic-hetero").path == PACKAGED_SPECS / "synthetic-hetero.toml"


def test_a_user_folder_comes_first_and_paths_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    text = (PACKAGED_SPECS / "synthetic-hetero.toml").read_text()
    (mine / "synthetic-hetero.toml").write_text(
        text.replace('description = "', 'description = "MY COPY: ', 1)
    )
    (mine / "other.toml").write_text(text.replace('name = "synthetic-hetero"', 'name = "other"'))
    monkeypatch.setenv("MTLBENCH_SPECS", str(mine))
    names = [s.name for s in list_specs()]
    assert names.count("synthetic-hetero") == 1 and "other" in names and "qm9" in names
    assert find_spec("synthetic-hetero").description.startswith("MY COPY")
    monkeypatch.delenv("MTLBENCH_SPECS")
    assert find_spec("other", mine).name == "other"  # --specs DIR
    assert find_spec(str(mine / "other.toml")).name == "other"  # a path
    with pytest.raises(FileNotFoundError, match="--specs 'nowhere' is not a directory"):
        list_specs("nowhere")
    with pytest.raises(ValueError, match="init-spec"):
        find_spec("no-such-spec")
