"""Models: parameter groups, training with DB-MTL, representation engine, ESMM/AITM specifics,
metrics and bad configs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import mtlbalance
from mtlrec.metrics import make_task, make_tasks, task_loss, task_metrics
from mtlrec.models import (
    AITM,
    ESMM,
    MODELS,
    PLE,
    MMoE,
    MultiTaskRecModel,
    RecInputs,
    SharedBottom,
    logit_of_product,
    make_model,
    random_inputs,
    torchrec_available,
)
from mtltrain import Trainer, TrainerConfig

FEATURES = {"user": (40, 6), "item": (25, 4), "tags": (15, 3)}
TASKS = {"click": "binary", "conversion": "binary", "dwell": "regression"}
ESMM_TASKS = {"ctr": "binary", "ctcvr": "binary"}
SMALL: dict[str, dict[str, Any]] = {
    "shared_bottom": {"bottom": (16,), "tower": (8,)},
    "omoe": {"num_experts": 3, "expert": (16,), "tower": (8,)},
    "mmoe": {"num_experts": 3, "expert": (16,), "tower": (8,)},
    "cgc": {"shared_experts": 2, "task_experts": 1, "expert": (16,), "tower": (8,)},
    "ple": {"num_levels": 2, "shared_experts": 2, "task_experts": 1, "expert": (16,)},
    "esmm": {"tower": (16, 8)},
    "aitm": {"tower": (16, 8), "head": (8,)},
}


def build(name: str, backend: str = "torch", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    tasks = ESMM_TASKS if name == "esmm" else TASKS
    return make_model(name, FEATURES, tasks, dense_dim=3, backend=backend, **SMALL[name])


def batch(
    model: MultiTaskRecModel, n: int = 64, seed: int = 1
) -> tuple[RecInputs, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    inputs = random_inputs(n, FEATURES, dense_dim=3, multi_hot={"tags": 3}, generator=g)
    targets = {}
    for t, kind in model.task_kinds.items():
        if kind == "binary":
            targets[t] = torch.randint(0, 2, (n,), generator=g).float()
        else:
            targets[t] = 60.0 * torch.rand(n, generator=g)  # seconds: a much larger loss
    return inputs, targets


def losses_of(
    model: MultiTaskRecModel, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return {t: task_loss(k)(preds[t], targets[t]) for t, k in model.task_kinds.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_groups_are_disjoint_and_cover_the_model(name: str) -> None:
    model = build(name)
    emb = model.embedding_parameters()
    dense = model.dense_shared_parameters()
    task = {t: list(m.parameters()) for t, m in model.task_parameters().items()}
    assert list(task) == list(model.tasks)
    assert {id(p) for p in emb} == {id(p) for p in model.embedding.tables().values()}
    groups = [emb, dense, *task.values()]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "some parameter is in no group"
    assert [id(p) for p in model.shared_parameters()] == [id(p) for p in emb + dense]
    assert dense, "every model has dense shared layers"


@pytest.mark.parametrize("name", list(MODELS))
def test_trains_with_dbmtl_and_every_parameter_gets_a_gradient(name: str) -> None:
    model = build(name)
    # deterministic: the auto engine picks without timing every engine (faster test)
    balancer = mtlbalance.make(
        "dbmtl", model.shared_parameters(), model.task_parameters(), deterministic=True
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, targets = batch(model)
    first = None
    for step in range(15):
        optimizer.zero_grad(set_to_none=True)
        rep, preds = model(inputs)
        assert set(preds) == set(model.tasks)
        assert all(p.shape == (64,) for p in preds.values())
        losses = losses_of(model, preds, targets)
        if first is None:
            first = {t: float(v) for t, v in losses.items()}
        balancer.backward(losses, representation=rep)
        if step == 0:
            for group, params in [
                ("shared", model.shared_parameters()),
                *((f"task {t}", list(m.parameters())) for t, m in model.task_parameters().items()),
            ]:
                for p in params:
                    assert p.grad is not None and p.grad.abs().sum() > 0, (
                        f"{name}: a {group} parameter {tuple(p.shape)} got no gradient"
                    )
        optimizer.step()
    _, preds = model(inputs)
    last = losses_of(model, preds, targets)
    assert first is not None
    for t in model.tasks:
        assert math.isfinite(float(last[t]))
        assert float(last[t]) < first[t], f"{name}: task {t} did not improve"


@pytest.mark.parametrize("name", ["shared_bottom", "omoe", "mmoe", "cgc", "ple"])
def test_representation_engine_is_exact(name: str) -> None:
    """The representation each model returns is a frontier: the representation engine gives
    the same update as the loop engine."""
    grads = {}
    for engine in ("loop", "representation"):
        model = build(name)
        inputs, targets = batch(model)
        rep, preds = model(inputs)
        assert rep is not None
        if name in ("mmoe", "cgc", "ple"):
            assert isinstance(rep, tuple) and len(rep) == len(model.tasks)
        balancer = mtlbalance.make(
            "dbmtl", model.shared_parameters(), model.task_parameters(), engine=engine
        )
        balancer.backward(losses_of(model, preds, targets), representation=rep)
        grads[engine] = [torch.clone(p.grad) for p in model.parameters()]
    for a, b in zip(grads["loop"], grads["representation"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")
def test_torchrec_and_torch_models_train_identically() -> None:
    out = {}
    for backend in ("torch", "torchrec"):
        model = build("mmoe", backend=backend, seed=7)
        assert model.embedding.backend == backend
        balancer = mtlbalance.make(
            "dbmtl", model.shared_parameters(), model.task_parameters(), engine="representation"
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        inputs, targets = batch(model)
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            rep, preds = model(inputs)
            balancer.backward(losses_of(model, preds, targets), representation=rep)
            optimizer.step()
        out[backend] = model(inputs)[1]
    for t in TASKS:
        torch.testing.assert_close(out["torch"][t], out["torchrec"][t], rtol=1e-4, atol=1e-5)


def test_esmm_ctcvr_is_the_product_and_cvr_tower_belongs_to_ctcvr() -> None:
    model = build("esmm")
    inputs, _ = batch(model, n=32)
    rep, preds = model(inputs)
    assert rep is None
    p_ctcvr = torch.sigmoid(preds["ctcvr"])
    expected = torch.sigmoid(preds["ctr"]) * torch.sigmoid(model.cvr_logit(inputs))
    torch.testing.assert_close(p_ctcvr, expected, rtol=1e-5, atol=1e-7)
    assert p_ctcvr.le(torch.sigmoid(preds["ctr"]) + 1e-7).all()  # pCTCVR <= pCTR
    task = model.task_parameters()
    assert list(task["ctr"].parameters()) == []
    assert {id(p) for p in task["ctcvr"].parameters()} == {
        id(p) for p in model.cvr_tower.parameters()
    }
    # the ctr loss does not reach the CVR tower; the ctcvr loss reaches the CTR tower (shared)
    ctr_loss = task_loss("binary")(preds["ctr"], torch.ones(32))
    g = torch.autograd.grad(ctr_loss, list(model.cvr_tower.parameters()), allow_unused=True)
    assert all(x is None for x in g)


def test_logit_of_product_is_stable_for_extreme_logits() -> None:
    a = torch.tensor([-200.0, -5.0, 0.0, 5.0, 40.0, 200.0], requires_grad=True)
    b = torch.tensor([3.0, 1.0, 0.0, -2.0, 40.0, 200.0])
    out = logit_of_product(a, b)
    assert torch.isfinite(out).all()
    mid = torch.sigmoid(a[1:4]) * torch.sigmoid(b[1:4])
    torch.testing.assert_close(out[1:4], torch.log(mid / (1 - mid)))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out, torch.ones(6))
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_aitm_transfers_information_and_calibrates() -> None:
    model = build("aitm")
    inputs, _ = batch(model, n=16)
    _, preds = model(inputs)
    # the conversion prediction depends on the click tower (information transfer) ...
    g = torch.autograd.grad(preds["conversion"].sum(), list(model.towers["click"].parameters()))
    assert any(x.abs().sum() > 0 for x in g)
    # ... but the click prediction not on later towers
    g = torch.autograd.grad(
        preds["click"].sum(), list(model.towers["conversion"].parameters()), allow_unused=True
    )
    assert all(x is None for x in g)
    cal = model.calibration_loss(
        {
            "click": torch.tensor([0.0, 0.0]),
            "conversion": torch.tensor([0.0, 10.0]),
            "dwell": torch.zeros(2),
        }
    )
    assert cal.item() == pytest.approx((torch.sigmoid(torch.tensor(10.0)).item() - 0.5) / 2)


def test_mmoe_gates_differ_per_task_and_omoe_shares_one() -> None:
    model = build("mmoe")
    inputs, _ = batch(model, n=8)
    rep, _ = model(inputs)
    assert not torch.allclose(rep[0], rep[1])
    assert set(model.gates) == set(TASKS)
    assert set(build("omoe").gates) == {"all"}


def test_dense_only_model_without_sparse_features() -> None:
    torch.manual_seed(0)
    model = MMoE({}, {"y1": "regression", "y2": "regression"}, dense_dim=5)
    assert model.embedding_parameters() == []
    _, preds = model(RecInputs(dense=torch.randn(4, 5)))
    assert preds["y1"].shape == (4,)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: SharedBottom(FEATURES, {"a": "ranking"}), ValueError, "kind must be one of"),
        (lambda: SharedBottom(FEATURES, []), ValueError, "at least one task"),
        (lambda: SharedBottom(FEATURES, ["a.b"]), ValueError, "without '.'"),
        (lambda: SharedBottom(FEATURES, ["a"], bottom=()), ValueError, "bottom needs at least"),
        (lambda: SharedBottom(FEATURES, ["a"], bottom=64), TypeError, "sequence of layer widths"),  # type: ignore[arg-type]
        (lambda: SharedBottom(FEATURES, ["a"], dropout=1.0), ValueError, "dropout"),
        (lambda: SharedBottom({}, ["a"]), ValueError, "no inputs"),
        (lambda: MMoE(FEATURES, ["a", "b"], num_experts=0), ValueError, "num_experts"),
        (lambda: PLE(FEATURES, ["a", "b"], num_levels=0), ValueError, "num_levels"),
        (lambda: ESMM(FEATURES, ["ctr", "cvr", "x"]), ValueError, "exactly two tasks"),
        (lambda: ESMM(FEATURES, {"ctr": "binary", "ctcvr": "regression"}), ValueError, "binary"),
        (lambda: AITM(FEATURES, ["click"]), ValueError, ">= 2"),
        (lambda: make_model("dcn", FEATURES, ["a"]), ValueError, "unknown model 'dcn'"),
        (lambda: make_model("mmoe", FEATURES, ["a"], bottom=(3,)), TypeError, "model 'mmoe'"),
    ],
)
def test_bad_config_errors(make: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_dense_mismatch_errors() -> None:
    model = build("shared_bottom")
    inputs, _ = batch(model, n=4)
    with pytest.raises(ValueError, match="dense_dim=3 but the inputs have no dense"):
        model(RecInputs(sparse=inputs.sparse, multi_hot=inputs.multi_hot))
    with pytest.raises(ValueError, match=r"expected shape \(N, 3\)"):
        model(RecInputs(sparse=inputs.sparse, multi_hot=inputs.multi_hot, dense=torch.zeros(4, 2)))
    with pytest.raises(TypeError, match="takes RecInputs"):
        model(torch.zeros(4, 3))


def test_metrics_per_kind() -> None:
    binary = task_metrics("binary")
    assert set(binary) == {"auc", "logloss"}
    assert binary["auc"].higher_is_better and not binary["logloss"].higher_is_better
    logits = torch.tensor([-2.0, -1.0, 1.0, 3.0])
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    for m in binary.values():
        m.update(logits, y)
    assert binary["auc"].compute() == pytest.approx(0.75)
    p = torch.sigmoid(logits).double()
    expected = -(y * p.log() + (1 - y) * (1 - p).log()).mean().item()
    assert binary["logloss"].compute() == pytest.approx(expected, rel=1e-6)
    reg = task_metrics("regression")
    assert set(reg) == {"mae", "mse"}
    reg["mae"].update(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0]))
    assert reg["mae"].compute() == pytest.approx(2.0)
    assert task_loss("regression")(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])).item() == 5.0
    with pytest.raises(ValueError, match="kind must be one of"):
        task_metrics("ranking")
    with pytest.raises(ValueError, match=r"metrics \['auc'\] are not available"):
        make_task("dwell", "regression", ["auc"])
    assert list(make_task("click", "binary", ["logloss"]).metrics) == ["logloss"]


class _Loader:
    def __init__(self, inputs: RecInputs, targets: dict[str, torch.Tensor]) -> None:
        self.inputs, self.targets = inputs, targets

    def __iter__(self) -> Iterator[tuple[RecInputs, dict[str, torch.Tensor]]]:
        yield self.inputs, self.targets


def test_model_runs_in_the_trainer_with_its_tasks() -> None:
    model = build("ple")
    inputs, targets = batch(model, n=128)
    trainer = Trainer(
        model,
        make_tasks(model.task_kinds),
        mtlbalance.make("dbmtl", model.shared_parameters(), model.task_parameters()),
        torch.optim.Adam(model.parameters(), lr=1e-2),
        config=TrainerConfig(epochs=2, selection="last", progress=False),
    )
    loader = _Loader(inputs, targets)
    trainer.fit(loader)
    metrics, losses = trainer.evaluate(loader)
    assert set(metrics) == set(TASKS)
    assert 0.5 < metrics["click"]["auc"] <= 1.0
    assert metrics["dwell"]["mae"] > 0 and set(losses) == set(TASKS)


def test_models_and_data_share_one_inputs_class() -> None:
    """mtlrec.models.RecInputs is mtlrec.data.RecInputs; dense=None and an explicit (N, 0)
    matrix are the same thing to a model."""
    data = pytest.importorskip("mtlrec.data")
    assert RecInputs is data.RecInputs
    torch.manual_seed(0)
    model = make_model("mmoe", FEATURES, TASKS, backend="torch", **SMALL["mmoe"])
    inputs = random_inputs(12, FEATURES, multi_hot={"tags": 3}, generator=torch.Generator())
    assert inputs.dense.shape == (12, 0)
    implicit = RecInputs(sparse=inputs.sparse, multi_hot=inputs.multi_hot)
    _, mine_preds = model(inputs)
    _, their_preds = model(implicit)
    for t in TASKS:
        assert torch.equal(mine_preds[t], their_preds[t])


def test_mmoe_on_the_synthetic_log_pipeline() -> None:
    data = pytest.importorskip("mtlrec.data")
    frame = data.synthetic_log(256, seed=0)
    fitted = data.synthetic_log_spec().fit(frame)
    rec = fitted.transform(frame)
    features = {f: (n, 4) for f, n in fitted.cardinalities.items()}
    torch.manual_seed(0)
    model = MMoE(
        features,
        {"click": "binary", "conversion": "binary", "dwell": "regression"},
        dense_dim=rec.inputs.dense.shape[1],
        num_experts=2,
        expert=(8,),
        backend="torch",
    )
    balancer = mtlbalance.make(
        "dbmtl", model.shared_parameters(), model.task_parameters(), engine="representation"
    )
    rep, preds = model(rec.inputs)
    balancer.backward(losses_of(model, preds, rec.labels), representation=rep)
    assert all(p.grad is not None for p in model.embedding_parameters())


@pytest.mark.parametrize("name", ["mmoe", "esmm"])
def test_tables_balanced_approximately(name: str) -> None:
    """Dense shared layers exact, embedding tables through one weighted backward."""
    model = build(name)
    balancer = mtlbalance.make(
        "dbmtl",
        model.dense_shared_parameters(),
        model.task_parameters(),
        tables=model.embedding_parameters(),
    )
    inputs, targets = batch(model)
    rep, preds = model(inputs)
    balancer.backward(losses_of(model, preds, targets), representation=rep)
    for p in model.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
