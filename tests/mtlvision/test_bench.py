"""The vision specs: each builds its problem on a fixture in the real format, its published
rows agree with its published Δp, and a short run goes through mtlbench end to end."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

import mtlbalance
from mtlbench.runner import build_problem, run_benchmark
from mtlbench.spec import PACKAGED_SPECS, Spec, list_specs, parse_spec
from mtltrain import Trainer, TrainerConfig, delta_p
from mtlvision.bench import cityscapes_problem, multimnist_problem, nyuv2_problem, office_problem
from mtlvision.data import DatasetNotFoundError

from .conftest import OFFICE_LISTS, check_partition, write_dense, write_mnist, write_office

SPEC_DIR = PACKAGED_SPECS
SPECS = {s.name: s for s in list_specs(SPEC_DIR)}
VISION = ["nyuv2", "cityscapes", "office-31", "office-home", "multimnist"]
TABLES = {"nyuv2": 22, "cityscapes": 22, "office-31": 22, "office-home": 22}


def _one_epoch(batch_size: int) -> dict[str, object]:
    return {"epochs": 1, "batch_size": batch_size, "scheduler": None}


def _variant(
    name: str,
    *,
    data: dict[str, object] | None = None,
    model: dict[str, object] | None = None,
    train: dict[str, object] | None = None,
) -> Spec:
    """Spec ``name`` with some [data], [model], [train] options changed (None removes one),
    parsed again from its TOML so every check of the spec format applies."""
    path = SPEC_DIR / f"{name}.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    for key, changes in (("data", data), ("model", model), ("train", train)):
        table = dict(raw.get(key, {}))
        for option, value in (changes or {}).items():
            if value is None:
                table.pop(option, None)
            else:
                table[option] = value
        raw[key] = table
    return parse_spec(raw, path=path)


def _fixture(name: str, base: Path, *, small: bool = False) -> dict[str, object]:
    """Write a fixture for spec ``name`` under ``base`` ($MTLVISION_DATA); return the [data]
    options that point the spec at it (when it does not read $MTLVISION_DATA)."""
    if name == "nyuv2":
        write_dense(
            base / "nyuv2", classes=13, size=(32, 64) if small else (288, 384), counts=(4, 2)
        )
    elif name == "cityscapes":
        write_dense(
            base / "cityscapes",
            classes=7,
            size=(32, 64) if small else (128, 256),
            counts=(4, 2),
            normals=False,
        )
    elif name.startswith("office"):
        lists = OFFICE_LISTS / name if OFFICE_LISTS.is_dir() else None
        write_office(base / name, name, per_list=3, lists=lists)
    else:
        write_mnist(base / "mnist", n_train=110, n_test=50)
        return {"root": str(base / "mnist"), "val_size": 50}
    return {}


@pytest.mark.parametrize("name", VISION)
def test_spec_builds_its_problem_on_a_fixture(name: str, data_env: Path) -> None:
    spec = _variant(name, data=_fixture(name, data_env))
    problem = build_problem(spec)  # raises if the tasks or metric directions differ
    assert [t.name for t in problem.tasks] == list(spec.tasks)
    check_partition(problem.make_model())
    batch_x, batch_y = next(iter(problem.loader(problem.test, 2, False)))
    assert set(batch_y) == set(spec.tasks)
    if name in ("nyuv2", "cityscapes"):
        assert problem.info["sizes"] == {"train": 4, "val": 2, "test": 2}  # val: the test split
        assert batch_x.shape[-2:] == tuple(problem.info["image_size"])
    elif name.startswith("office"):
        assert set(batch_x) == set(spec.tasks) and all(
            x.shape[-2:] == (224, 224) for x in batch_x.values()
        )
    else:
        assert problem.info["sizes"] == {"train": 60, "val": 50, "test": 50}


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes", "office-31", "office-home"])
def test_spec_without_data_says_where_it_goes(name: str, data_env: Path) -> None:
    spec = SPECS[name]
    with pytest.raises(DatasetNotFoundError, match=str(data_env / name).replace("\\", "\\\\")):
        build_problem(spec)


@pytest.mark.parametrize("name", list(TABLES))
def test_published_rows_agree_with_the_published_delta_p(name: str) -> None:
    """Δp (Eq. 2) of every published row against the published STL row, from the spec's
    numbers, matches the published Δp to within rounding (0.15) — a check of the
    transcription. The one exception is a copy in the paper itself (see the spec's note)."""
    spec = SPECS[name]
    assert spec.paper is not None and len(spec.paper.results) == TABLES[name]
    stl = spec.paper.stl
    assert stl is not None
    known = {("office-home", "imtl_g")}
    for method, published in spec.paper.delta_p.items():
        ours = delta_p(spec.paper.results[method], stl, spec.tasks)
        if (name, method) in known:
            assert abs(ours - published) > 0.3
        else:
            assert abs(ours - published) < 0.15, (method, ours, published)
    assert {"stl", "ew", "dbmtl"} <= set(spec.paper.results)
    assert "dbmtl" in spec.paper.delta_p and "moco" not in (
        spec.paper.delta_p if name.startswith("office") else {}
    )


def test_dbmtl_rows_as_published() -> None:
    """Spot checks typed from the paper by hand (Tables 1–4, DB-MTL rows)."""
    nyu = SPECS["nyuv2"].paper
    assert nyu is not None and nyu.results["dbmtl"]["normal"]["within_30"] == 75.24
    assert nyu.results["stl"]["depth"] == {"abs_err": 0.3926, "rel_err": 0.1605}
    city = SPECS["cityscapes"].paper
    assert city is not None and city.results["dbmtl"]["depth"]["abs_err"] == 0.01280
    assert city.delta_p["dbmtl"] == 0.20
    o31 = SPECS["office-31"].paper
    assert o31 is not None and o31.results["dbmtl"]["dslr"]["acc"] == 98.63
    home = SPECS["office-home"].paper
    assert (
        home is not None
        and home.delta_p["dbmtl"] == 0.17
        and home.results["moco"]["Clipart"]["acc"] == 79.41
    )


def _run(spec: Spec, methods: list[str], stl: bool, tmp_path: Path) -> list:  # type: ignore[type-arg]
    return run_benchmark(
        spec,
        methods=methods,
        seeds=[0],
        stl=stl,
        tracking_uri=None,
        spool_root=tmp_path / "spool",
        out_dir=tmp_path / "out",
        device="cpu",
        progress=False,
        echo=lambda _: None,
    )


def test_a_short_multimnist_run_through_mtlbench(data_env: Path, tmp_path: Path) -> None:
    """STL, EW and DB-MTL for one epoch on the MNIST fixture through mtlbench's runner: every
    run finishes with finite test accuracies, selected against our STL runs."""
    spec = _variant(
        "multimnist", data=_fixture("multimnist", data_env, small=True), train=_one_epoch(8)
    )
    records = _run(spec, ["ew", "dbmtl"], True, tmp_path)
    assert [r.method for r in records] == ["stl", "stl", "ew", "dbmtl"]
    for record in records:
        assert record.status == "FINISHED"
        assert all(math.isfinite(m["acc"]) for m in record.test.values())
    assert all(r.selection == "stl" for r in records if r.method != "stl")


def test_a_short_nyuv2_run_through_mtlbench(data_env: Path, tmp_path: Path) -> None:
    """DB-MTL for one epoch on the NYUv2 fixture (32×64 images, the paper's ASPP heads on a
    small ResNet-18 so that it runs on a CPU) through mtlbench's runner: all nine metrics
    finite, and a test Δp against the paper's STL row (no STL runs here)."""
    extra = {**_fixture("nyuv2", data_env, small=True), "image_size": [32, 64], "augment": True}
    small = {"backbone": "resnet18", "dilated": False}
    spec = _variant("nyuv2", data=extra, model=small, train=_one_epoch(2))
    (record,) = _run(spec, ["dbmtl"], False, tmp_path)
    assert record.status == "FINISHED" and record.selection == "first_epoch"
    assert {t: set(m) for t, m in record.test.items()} == {t: set(m) for t, m in spec.tasks.items()}
    assert all(math.isfinite(v) for m in record.test.values() for v in m.values())


@pytest.mark.parametrize("name", ["office-31", "office-home"])
def test_a_short_office_run(name: str, data_env: Path) -> None:
    """EW and DB-MTL for one epoch on the Office fixture with mtltrain's Trainer: one batch of
    every domain per step, every domain's test accuracy at the end. (Not through mtlbench's
    runner: it selects by validation Δp, and an untrained model's 0% accuracy on 3 images
    leaves Δp nothing to divide by.)"""
    _fixture(name, data_env)
    spec = _variant(name, data={"image_size": 32}, train=_one_epoch(2))
    problem = build_problem(spec)
    for method in ("ew", "dbmtl") if name == "office-31" else ("dbmtl",):
        torch.manual_seed(0)
        model = problem.make_model()
        balancer = mtlbalance.make(method, model.shared_parameters(), model.task_parameters())
        optimizer = torch.optim.Adam([*model.parameters(), *balancer.parameters()], lr=1e-4)
        trainer = Trainer(
            model,
            problem.tasks,
            balancer,
            optimizer,
            config=TrainerConfig(epochs=1, selection="last", progress=False),
        )
        result = trainer.fit(
            problem.loader(problem.train, 2, True), test=problem.loader(problem.test, 2, False)
        )
        assert result.steps == 1  # 3 images per domain, batch 2, the last dropped
        assert result.test is not None and set(result.test) == set(spec.tasks)
        assert all(0 <= m["acc"] <= 100 for m in result.test.values())


def test_builders_reject_unknown_options(data_env: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown \[data\] options \['augmnt'\]"):
        nyuv2_problem(data={"augmnt": True}, model={})
    with pytest.raises(ValueError, match=r"unknown \[model\] options \['width'\]"):
        multimnist_problem(data={}, model={"width": 3})
    with pytest.raises(ValueError, match="dataset must be one of"):
        office_problem(data={"dataset": "office-10"}, model={})
    write_dense(data_env / "cityscapes", classes=7, size=(32, 64), normals=False)
    with pytest.raises(ValueError, match="augment must be true or false"):
        cityscapes_problem(data={"augment": "yes", "image_size": [32, 64]}, model={})
    with pytest.raises(ValueError, match="val_size 4 leaves no training image"):
        cityscapes_problem(data={"val_size": 4, "image_size": [32, 64]}, model={})


def test_held_out_validation_images(data_env: Path) -> None:
    write_dense(data_env / "cityscapes", classes=7, size=(32, 64), counts=(5, 2), normals=False)
    problem = cityscapes_problem(data={"val_size": 2, "image_size": [32, 64], "seed": 1}, model={})
    assert problem.info["sizes"] == {"train": 3, "val": 2, "test": 2}
    assert not set(problem.train.indices) & set(problem.val.indices)
    assert problem.val is not problem.test and problem.val.split == "train"
    assert not problem.train.augment and problem.info["validation"] == "held-out training images"
    again = cityscapes_problem(data={"val_size": 2, "image_size": [32, 64], "seed": 1}, model={})
    assert again.val.indices == problem.val.indices
    torch.manual_seed(0)
