"""What the sharded test (test_sharded.py) and its worker processes (_dmp_worker.py) share:
the model, the global batches, the balancer, the losses — built the same way everywhere."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import mtlbalance
from mtlrec.metrics import task_loss
from mtlrec.models import MMoE, RecInputs, random_inputs

FEATURES = {"user": (40, 8), "item": (24, 4), "tags": (16, 4), "city": (8, 4)}
TASKS = {"click": "binary", "dwell": "regression"}
DENSE = 3


def build_model(config: dict[str, Any]) -> MMoE:
    """The test's MMoE (torchrec backend); the caller seeds the global RNG first."""
    return MMoE(
        FEATURES,
        TASKS,
        dense_dim=DENSE,
        num_experts=2,
        expert=(8,),
        tower=(4,),
        backend="torchrec",
        init_std=0.3,
    )


def global_batch(config: dict[str, Any], step: int) -> tuple[RecInputs, dict[str, Tensor]]:
    """Step ``step``'s global batch (the same on every process): ids with repeats within the
    batch (so rows of different ranks update the same table rows), a multi-hot feature."""
    g = torch.Generator().manual_seed(1000 + step)
    n = config["batch"]
    inputs = random_inputs(n, FEATURES, dense_dim=DENSE, multi_hot={"tags": 3}, generator=g)
    targets = {
        "click": (torch.rand(n, generator=g) < 0.4).float(),
        "dwell": 30.0 * torch.rand(n, generator=g),  # a loss 2-3 orders above the click's
    }
    return inputs, targets


def task_losses(
    config: dict[str, Any], preds: dict[str, Tensor], targets: dict[str, Tensor]
) -> dict[str, Tensor]:
    return {t: task_loss(kind)(preds[t], targets[t]) for t, kind in TASKS.items()}


def make_balancer(config: dict[str, Any], model: MMoE, *, tables: Any) -> mtlbalance.Balancer:
    return mtlbalance.make(
        config["method"],
        model.dense_shared_parameters(),
        model.task_parameters(),
        engine="loop",
        tables=tables,
    )
