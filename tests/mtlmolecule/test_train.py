"""A few DB-MTL training steps on a 200-molecule subset, through the mtlbench builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mtlbalance
from mtlmolecule.bench import qm9_problem
from mtlmolecule.convert import TASKS
from mtlmolecule.model import MPNN
from mtltrain import Trainer, TrainerConfig, seed_everything

from .conftest import HAS_CONVERT, random_molecules, write_cache


@pytest.fixture
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Real qm9pack molecules when qm9pack/rdkit are installed, else random ones."""
    if HAS_CONVERT:
        return request.getfixturevalue("real_cache")
    return write_cache(tmp_path, random_molecules(260))


def test_dbmtl_steps_on_subset(cache: Path) -> None:
    problem = qm9_problem(data={"cache_dir": str(cache), "subset": 200, "seed": 0},
                          model={"width": 16, "edge_hidden": 16})  # fmt: skip
    assert problem.info["train"] + problem.info["val"] + problem.info["test"] == 200
    seed_everything(0)
    model = problem.make_model()
    assert isinstance(model, MPNN)
    assert {t.name for t in problem.tasks} == set(TASKS)
    balancer = mtlbalance.make("dbmtl", model.shared_parameters(), model.task_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    trainer = Trainer(model, problem.tasks, balancer, optimizer,
                      config=TrainerConfig(epochs=1, progress=False),
                      unpack=problem.unpack)  # fmt: skip
    result = trainer.fit(
        problem.loader(problem.train, 32, True),
        problem.loader(problem.val, 64, False),
        problem.loader(problem.test, 64, False),
    )
    assert result.steps == len(problem.loader(problem.train, 32, True)) >= 5
    after = list(model.encoder.parameters())
    moved = [not torch.equal(a, b.detach()) for a, b in zip(before, after, strict=True)]
    assert all(moved)
    assert result.test is not None
    for task in TASKS:
        mae = result.test[task]["mae"]
        assert 0 < mae < float("inf"), task


def test_unknown_options_are_named(cache: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown \[model\] options \['depth'\]"):
        qm9_problem(data={"cache_dir": str(cache)}, model={"depth": 3})
    with pytest.raises(ValueError, match=r"unknown \[data\] options"):
        qm9_problem(data={"cache_dir": str(cache), "splits": "x"}, model={})
