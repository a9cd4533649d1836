"""Two survivors of hand-planted bugs: a dense feature's ``log`` option skipped, and an MoE
gate's softmax taken over the batch instead of the experts (caught before only by the
Census smoke run, which needs the real file)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from mtlrec.data import DenseFeature, FeatureSpec, Label, SparseFeature
from mtlrec.models import MODELS, make_model, random_inputs

FEATURES = {"user": (50, 8), "item": (30, 4), "tags": (20, 3)}
TASKS = {"click": "binary", "watch": "regression"}
ESMM_TASKS = {"ctr": "binary", "ctcvr": "binary"}


@pytest.mark.parametrize("norm", ["none", "standard"])
def test_dense_log_is_signed_log1p_before_normalisation(norm: str) -> None:
    raw = [-1000.0, -1.0, 0.0, 2.0, 30.0, 1e6]
    frame = pl.DataFrame({"u": ["a"] * 6, "n": raw, "y": [0, 1, 0, 1, 0, 1]})
    spec = FeatureSpec(
        sparse=[SparseFeature("u")], dense=[DenseFeature("n", norm=norm, log=True)],
        labels=[Label("y")],
    )  # fmt: skip
    got = spec.fit(frame).transform(frame).inputs.dense[:, 0].double().numpy()
    logged = np.array([math.copysign(math.log1p(abs(v)), v) for v in raw])
    assert not np.allclose(logged, raw)
    # "standard": (x - mean) / std (population std) on the training data, after the log
    standard = (logged - logged.mean()) / logged.std(ddof=0)
    want = standard if norm == "standard" else logged
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    tasks = ESMM_TASKS if name == "esmm" else TASKS
    return make_model(name, FEATURES, tasks, dense_dim=3).eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_row_is_predicted_independently_of_the_others(name: str) -> None:
    """In eval mode a row's prediction depends on that row alone: the same as in a batch of
    one. A softmax or normalisation over the batch dimension breaks this."""
    model = _model(name)
    inputs = random_inputs(
        8, FEATURES, dense_dim=3, multi_hot={"tags": 3}, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        _, together = model(inputs)
        for i in (0, 5):
            _, alone = model(inputs.index(torch.tensor([i])))
            for task, pred in together.items():
                torch.testing.assert_close(
                    alone[task][0], pred[i], rtol=1e-5, atol=1e-6, msg=f"{name}/{task} row {i}"
                )
