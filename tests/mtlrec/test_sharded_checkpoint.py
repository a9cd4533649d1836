"""Checkpoint and resume of a sharded run (mtlrec.sharded_checkpoint): 2 real processes
(gloo, CPU, TorchRec DMP with fused EXACT_ADAGRAD tables) killed with SIGKILL and relaunched
end bit for bit where an uninterrupted run ends; in one process (world size 1): the
optimizer state comes back, and a different world size or plan, a damaged or foreign file,
or non-plain ``extra`` values are refused with errors saying what to do."""

from __future__ import annotations

import shutil
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

TABLE_WISE = {f: "table_wise" for f in ("user", "item", "tags", "city")}
BASE: dict[str, Any] = {
    "batch": 16,
    "steps": 5,
    "lr": 0.01,
    "table_lr": 0.5,
    "sharding": TABLE_WISE,
    "optimizer": "exact_adagrad",
    "optimizer_args": {"eps": 1e-8},
    "save_every": 2,
}
MIXED_PLAN = {  # written out (the planner keeps an 8-column table whole)
    "user": ["column_wise", [0, 1]],  # columns 0-3 on rank 0, 4-7 on rank 1
    "item": ["data_parallel"],  # replicated, its own (dense) SGD
    "tags": ["table_wise", 0],
    "city": ["table_wise", 1],
}
# the checkpoints fall after steps 2 and 4; each kill leaves step 2 as the last complete one
CASES: dict[str, dict[str, Any]] = {
    "ew": {"method": "ew", "kill": {"rank": 1, "after_step": 3}},  # between two saves
    "dbmtl": {  # mid-save: both rank files written, not the manifest
        "method": "dbmtl",
        "kill": {"rank": 0, "before_manifest": 4},
    },
    "dbmtl-mixed": {
        "method": "dbmtl",
        "plan": MIXED_PLAN,
        "kill": {"rank": 0, "after_step": 3},
    },
}


@pytest.fixture(scope="module", params=sorted(CASES))
def killed_and_resumed(request: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted 2-process run; the same run with one rank SIGKILLed; the relaunch
    resuming from the last complete checkpoint."""
    from mtltrain.checkpoint import load_file

    case = request.param
    folder = tmp_path_factory.mktemp(f"resume-{case}")
    config = {**BASE, **{k: v for k, v in CASES[case].items() if k != "kill"}}
    code, out = ckpt_job({**config, "ckpt": str(folder / "full")}, folder, "full")
    assert code == 0, "the uninterrupted run failed"
    full = torch.load(out, weights_only=True)
    cut_ckpt = folder / "cut"
    cut_config = {**config, "ckpt": str(cut_ckpt), "resume": True}
    code, out = ckpt_job({**cut_config, "kill": CASES[case]["kill"]}, folder, "cut")
    assert code != 0 and not out.exists(), "the killed run did not fail"
    after_kill = {
        "manifest_step": load_file(cut_ckpt / "manifest.pt")["step"],
        "saves": sorted(
            (p.name.split("-")[1], sorted(f.name for f in p.iterdir()))
            for p in cut_ckpt.iterdir()
            if p.is_dir()
        ),
    }
    code, out = ckpt_job(cut_config, folder, "resumed")
    assert code == 0, "the resumed run failed"
    return {
        "case": case,
        "config": config,
        "full": full,
        "resumed": torch.load(out, weights_only=True),
        "after_kill": after_kill,
        "ckpt": cut_ckpt,
    }


def test_a_2_process_run_killed_and_resumed_continues_identically(
    killed_and_resumed: dict[str, Any],
) -> None:
    """Bit for bit (torch.equal, CPU kernels are deterministic here): the tables, the fused
    Adagrad state, the dense parameters, the dense Adam's and the balancer's state, and every
    rank's RNG state."""
    run = killed_and_resumed
    full, resumed = run["full"], run["resumed"]
    assert full["first_step"] == 0 and resumed["first_step"] == 2  # resumed after step 2
    # what the comparison covers is not trivially equal: the steps after the resume moved
    # every table, Adagrad's sums of squared gradients are not zero, the ranks' RNG streams
    # differ
    for feature, table in full["tables"].items():
        moved = (table - resumed["tables_at_resume"][feature]).abs().max()
        assert moved > 1e-4, (feature, moved)  # (the data-parallel SGD table: ~1e-3)
    fused_tables = [
        f for f in TABLE_WISE if (run["config"].get("plan") or {}).get(f) != ["data_parallel"]
    ]
    assert set(full["fused"]) == {
        f"embedding.ebc.embedding_bags.t_{f}.weight/t_{f}.momentum1" for f in fused_tables
    }
    for key, sums in full["fused"].items():
        assert sums.min() >= 0 and sums.max() > 0, key
    assert not torch.equal(full["rng"][0], full["rng"][1])
    if run["config"]["method"] == "dbmtl":
        assert full["balancer"], "DB-MTL has state (its moving averages)"
    for part in ("tables", "fused", "dense", "optimizers", "balancer", "rng"):
        assert_identical(resumed[part], full[part], part)


def test_a_kill_leaves_the_previous_complete_checkpoint(
    killed_and_resumed: dict[str, Any],
) -> None:
    """The kill came after the save of step 2: the manifest still names it. Killed inside the
    save of step 4 (rank 0, after both rank files, before the manifest), the new folder is
    there but not named."""
    after = killed_and_resumed["after_kill"]
    assert after["manifest_step"] == 2
    files = ["rank0-of-2.pt", "rank1-of-2.pt"]
    if "before_manifest" in CASES[killed_and_resumed["case"]]["kill"]:
        assert after["saves"] == [("00000002", files), ("00000004", files)]
    else:
        assert after["saves"] == [("00000002", files)]
    # the resumed run's saves replaced both: one folder, of its last save (step 4)
    saves = [p.name for p in killed_and_resumed["ckpt"].iterdir() if p.is_dir()]
    assert len(saves) == 1 and saves[0].startswith("save-00000004-")


# ---------------------------------------------------------------------- one process
@pytest.fixture
def world1(tmp_path: Path) -> Iterator[Path]:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield tmp_path
    finally:
        dist.destroy_process_group()


def _config(method: str = "dbmtl", **changes: Any) -> dict[str, Any]:
    return {**BASE, "method": method, **changes}


def _train(run: Any, config: dict[str, Any], steps: range) -> None:
    from _dmp_ckpt_worker import train_step

    for step in steps:
        train_step(run, config, step)


def _save(run: Any, ckpt: Path, step: int, **kw: Any) -> Path:
    from mtlrec.sharded_checkpoint import save_sharded

    return save_sharded(
        ckpt, run.dmp, step=step, optimizers=run.optimizers, balancer=run.balancer, **kw
    )


def _load(run: Any, ckpt: Path) -> Any:
    from mtlrec.sharded_checkpoint import load_sharded

    return load_sharded(ckpt, run.dmp, optimizers=run.optimizers, balancer=run.balancer)


def test_resume_restores_the_fused_optimizer_state(world1: Path) -> None:
    """Adagrad's sums of squared gradients are restored: after loading they equal the saved
    run's (and are far from the fresh zeros), and two more steps end bit for bit where the
    saved run's two more steps end. Zeroing the sums after the load (as a loader that skips
    the optimizer state leaves them) changes the tables: the comparison would notice.

    The fused kernels' step counters (fbgemm's ``iter``: fused Adam's bias correction reads
    it; TorchRec's optimizer state dict leaves it out) come back too. The CPU kernels do not
    advance it (fused Adam is GPU-only), so it is set to 5 here before the save."""
    from _dmp_ckpt_worker import build, snapshot

    from mtlrec.sharded_checkpoint import _fused_kernels

    config = _config()
    ckpt = world1 / "ckpt"
    first = build(config)
    _train(first, config, range(2))
    kernels = _fused_kernels(first.dmp.fused_optimizer)
    assert kernels, "no fused kernel found: the step counters would not be saved"
    for kernel in kernels.values():
        kernel.set_optimizer_step(5)
    saved = snapshot(first)
    _save(first, ckpt, 2, extra={"epoch": 0, "position": [2, "rows"]})
    _train(first, config, range(2, 4))
    want = snapshot(first)

    again = build(config)
    fresh = snapshot(again)
    assert all(s.abs().max() == 0 for s in fresh["fused"].values())
    assert [int(k.iter) for k in _fused_kernels(again.dmp.fused_optimizer).values()] == [0]
    resumed = _load(again, ckpt)
    assert resumed.step == 2 and resumed.extra == {"epoch": 0, "position": [2, "rows"]}
    assert [int(k.iter) for k in _fused_kernels(again.dmp.fused_optimizer).values()] == [5]
    loaded = snapshot(again)
    for key, sums in saved["fused"].items():
        assert sums.max() > 0, key
        assert torch.equal(loaded["fused"][key], sums), key
    _train(again, config, range(2, 4))
    got = snapshot(again)
    for part in ("tables", "fused", "dense", "optimizers", "balancer", "rng"):
        assert_identical(got[part], want[part], part)

    skipped = build(config)
    _load(skipped, ckpt)
    for named in skipped.dmp.fused_optimizer.state_dict()["state"].values():
        for value in named.values():
            for shard in value.local_shards():
                shard.tensor.zero_()
    _train(skipped, config, range(2, 4))
    wrong = snapshot(skipped)
    assert max((wrong["tables"][f] - want["tables"][f]).abs().max() for f in TABLE_WISE) > 1e-3


def test_another_world_size_is_refused(killed_and_resumed: dict[str, Any], world1: Path) -> None:
    from _dmp_ckpt_worker import build

    from mtlrec.sharded_checkpoint import CheckpointError

    ckpt = world1 / "from-2"
    shutil.copytree(killed_and_resumed["ckpt"], ckpt)
    run = build(_config(killed_and_resumed["config"]["method"]))  # (a plan for 1 process)
    with pytest.raises(CheckpointError, match=r"saved by 2 processes, this run has 1.*--nproc 2"):
        _load(run, ckpt)


def test_another_plan_is_refused_and_the_saved_plan_resumes(world1: Path) -> None:
    from _dmp_ckpt_worker import build, snapshot

    from mtlrec.sharded_checkpoint import CheckpointError, saved_plan

    config = _config()
    ckpt = world1 / "ckpt"
    first = build(config)
    _train(first, config, range(1))
    _save(first, ckpt, 1)
    want = snapshot(first)
    other = build(_config(sharding={**TABLE_WISE, "city": "data_parallel"}))
    with pytest.raises(CheckpointError, match=r"another sharding plan") as err:
        _load(other, ckpt)
    message = str(err.value)
    assert "embedding.ebc.t_city: checkpoint table_wise (fused)" in message
    assert "this run data_parallel (dense)" in message
    assert "t_user" not in message  # only what differs
    assert "saved_plan(directory)" in message
    # the saved plan, given to shard_model, shards as the saved run did
    same = build(_config(sharding={**TABLE_WISE, "city": "data_parallel"}), plan=saved_plan(ckpt))
    assert _load(same, ckpt).step == 1
    got = snapshot(same)
    for part in ("tables", "fused", "dense"):
        assert_identical(got[part], want[part], part)


def test_damaged_or_foreign_rank_file_is_refused(world1: Path) -> None:
    from _dmp_ckpt_worker import build

    from mtlrec.sharded_checkpoint import CheckpointError

    config = _config("ew")
    run = build(config)
    _train(run, config, range(1))
    first = _save(run, world1 / "a", 1)
    other = _save(run, world1 / "b", 1)  # the same state, another save
    shutil.copy(other / "rank0-of-1.pt", first / "rank0-of-1.pt")
    with pytest.raises(CheckpointError, match=r"rank0-of-1.pt is not the file the manifest"):
        _load(run, world1 / "a")
    target = other / "rank0-of-1.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the tensors
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"rank0-of-1.pt is damaged: its checksum"):
        _load(run, world1 / "b")


def test_save_and_load_errors_say_what_to_do(world1: Path) -> None:
    from _dmp_ckpt_worker import build

    from mtlrec.sharded_checkpoint import CheckpointError, load_sharded, save_sharded

    config = _config("ew")
    run = build(config)
    with pytest.raises(TypeError, match=r"extra\['where'\] is a \w*Path.*plain Python values"):
        _save(run, world1 / "c", 0, extra={"where": Path("x")})
    with pytest.raises(ValueError, match="step must be"):
        _save(run, world1 / "c", -1)
    with pytest.raises(CheckpointError, match=r"cannot resume: every rank: no sharded checkpoint"):
        _load(run, world1 / "c")
    _save(run, world1 / "c", 0)
    with pytest.raises(CheckpointError, match=r"the file holds \['dense'\], this call passes \[\]"):
        load_sharded(world1 / "c", run.dmp, balancer=run.balancer)
    with pytest.raises(CheckpointError, match="pass balancer= exactly when the save did"):
        load_sharded(world1 / "c", run.dmp, optimizers=run.optimizers)
    with pytest.raises(TypeError, match="no sharding plan"):
        save_sharded(world1 / "d", run.model, step=0)


def test_another_table_optimizer_is_refused(world1: Path) -> None:
    """Same plan, another fused optimizer (row-wise Adagrad keeps one sum per row): its state
    does not fit, and the error names the table's state and both shapes."""
    from _dmp_ckpt_worker import build

    from mtlrec.sharded_checkpoint import CheckpointError, has_sharded_checkpoint

    config = _config("ew")
    run = build(config)
    _train(run, config, range(1))
    assert not has_sharded_checkpoint(world1 / "ckpt")
    _save(run, world1 / "ckpt", 1)
    assert has_sharded_checkpoint(world1 / "ckpt")
    other = build(_config("ew", optimizer="exact_row_wise_adagrad"))
    with pytest.raises(CheckpointError, match="does not fit this run") as err:
        _load(other, world1 / "ckpt")
    assert (
        "fused optimizer['state']['embedding.ebc.embedding_bags.t_user.weight']"
        "['t_user.momentum1']: this run has sharded [40], local shards (offsets, sizes) "
        "[([0], [40])], the file sharded [40, 8], local shards (offsets, sizes) "
        "[([0, 0], [40, 8])]"
    ) in str(err.value)


def test_a_failed_save_raises_and_keeps_the_previous_checkpoint(
    world1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank file or the manifest that cannot be written (full disk, ...): the save raises
    OSError naming the folder, and the previous checkpoint is still the one loaded."""
    from _dmp_ckpt_worker import build

    import mtlrec.sharded_checkpoint as sc

    config = _config("ew")
    run = build(config)
    ckpt = world1 / "ckpt"
    _save(run, ckpt, 1, extra={"n": 1})
    real = sc.atomic_save
    for failing in ("rank0-of-1.pt", sc.MANIFEST):

        def full_disk(obj: Any, path: Any, failing: str = failing) -> Any:
            if Path(path).name == failing:
                raise OSError(28, f"could not write checkpoint {path}: No space left on device")
            return real(obj, path)

        monkeypatch.setattr(sc, "atomic_save", full_disk)
        with pytest.raises(OSError, match=r"save-00000002-.*previous checkpoint .* unchanged"):
            _save(run, ckpt, 2, extra={"n": 2})
        monkeypatch.setattr(sc, "atomic_save", real)
        resumed = _load(run, ckpt)
        assert (resumed.step, resumed.extra) == (1, {"n": 1})
