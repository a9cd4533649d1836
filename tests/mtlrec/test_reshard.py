"""Resharding a sharded checkpoint (``mtlrec.sharded_checkpoint.load_sharded(...,
reshard=True)``): saved by 2 real processes (gloo, CPU, TorchRec DMP with fused tables) and
loaded by 1, saved by 1 and loaded by 2, saved and loaded by 2 with another plan
(table_wise <-> column_wise, a data-parallel table becoming table_wise), with EXACT_ADAGRAD,
EXACT_SGD and EXACT_ROWWISE_ADAGRAD. After the load the WHOLE tables and the WHOLE fused
optimizer state equal what the saving run held (assembled on the save side by the worker's
``snapshot``: ``full_tables`` and the fused state summed into zeros across ranks, never by
the code under test), and so do the dense parameters, the dense optimizer's and the
balancer's state and the RNG states; one step after a 2 -> 1 reshard equals one step of a
1-process run given the saved state by hand. What cannot be resharded is refused.

Planted bugs, each checked once against these tests (in ``_reshard_read``): the saved
shards' offsets one row off (``shard["offsets"][0] + 1``): every load refuses (rows left
uncovered), so every test using the jobs fails; with the coverage check also removed, every
test comparing tables fails (2 -> 1, one step after, 2 -> 2, 1 -> 2). The fused state not
resharded (left as the fresh zeros, coverage check off for it): the Adagrad and row-wise
cases of 2 -> 1, 2 -> 2 and 1 -> 2 and the one-step test fail (SGD has no fused state).
Rank 0's RNG for every rank: 2 -> 2 (both cases) and 1 -> 2 fail."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlrec.models import torchrec_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _identical import assert_identical  # noqa: E402
from _sharded_common import ckpt_job  # noqa: E402

pytestmark = pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")

FEATURES = ("user", "item", "tags", "city")
TABLE_WISE = {f: "table_wise" for f in FEATURES}
BASE: dict[str, Any] = {
    "batch": 16,
    "steps": 2,
    "save_every": 2,
    "lr": 0.01,
    "table_lr": 0.5,
    "sharding": TABLE_WISE,
    "optimizer_args": {"eps": 1e-8},
    "method": "dbmtl",
}
# written-out plans (``explicit_plan``); only ``t_user`` (dim 8) can be split into columns
# of 4; "tw" and "cw" below: table_wise, column_wise
USER_SPLIT = {  # t_user's columns 0-3 on rank 0, 4-7 on rank 1
    "user": ["column_wise", [0, 1]],
    "item": ["table_wise", 1],
    "tags": ["table_wise", 0],
    "city": ["table_wise", 1],
}
USER_WHOLE = {  # every table moves: t_user cw -> tw on rank 1, the others to the other rank
    "user": ["table_wise", 1],
    "item": ["table_wise", 0],
    "tags": ["table_wise", 1],
    "city": ["table_wise", 0],
}
WITH_REPLICATED = {  # t_item data-parallel (its own dense SGD), t_user whole on rank 0
    "user": ["table_wise", 0],
    "item": ["data_parallel"],
    "tags": ["table_wise", 1],
    "city": ["table_wise", 0],
}
# in one process: every table on rank 0, t_user whole or in two column shards
ONE_WHOLE = {f: ["table_wise", 0] for f in FEATURES}
ONE_SPLIT = {**ONE_WHOLE, "user": ["column_wise", [0, 0]]}
# the saving jobs (2 processes, 2 steps, one save after step 2)
SAVES: dict[str, dict[str, Any]] = {
    "adagrad": {"optimizer": "exact_adagrad", "plan": USER_SPLIT},
    "sgd": {"optimizer": "exact_sgd", "plan": WITH_REPLICATED},
    "rowwise": {"optimizer": "exact_row_wise_adagrad", "plan": USER_SPLIT},
}
# the loading jobs (2 processes): which save, the plan they load it into
LOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "adagrad": ("adagrad", USER_WHOLE),  # user cw -> tw, every table to the other rank
    "sgd": ("sgd", USER_SPLIT),  # user tw -> cw, item data-parallel -> table_wise
}


def _job(config: dict[str, Any], folder: Path, name: str) -> dict[str, Any]:
    code, out = ckpt_job(config, folder, name)
    assert code == 0, f"the 2-process job {name} failed"
    result: dict[str, Any] = torch.load(out, weights_only=True)
    return result


def _config(optimizer: str, **changes: Any) -> dict[str, Any]:
    return {**BASE, "optimizer": optimizer, **changes}


class _World1:
    """A one-process gloo group (DMP runs in it: world size 1)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __enter__(self) -> Path:
        import torch.distributed as dist

        self.folder.mkdir(parents=True, exist_ok=True)
        store = self.folder / "store"
        store.unlink(missing_ok=True)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        return self.folder

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        dist.destroy_process_group()


def _train(run: Any, config: dict[str, Any], steps: range) -> None:
    from _dmp_ckpt_worker import train_step

    for step in steps:
        train_step(run, config, step)


def _load(run: Any, ckpt: Path, **kw: Any) -> Any:
    from mtlrec.sharded_checkpoint import load_sharded

    return load_sharded(ckpt, run.dmp, optimizers=run.optimizers, balancer=run.balancer, **kw)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 2-process saves (``saved[name]``: the worker's snapshot at the save, and the
    checkpoint ``ckpt[name]``), a 1-process save (``saved["one"]``), and the 2-process loads
    (``loaded[name]``: their snapshot right after the load — they train no further)."""
    from _dmp_ckpt_worker import build, snapshot

    from mtlrec.sharded_checkpoint import save_sharded

    folder = tmp_path_factory.mktemp("reshard")
    saved, ckpt, loaded = {}, {}, {}
    for name, changes in SAVES.items():
        ckpt[name] = folder / f"ckpt-{name}"
        config = _config(**{**changes, "ckpt": str(ckpt[name])})
        saved[name] = _job(config, folder, f"save-{name}")
        assert saved[name]["first_step"] == 0
    # one process: table_wise (the planner), exact Adagrad, 2 steps
    ckpt["one"] = folder / "ckpt-one"
    with _World1(folder / "world1"):
        config = _config("exact_adagrad")
        run = build(config)
        _train(run, config, range(2))
        save_sharded(
            ckpt["one"],
            run.dmp,
            step=2,
            optimizers=run.optimizers,
            balancer=run.balancer,
            extra={"next_step": 2},
        )
        saved["one"] = snapshot(run)
        run.sync.close()
    for name, (source, plan) in LOADS.items():
        config = _config(SAVES[source]["optimizer"], plan=plan, ckpt=str(ckpt[source]))
        loaded[name] = _job({**config, "resume": True, "reshard": True}, folder, f"load-{name}")
    config = _config("exact_adagrad", plan=USER_SPLIT, ckpt=str(ckpt["one"]))
    loaded["one"] = _job({**config, "resume": True, "reshard": True}, folder, "load-one")
    return {"saved": saved, "ckpt": ckpt, "loaded": loaded}


def _assert_not_trivial(saved: dict[str, Any], optimizer: str) -> None:
    """What the comparisons cover is not trivially equal to a fresh run: the fused state is
    not zero, the ranks' RNG streams differ, DB-MTL has state."""
    for key, sums in saved["fused"].items():
        assert sums.min() >= 0 and sums.max() > 0, key
    if optimizer == "exact_sgd":
        assert saved["fused"] == {}
    else:
        assert len(saved["fused"]) >= 3
    if len(saved["rng"]) == 2:
        assert not torch.equal(saved["rng"][0], saved["rng"][1])
    assert saved["balancer"]


def _assert_loaded(got: dict[str, Any], want: dict[str, Any], optimizers: list[str]) -> None:
    for part in ("tables", "fused", "dense", "balancer"):
        assert_identical(got[part], want[part], part)
    for name in optimizers:
        assert_identical(got["optimizers"][name], want["optimizers"][name], name)


# ---------------------------------------------------------------------- 2 -> 1
@pytest.fixture
def world1(tmp_path: Path) -> Iterator[Path]:
    with _World1(tmp_path) as folder:
        yield folder


@pytest.mark.parametrize("name", sorted(SAVES))
def test_2_to_1_loads_the_whole_saved_state(jobs: dict[str, Any], world1: Path, name: str) -> None:
    """Saved by 2 processes (Adagrad, row-wise Adagrad: t_user's columns split over both
    ranks, the other tables on either; SGD: a data-parallel table, sharded now), loaded into
    1 process whose planner puts every table whole on rank 0 (row-wise Adagrad: t_user in
    the same two column shards, both on rank 0): every table, the fused state, the dense
    parameters, Adam's and DB-MTL's state equal the saving run's, and the RNG is saved rank
    0's."""
    from _dmp_ckpt_worker import build, snapshot

    saved = jobs["saved"][name]
    optimizer = SAVES[name]["optimizer"]
    _assert_not_trivial(saved, optimizer)
    # the planner (world 1: every table whole on rank 0); row-wise Adagrad keeps one sum per
    # row of each column shard, so t_user keeps its column split (two shards on rank 0)
    run = build(_config(optimizer, plan=ONE_SPLIT if name == "rowwise" else None))
    fresh = snapshot(run)
    assert not torch.equal(fresh["tables"]["user"], saved["tables"]["user"])
    resumed = _load(run, jobs["ckpt"][name], reshard=True)
    assert resumed.step == 2 and resumed.extra == {"next_step": 2}
    got = snapshot(run)
    _assert_loaded(got, saved, ["dense"])
    assert torch.equal(got["rng"][0], saved["rng"][0])
    run.sync.close()


def test_one_step_after_2_to_1_equals_the_state_written_by_hand(
    jobs: dict[str, Any], world1: Path
) -> None:
    """One more step after the 2 -> 1 reshard equals one more step of a 1-process run given
    the saved state by hand (the whole tables and Adagrad sums copied into its shards, the
    dense parameters, Adam's and DB-MTL's state, saved rank 0's torch RNG)."""
    from _dmp_ckpt_worker import build, snapshot

    saved = jobs["saved"]["adagrad"]
    config = _config("exact_adagrad")
    resharded = build(config)
    _load(resharded, jobs["ckpt"]["adagrad"], reshard=True)
    _train(resharded, config, range(2, 3))
    got = snapshot(resharded)
    resharded.sync.close()

    by_hand = build(config)
    state = by_hand.dmp.state_dict()
    with torch.no_grad():
        for feature in FEATURES:
            (shard,) = state[f"embedding.ebc.embedding_bags.t_{feature}.weight"].local_shards()
            assert list(shard.metadata.shard_offsets) == [0, 0]
            shard.tensor.copy_(saved["tables"][feature])
        fused = by_hand.dmp.fused_optimizer.state_dict()["state"]
        assert len(saved["fused"]) == 4
        for key_name, whole in saved["fused"].items():
            key, name = key_name.split("/")
            (shard,) = fused[key][name].local_shards()
            shard.tensor.copy_(whole)
        params = dict(by_hand.model.named_parameters())
        for name, value in saved["dense"].items():
            params[name].copy_(value)
    # (copies: Adam keeps its state's step tensors and counts them up in place)
    by_hand.optimizers["dense"].load_state_dict(copy.deepcopy(saved["optimizers"]["dense"]))
    by_hand.balancer.load_state_dict(copy.deepcopy(saved["balancer"]))
    torch.set_rng_state(saved["rng"][0])
    _train(by_hand, config, range(2, 3))
    want = snapshot(by_hand)
    by_hand.sync.close()
    assert (want["tables"]["user"] - saved["tables"]["user"]).abs().max() > 1e-4  # it moved
    for part in ("tables", "fused", "dense", "optimizers", "balancer", "rng"):
        assert_identical(got[part], want[part], part)


# ---------------------------------------------------------------------- 2 -> 2, 1 -> 2
@pytest.mark.parametrize("name", sorted(LOADS))
def test_2_to_2_with_another_plan_loads_the_whole_saved_state(
    jobs: dict[str, Any], name: str
) -> None:
    """Adagrad: t_user from column_wise over both ranks to table_wise on rank 1, every other
    table to the other rank. SGD: t_user from table_wise to column_wise, t_item from
    data-parallel to table_wise (its dense SGD, without state, is not passed any more).
    Every rank takes its own saved RNG state."""
    source = LOADS[name][0]
    saved, got = jobs["saved"][source], jobs["loaded"][name]
    assert got["first_step"] == 2
    _assert_loaded(got, saved, ["dense"])
    assert set(got["optimizers"]) == {"dense"}
    if name == "sgd":
        assert set(saved["optimizers"]) == {"dense", "replicated"}
    assert_identical(got["rng"], saved["rng"], "rng")


def test_1_to_2_loads_the_whole_saved_state(jobs: dict[str, Any]) -> None:
    """Saved by 1 process (every table whole), loaded by 2 with t_user's columns split over
    both ranks: the whole state equals the saved one; rank 0 takes the saved RNG, rank 1
    (beyond the saved world) keeps its own stream (seed 101 in the worker), not rank 0's."""
    saved, got = jobs["saved"]["one"], jobs["loaded"]["one"]
    _assert_not_trivial(saved, "exact_adagrad")
    assert got["first_step"] == 2
    _assert_loaded(got, saved, ["dense"])
    assert torch.equal(got["rng"][0], saved["rng"][0])
    own = torch.Generator().manual_seed(101).get_state()
    assert torch.equal(got["rng"][1], own)
    assert not torch.equal(got["rng"][1], saved["rng"][0])


# ---------------------------------------------------------------------- refusals
def test_without_reshard_the_refusal_names_it(jobs: dict[str, Any], world1: Path) -> None:
    from _dmp_ckpt_worker import build

    from mtlrec.sharded_checkpoint import CheckpointError, save_sharded

    run = build(_config("exact_adagrad"))
    with pytest.raises(
        CheckpointError, match=r"saved by 2 processes, this run has 1.*reshard=True"
    ):
        _load(run, jobs["ckpt"]["adagrad"])
    save_sharded(world1 / "tw", run.dmp, step=0, optimizers=run.optimizers, balancer=run.balancer)
    other = build(_config("exact_adagrad", plan=ONE_SPLIT))
    with pytest.raises(CheckpointError, match=r"another sharding plan.*reshard=True"):
        _load(other, world1 / "tw")
    assert _load(other, world1 / "tw", reshard=True).step == 0
    for r in (run, other):
        r.sync.close()


def test_what_cannot_be_resharded_is_refused(world1: Path) -> None:
    """Each refused on every rank before anything is restored (the model is unchanged)."""
    from _dmp_ckpt_worker import build, snapshot
    from _sharded_common import FEATURES as SIZES

    from mtlrec.distributed import shard_model
    from mtlrec.models import MMoE
    from mtlrec.sharded_checkpoint import CheckpointError, load_sharded, save_sharded

    def save(config: dict[str, Any], folder: str) -> Path:
        run = build(config)
        _train(run, config, range(1))
        save_sharded(
            world1 / folder, run.dmp, step=1, optimizers=run.optimizers, balancer=run.balancer
        )
        run.sync.close()
        return world1 / folder

    def refused(config: dict[str, Any], ckpt: Path, match: str, dense_only: bool = False) -> None:
        run = build(config)
        before = snapshot(run)
        optimizers = {"dense": run.optimizers["dense"]} if dense_only else run.optimizers
        with pytest.raises(CheckpointError, match=match):
            load_sharded(ckpt, run.dmp, optimizers=optimizers, balancer=run.balancer, reshard=True)
        after = snapshot(run)
        for part in ("tables", "fused", "dense", "rng"):
            assert_identical(after[part], before[part], part)
        run.sync.close()

    split, whole = ONE_SPLIT, ONE_WHOLE
    # row-wise Adagrad: one sum per row of each column shard; the column split changes
    rowwise = save(_config("exact_row_wise_adagrad", plan=split), "rowwise")
    refused(
        _config("exact_row_wise_adagrad", plan=whole),
        rowwise,
        r"row-wise optimizer state .* saved for columns 0-3, needed for columns 0-7",
    )
    # another fused optimizer (same plan shape, another state kind or none)
    adagrad = save(_config("exact_adagrad", plan=split), "adagrad")
    refused(
        _config("exact_row_wise_adagrad", plan=whole),
        adagrad,
        r"element-wise state, this run a row-wise one .*another fused optimizer",
    )
    sgd = save(_config("exact_sgd", plan=split), "sgd")
    refused(
        _config("exact_adagrad", plan=whole),
        sgd,
        r"fused state 't_\w+.momentum1' rows .* is covered by 0 of its \d+ values in the "
        r"checkpoint: the checkpoint holds no such state",
    )
    refused(
        _config("exact_sgd", plan=whole),
        adagrad,
        r"fused optimizer state of .*t_user.weight' is \['t_user.momentum1'\] in the file, \[\]",
    )
    # Adagrad on a table that was data-parallel: its sums do not exist
    replicated = save(_config("exact_adagrad", plan={**whole, "item": ["data_parallel"]}), "dp")
    refused(
        _config("exact_adagrad", plan=whole),
        replicated,
        r"t_item.momentum1' .*was data-parallel in the checkpoint",
    )
    # ... and sums that would be dropped: a fused table that becomes data-parallel
    refused(
        _config("exact_adagrad", plan={**whole, "item": ["data_parallel"]}),
        adagrad,
        r"fused optimizer state \['t_item.momentum1'\] of .*t_item.weight', which has none",
        dense_only=True,  # (its dense SGD is new: not in the file)
    )

    # another model: a table of another size, a table missing
    def other_model(features: dict[str, tuple[int, int]], match: str) -> None:
        from _dmp_ckpt_worker import Run
        from _sharded_common import make_balancer

        torch.manual_seed(0)
        model = MMoE(
            features,
            {"click": "binary", "dwell": "regression"},
            dense_dim=3,
            num_experts=2,
            expert=(8,),
            tower=(4,),
            backend="torchrec",
            init_std=0.3,
        )
        sharding = {f: "table_wise" for f in features}
        dmp = shard_model(model, sharding=sharding, optimizer="exact_adagrad", lr=0.5)
        dense = [*model.dense_shared_parameters()]
        towers = [p for m in model.task_parameters().values() for p in m.parameters()]
        balancer = make_balancer({"method": "dbmtl"}, model, tables=[model.table_frontier()])
        run = Run(model, dmp, None, balancer, {"dense": torch.optim.Adam([*dense, *towers])})  # type: ignore[arg-type]
        with pytest.raises(CheckpointError, match=match):
            _load(run, adagrad, reshard=True)

    other_model(
        {**SIZES, "user": (48, 8)},
        r"model\['embedding.ebc.embedding_bags.t_user.weight'\]: this run has sharded \[48, 8\]"
        r".*the file sharded \[40, 8\]",
    )
    other_model(
        {f: s for f, s in SIZES.items() if f != "city"},
        r"only in the file \['embedding.ebc.embedding_bags.t_city.weight'\]",
    )


def test_sharded_run_load_reshards(world1: Path) -> None:
    """``ShardedRun.load`` (what mtlbench's sharded runs resume through) reshards: saved with
    t_user in two column shards, loaded into the planner's whole tables, every table and
    the Adagrad sums come back; ``extra`` is handed back."""
    from _dmp_ckpt_worker import build, snapshot

    from mtlrec.sharded_run import ShardedRun

    config = _config("exact_adagrad", plan=ONE_SPLIT)
    first = build(config)
    _train(first, config, range(2))
    ShardedRun(first.model, first.dmp).save(
        world1 / "last",
        step=2,
        optimizer=first.optimizers["dense"],
        balancer=first.balancer,
        extra={"epoch": 1},
    )
    want = snapshot(first)
    first.sync.close()
    again = build(_config("exact_adagrad"))
    assert (
        len(again.dmp.state_dict()["embedding.ebc.embedding_bags.t_user.weight"].local_shards())
        == 1
    )  # the planner's plan: t_user whole, not in two column shards
    extra = ShardedRun(again.model, again.dmp).load(
        world1 / "last", optimizer=again.optimizers["dense"], balancer=again.balancer
    )
    assert extra == {"epoch": 1}
    got = snapshot(again)
    again.sync.close()
    for part in ("tables", "fused", "dense", "balancer", "rng"):
        assert_identical(got[part], want[part], part)
    assert_identical(got["optimizers"]["dense"], want["optimizers"]["dense"], "dense")


def test_a_sharded_table_becoming_data_parallel_is_gathered_whole(world1: Path) -> None:
    """EXACT_SGD (no fused state): t_user saved in two column shards and t_item table_wise,
    loaded with t_item data-parallel (a whole replicated tensor, filled from the saved shard)
    and t_user whole; the dense SGD of the new data-parallel table is fresh (the file has
    none), so only the dense Adam is passed."""
    from _dmp_ckpt_worker import build, snapshot

    from mtlrec.sharded_checkpoint import load_sharded, save_sharded

    config = _config("exact_sgd", plan=ONE_SPLIT)
    first = build(config)
    _train(first, config, range(2))
    save_sharded(
        world1 / "ckpt", first.dmp, step=2, optimizers=first.optimizers, balancer=first.balancer
    )
    want = snapshot(first)
    first.sync.close()
    again = build(_config("exact_sgd", plan={**ONE_WHOLE, "item": ["data_parallel"]}))
    assert set(again.optimizers) == {"dense", "replicated"}
    before = snapshot(again)["tables"]["item"]
    load_sharded(
        world1 / "ckpt",
        again.dmp,
        optimizers={"dense": again.optimizers["dense"]},
        balancer=again.balancer,
        reshard=True,
    )
    got = snapshot(again)
    again.sync.close()
    assert not torch.equal(before, want["tables"]["item"])
    for part in ("tables", "dense", "balancer"):
        assert_identical(got[part], want[part], part)
    assert got["fused"] == {} and want["fused"] == {}
