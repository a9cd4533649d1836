"""Sharded tables: TorchRec DistributedModelParallel (2 real processes, gloo, CPU) against
unsharded single-process training on the same global batch; the split backward's contract
(one backward into the tables per step) in one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtlrec.models import torchrec_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _sharded_common import (  # noqa: E402
    build_model,
    compare,
    global_batch,
    make_balancer,
    reference,
    run_two,
    start,
    task_losses,
)

from mtlrec.models import MMoE  # noqa: E402

pytestmark = pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")

BASE = {"batch": 16, "steps": 4, "lr": 0.05}
# DB-MTL scales the tables' gradient by c_t = α / ‖ĝ_t‖: a larger step makes them move by
# far more than the tolerance in 4 steps
TABLE_LR = {"ew": 0.05, "dbmtl": 4.0}
TABLE_WISE = {
    "user": "table_wise",
    "item": "table_wise",
    "tags": "table_wise",
    "city": "table_wise",
}


@pytest.mark.parametrize("method", ["ew", "dbmtl"])
def test_table_wise_fused_sgd_equals_unsharded(method: str, tmp_path: Path) -> None:
    config = {
        **BASE,
        "method": method,
        "table_lr": TABLE_LR[method],
        "sharding": TABLE_WISE,
        "optimizer": "exact_sgd",
    }
    compare(run_two(config, tmp_path), reference(config), start(config))


def test_table_wise_fused_adagrad_dbmtl_unequal_shares_equals_unsharded(tmp_path: Path) -> None:
    """Fused EXACT_ADAGRAD against torch.optim.Adagrad; the ranks hold 6 and 10 of the 16
    rows (global_mean_losses weighs each rank's mean by its count)."""
    config = {
        "split": [6, 10],
        **BASE,
        "method": "dbmtl",
        "table_lr": 0.5,
        "sharding": TABLE_WISE,
        "optimizer": "exact_adagrad",
        "optimizer_args": {"eps": 1e-8},
    }
    compare(run_two(config, tmp_path), reference(config), start(config))


def test_column_wise_and_data_parallel_dbmtl_equal_unsharded(tmp_path: Path) -> None:
    sharding = {
        "user": "column_wise",
        "item": "data_parallel",
        "tags": "table_wise",
        "city": "data_parallel",
    }
    config = {
        **BASE,
        "method": "dbmtl",
        "table_lr": TABLE_LR["dbmtl"],
        "sharding": sharding,
        "optimizer": "exact_sgd",
    }
    got = run_two(config, tmp_path)
    assert got["replicated"] >= 1  # the data-parallel tables: replicated, a dense optimizer
    compare(got, reference(config), start(config))


# ---------------------------------------------------------------------- one process
def _dbmtl_grads(split: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One DB-MTL step on the test model: the tables' gradients, and how many times autograd
    computed each table's gradient (a hook per table)."""
    config = {**BASE, "method": "dbmtl"}
    torch.manual_seed(0)
    model = build_model(config)
    tables = model.embedding.tables()
    calls = [0] * len(tables)
    for i, w in enumerate(tables.values()):

        def count(g: torch.Tensor, i: int = i) -> None:
            calls[i] += 1

        w.register_hook(count)
    balancer = make_balancer(
        config, model, tables=[model.table_frontier()] if split else list(tables.values())
    )
    inputs, targets = global_batch(config, 0)
    _, preds = model(inputs)
    balancer.backward(task_losses(config, preds, targets))
    if split:
        model.backward_tables()
    grads = {}
    for f, w in tables.items():
        assert w.grad is not None, f
        grads[f] = w.grad.clone()
    return grads, calls


def test_split_backward_equals_the_balancers_tables_and_runs_once() -> None:
    """The split backward (frontier + backward_tables) gives each table the gradient the
    Balancer's own tables= path gives (one backward of Σ c_t ℓ̃_t through the lookup), and
    autograd reaches each table exactly once in the step (DB-MTL takes T = 2 per-task
    backwards for the dense part: they must not reach the tables)."""
    want, calls_direct = _dbmtl_grads(split=False)
    got, calls_split = _dbmtl_grads(split=True)
    assert calls_direct == [1, 1, 1, 1]
    assert calls_split == [1, 1, 1, 1]
    for f, g in want.items():
        assert g.abs().max() > 0, f
        torch.testing.assert_close(got[f], g, rtol=1e-6, atol=1e-7, msg=f)


def test_split_backward_contract_errors() -> None:
    config = {**BASE, "method": "ew"}
    torch.manual_seed(0)
    model = build_model(config)
    with pytest.raises(RuntimeError, match="table_frontier"):
        model.backward_tables()
    frontier = model.table_frontier()
    assert frontier.shape == (0, model.embedding.output_dim)
    balancer = make_balancer(config, model, tables=[frontier])
    inputs, targets = global_batch(config, 0)
    with pytest.raises(RuntimeError, match="no lookup is waiting"):
        model.backward_tables()
    _, preds = model(inputs)
    with pytest.raises(RuntimeError, match="has no gradient"):
        model.backward_tables()
    with pytest.raises(RuntimeError, match="never got their backward"):
        model(inputs)
    balancer.backward(task_losses(config, preds, targets))
    model.backward_tables()
    assert frontier.shape == (0, model.embedding.output_dim) and frontier.grad is None
    with pytest.raises(RuntimeError, match="already called"):
        model.backward_tables()
    with torch.no_grad():  # evaluation: nothing waits for a backward
        model(inputs)
        model(inputs)
    _, preds = model(inputs)  # and training goes on
    balancer.backward(task_losses(config, preds, targets))
    model.backward_tables()


def test_meta_tables_build_nothing_and_need_torchrec() -> None:
    from mtlrec.models import SparseEmbeddings, meta_tables

    with meta_tables():
        emb = SparseEmbeddings({"user": (10**9, 64)}, "torchrec")  # 256 GB if it were real
        with pytest.raises(ValueError, match="cannot be sharded"):
            SparseEmbeddings({"user": (10, 4)}, "torch")
    assert all(w.is_meta for w in emb.tables().values())
    assert not SparseEmbeddings({"user": (10, 4)}, "torchrec").on_meta


def test_plan_errors_name_the_table(tmp_path: Path) -> None:
    import torch.distributed as dist

    from mtlrec.distributed import plan_sharding, shard_model

    config = {**BASE, "method": "ew"}
    model = build_model(config)
    with pytest.raises(RuntimeError, match="init_process_group"):
        plan_sharding(model)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with pytest.raises(ValueError, match=r"'price'.*\['user', 'item', 'tags', 'city'\]"):
            plan_sharding(model, sharding={"price": "table_wise"})
        with pytest.raises(ValueError, match=r"'t_user'.*'by_row'"):
            plan_sharding(model, sharding={"t_user": "by_row"})
        with pytest.raises(ValueError, match=r"sharding\['user'\] = 'row_wise'.*on CPU"):
            plan_sharding(model, sharding={"user": "row_wise"})
        with pytest.raises(ValueError, match="not a fused optimizer"):
            shard_model(model, optimizer="sgd")
        odd = MMoE({"user": (10, 6)}, ["a"], backend="torchrec")
        with pytest.raises(ValueError, match=r"\{'user': 6\}.*multiples of 4"):
            plan_sharding(odd)
    finally:
        dist.destroy_process_group()
