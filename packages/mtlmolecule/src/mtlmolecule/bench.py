"""Problem builder for ``mtlbench`` specs (``problem = "mtlmolecule.bench:qm9_problem"``).

``[data]`` options:
    ``cache_dir``: the folder of ``qm9_v1.npz`` (default ``$MTLMOLECULE_CACHE`` or
    ``~/.cache/mtlmolecule``; made by ``python -m mtlmolecule.convert``);
    ``split_file``: a torch-saved permutation (the published one is
    ``../shared/data/qm9/random_split.t``; relative paths are taken from the working
    directory); empty or absent: a permutation seeded by ``seed``;
    ``subset``: keep this many molecules (quick runs), split in the same proportions;
    ``train_size``, ``val_size``, ``test_size``: keep the first that many molecules of each
    part of the split (reduced budgets on the published split; not with ``subset``);
    ``seed``: for the permutation and the subset.
``[model]`` options: ``width`` (64), ``steps`` (3), ``edge_hidden`` (128), ``set2set_steps`` (3),
``share_edge_weights`` (true: the edge network runs once per forward, see
:mod:`mtlmolecule.model`).

Every task's loss is the MSE of the z-normalised target; its metric ``mae`` is reported in the
units of the paper's Table 5 (μ D, α a0³, ε_HOMO/ε_LUMO/ZPVE/U0/U/H/G meV, ⟨R²⟩ a0², c_v
cal/(mol K)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from mtltrain.metrics import MeanError
from mtltrain.problem import Problem
from mtltrain.task import Task

from .convert import TASKS
from .data import QM9Graphs, load_molecules, make_loader, make_splits, unpack
from .model import MPNN, count_parameters

__all__ = ["qm9_problem"]

_DATA = {
    "cache_dir": None,
    "split_file": None,
    "subset": None,
    "train_size": None,
    "val_size": None,
    "test_size": None,
    "seed": 0,
}
_MODEL = {
    "width": 64,
    "steps": 3,
    "edge_hidden": 128,
    "set2set_steps": 3,
    "share_edge_weights": True,
}


def _options(given: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown [{what}] options {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def qm9_problem(*, data: Mapping[str, Any], model: Mapping[str, Any]) -> Problem:
    """QM9's 11 tasks (the DB-MTL paper's Table 5) with Gilmer et al.'s MPNN."""
    d = _options(data, _DATA, "data")
    m = _options(model, _MODEL, "model")
    molecules = load_molecules(d["cache_dir"])
    subset = None if d["subset"] in (None, 0, "") else int(d["subset"])
    limits = [d[f"{part}_size"] for part in ("train", "val", "test")]
    sizes = None if all(v is None for v in limits) else limits
    splits = make_splits(
        len(molecules),
        split_file=d["split_file"] or None,
        seed=int(d["seed"]),
        subset=subset,
        sizes=sizes,
        targets=molecules.targets,
    )
    train, val, test = (
        QM9Graphs(molecules, ids, splits.mean, splits.std)
        for ids in (splits.train, splits.val, splits.test)
    )
    tasks = [
        Task(
            name,
            F.mse_loss,
            # predictions and targets are z-normalised: |Δ| · std · unit = MAE in paper units
            {"mae": MeanError("mae", scale=float(splits.std[k]) * TASKS[name][2])},
        )
        for k, name in enumerate(TASKS)
    ]
    if not isinstance(m["share_edge_weights"], bool):
        raise ValueError(
            f"[model] share_edge_weights must be true or false, not {m['share_edge_weights']!r}"
        )
    options = {k: v if k == "share_edge_weights" else int(v) for k, v in m.items()}

    def build() -> MPNN:
        return MPNN(list(TASKS), **options)

    info = {
        **splits.info,
        "cache": molecules.source,
        "subset": subset,
        "sizes": sizes,
        "seed": int(d["seed"]),
        "parameters": count_parameters(build()),
        "units": {t: u[1] for t, u in TASKS.items()},
    }
    return Problem(
        tasks=tasks,
        train=train,
        val=val,
        test=test,
        make_model=build,
        loader=make_loader,
        unpack=unpack,
        info=info,
    )
