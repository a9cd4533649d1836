"""Every spec shipped with mtlbench (mtlbench/specs/) parses, names an importable problem
builder and, for the cheap ones, builds a problem whose tasks and metric directions match the
spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlbench.runner import build_problem
from mtlbench.spec import PACKAGED_SPECS, load_spec

ROOT = Path(__file__).resolve().parents[2]
ALL = sorted((load_spec(p) for p in PACKAGED_SPECS.glob("*.toml")), key=lambda s: s.name)


def test_specs_exist() -> None:
    names = {s.name for s in ALL}
    assert {"synthetic-hetero", "synthetic-log-mmoe", "mmoe-synthetic"} <= names
    for spec in ALL:
        assert spec.path is not None and spec.path.stem == spec.name  # file name == spec name


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.name)
def test_spec_builder_imports(spec) -> None:  # type: ignore[no-untyped-def]
    assert callable(spec.builder())
    assert spec.methods and all(m != "stl" for m in spec.methods)


CENSUS = ROOT.parent / "shared" / "data" / "census-income"
BUILDABLE = ["synthetic-hetero", "mmoe-synthetic", "synthetic-log-mmoe"]
if CENSUS.is_dir():  # the census specs read ../shared/data from the repository root
    BUILDABLE += [s.name for s in ALL if s.name.startswith("census-income-")]


@pytest.mark.parametrize("name", BUILDABLE)
def test_problems_match_their_specs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    spec = next(s for s in ALL if s.name == name)
    problem = build_problem(spec)  # raises if tasks or directions differ from the spec
    assert [t.name for t in problem.tasks] == list(spec.tasks)
    model = problem.make_model()
    params = {id(p) for p in model.parameters()}
    shared = model.shared_parameters()
    shared_ids = {id(p) for p in (shared.parameters() if hasattr(shared, "parameters") else shared)}
    assert shared_ids and shared_ids <= params
