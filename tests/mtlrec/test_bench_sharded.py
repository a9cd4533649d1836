"""Sharded tables through the Trainer and ``mtlbench run SPEC --nproc 2`` (``[model] tables =
"sharded"``): 2 real processes (gloo, CPU) train what one process trains with the tables
unsharded (``tables = "approx"``), every dense parameter and every table; a run killed
(SIGKILL) after its first epoch and resumed from its per-rank checkpoint ends bit for bit
where an uninterrupted run ends. In one process: the table frontier takes batches of any
size (an epoch's short last batch), a skipped step leaves the tables alone, and the spec's
sharded options are checked."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlrec.models import torchrec_available
from mtltrain.checkpoint import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench_common import (  # noqa: E402
    model_and_train,
    mtlbench_run,
    plain_state,
    sharded_state,
    state_key,
)
from _sharded_common import build_model, global_batch, make_balancer, task_losses  # noqa: E402

pytestmark = pytest.mark.skipif(not torchrec_available(), reason="torchrec is not installed")

RUN = "sharded-log/dbmtl-seed0"

# 3167 rows: 2217 for training in batches of 277, 8 full ones split 138 / 139 across two
# ranks (uneven shards) and a last one of 1 row, fewer than the ranks (every rank takes it
# whole); 475 validation and 475 test rows in evaluation batches of 474, the last of 1 row
STEPS_PER_EPOCH = 9
SPEC = """
name = "sharded-log"
problem = "mtlrec.bench:synthetic_log_problem"
methods = ["dbmtl"]
seeds = 1

[data]
n = 3167
seed = 0

{model_and_train}
# the auto engine picks the fastest engine by timing, which two runs may do differently (a
# difference in the last bits); the resume test compares two runs bit for bit
[method_options.dbmtl]
engine = "loop"

[tasks.click]
auc = "higher"

[tasks.conversion]
auc = "higher"

[tasks.dwell]
mae = "lower"
"""
SHARDING = '{ t_C1 = "table_wise", C2 = "column_wise", C3 = "data_parallel" }'


def _spec(folder: Path, tables: str, extra: str = "") -> Path:
    path = folder / f"{tables}.toml"
    sections = model_and_train(tables, SHARDING, batch=277, eval_batch=474)
    if extra:  # more [model] options
        sections = sections.replace("num_experts", f"{extra}\nnum_experts", 1)
    path.write_text(SPEC.format(model_and_train=sections))
    return path


def _kill_after_first_checkpoint(out: Path, spec: Path) -> None:
    """``mtlbench run SPEC --nproc 2`` SIGKILLed (the launcher and both ranks at once) as
    soon as its first checkpoint (after epoch 1 of 2) is complete, the second epoch under
    way."""
    cmd = [sys.executable, "-m", "mtlbench.cli", "run", str(spec), "--no-tracking", "--quiet"]
    cmd += ["--spool", str(out / "spool"), "--out", str(out), "--device", "cpu", "--nproc", "2"]
    manifest = out / "checkpoints" / RUN / "last" / "manifest.pt"
    proc = subprocess.Popen(cmd, cwd=out, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not manifest.is_file():
            assert proc.poll() is None, f"the run exited ({proc.returncode}) before a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert load_file(manifest)["step"] < 2 * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("one", "two", "resumed", "on_shards")}
    mtlbench_run(dirs["one"], _spec(dirs["one"], "approx"))
    mtlbench_run(dirs["two"], _spec(dirs["two"], "sharded"), "--nproc", "2")
    spec = _spec(dirs["resumed"], "sharded")
    _kill_after_first_checkpoint(dirs["resumed"], spec)
    mtlbench_run(dirs["resumed"], spec, "--nproc", "2", "--resume")
    on_shards = _spec(dirs["on_shards"], "sharded", 'table_init = "shards"')
    mtlbench_run(dirs["on_shards"], on_shards, "--nproc", "2")
    return dirs


def test_two_ranks_with_sharded_tables_train_what_one_process_trains(
    runs: dict[str, Path],
) -> None:
    want = plain_state(runs["one"] / "checkpoints" / RUN / "last.pt")
    got = sharded_state(runs["two"] / "checkpoints" / RUN / "last")
    assert sorted(got) == sorted(want)
    tables = [k for k in want if ".embedding_bags." in k]
    assert len(tables) == 8  # the sharded, column-wise and replicated tables among them
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)
    # and every table did train: it moved away from where both runs started
    from mtlrec.bench import synthetic_log_problem
    from mtltrain.trainer import seed_everything

    problem = synthetic_log_problem(
        data={"n": 3167, "seed": 0},
        model={"arch": "mmoe", "embedding_dim": 8, "num_experts": 2, "expert": [16], "tower": [8]},
    )
    seed_everything(0)  # as the runner does before make_model
    start = {state_key(k): v for k, v in problem.make_model().state_dict().items()}
    for k in tables:
        assert (want[k] - start[k]).abs().max() > 1e-4, k


def test_the_reports_agree(runs: dict[str, Path]) -> None:
    """Evaluation on every rank, each its slice of every batch, predictions gathered: the
    sharded run reports the one-process run's metrics."""

    def row(out: Path) -> str:
        report = (out / "reports" / "sharded-log" / "report.md").read_text()
        return next(line for line in report.splitlines() if line.startswith("| dbmtl |"))

    assert row(runs["two"]) == row(runs["one"])


def test_a_killed_and_resumed_sharded_run_ends_where_an_uninterrupted_one_ends(
    runs: dict[str, Path],
) -> None:
    want = sharded_state(runs["two"] / "checkpoints" / RUN / "last")
    got = sharded_state(runs["resumed"] / "checkpoints" / RUN / "last")
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    best = runs["two"] / "checkpoints" / RUN / "best_model" / "manifest.pt"
    assert best.is_file()  # the selected model, saved per rank


def test_an_existing_sharded_checkpoint_needs_resume_or_restart(runs: dict[str, Path]) -> None:
    spec = runs["two"] / "sharded.toml"
    done = mtlbench_run(runs["two"], spec, "--nproc", "2", check=False)
    assert done.returncode != 0
    assert "--resume" in done.stderr and "last" in done.stderr


def test_sharded_tables_need_a_distributed_run(tmp_path: Path) -> None:
    done = mtlbench_run(tmp_path, _spec(tmp_path, "sharded"), check=False)
    assert done.returncode == 2
    assert "--nproc" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"tables": "sharded", "table_lr": -1.0}, "table_lr must be a positive number"),
        ({"tables": "sharded", "table_optimizer": "lamb"}, "not a fused optimizer"),
        ({"tables": "sharded", "sharding": {"C1": "by_hash"}}, "sharding must map"),
        ({"tables": "approx", "table_lr": 0.1}, "apply to sharded tables only"),
    ],
)
def test_bad_sharded_options_are_named(option: dict[str, Any], match: str) -> None:
    from mtlrec.bench import synthetic_log_problem

    model = {"arch": "mmoe", "embedding_dim": 8, "num_experts": 2, **option}
    with pytest.raises(ValueError, match=match):
        synthetic_log_problem(data={"n": 400}, model=model)


# ---------------------------------------------------------------------- one process
BASE = {"method": "dbmtl", "batch": 12}


def test_the_frontier_takes_batches_of_any_size() -> None:
    """A training loop keeps the previous step's graph alive (its losses) while the next
    forward runs; a batch of another size must still balance (it failed with "CatBackward0
    returned an invalid gradient" before): each step's table gradients equal the Balancer's
    own tables= path on the same batch."""
    torch.manual_seed(0)
    split = build_model(BASE)
    direct = copy.deepcopy(split)
    frontier = split.table_frontier()
    b_split = make_balancer(BASE, split, tables=[frontier])
    b_direct = make_balancer(BASE, direct, tables=direct.embedding_parameters())
    kept: list[Any] = []
    for step, rows in enumerate([12, 12, 5, 12, 7]):
        inputs, targets = global_batch(BASE, step)
        idx = torch.arange(rows)
        inputs, targets = inputs.index(idx), {t: v[:rows] for t, v in targets.items()}
        grads = []
        for model, balancer in ((split, b_split), (direct, b_direct)):
            for p in model.parameters():
                p.grad = None
            _, preds = model(inputs)
            losses = task_losses(BASE, preds, targets)
            balancer.backward(losses)
            if model is split:
                model.backward_tables()
            kept.append(losses)  # the graph stays referenced, as in a loop
            grads.append({f: w.grad.clone() for f, w in model.embedding.tables().items()})
        for f, g in grads[1].items():
            assert g.abs().max() > 0, (step, f)
            torch.testing.assert_close(grads[0][f], g, rtol=1e-6, atol=1e-7, msg=f"{step} {f}")


def test_a_skipped_step_changes_no_table() -> None:
    torch.manual_seed(0)
    model = build_model(BASE)
    frontier = model.table_frontier()
    balancer = make_balancer(BASE, model, tables=[frontier])
    before = {f: w.detach().clone() for f, w in model.embedding.tables().items()}
    inputs, targets = global_batch(BASE, 0)
    _, preds = model(inputs)
    balancer.backward(task_losses(BASE, preds, targets))
    model.skip_tables()  # the step was skipped
    for f, w in model.embedding.tables().items():
        assert w.grad is None, f
        assert torch.equal(w, before[f]), f
    assert frontier.shape == (0, model.embedding.output_dim) and frontier.grad is None
    with pytest.raises(RuntimeError, match="no lookup is waiting"):
        model.backward_tables()
    _, preds = model(inputs)  # the next forward is allowed
    balancer.backward(task_losses(BASE, preds, targets))
    model.backward_tables()
    assert all(w.grad is not None for w in model.embedding.tables().values())


def test_tables_drawn_on_their_shards(runs: dict[str, Path]) -> None:
    """``table_init = "shards"``: no rank builds a whole table; each shard is drawn on its
    rank by TorchRec (other values than the seeded whole build, the same spread), then the
    run trains as usual."""
    whole = sharded_state(runs["two"] / "checkpoints" / RUN / "last")
    shards = sharded_state(runs["on_shards"] / "checkpoints" / RUN / "last")
    assert sorted(shards) == sorted(whole)
    for k in (k for k in whole if ".embedding_bags." in k):
        assert torch.isfinite(shards[k]).all(), k
        assert (shards[k] - whole[k]).abs().max() > 0.01, k  # another draw
        ratio = float(shards[k].std() / whole[k].std())
        assert 0.5 < ratio < 2.0, (k, ratio)  # N(0, init_std²) both


def test_saved_extra_reads_the_trainers_bookkeeping(runs: dict[str, Path], tmp_path: Path) -> None:
    """What the runner reads before resuming (the tracked run's id) without a model: rank 0's
    saved values, checked against the manifest (2 epochs)."""
    import shutil

    from mtlrec.sharded_checkpoint import CheckpointError, saved_extra

    folder = runs["two"] / "checkpoints" / RUN / "last"
    extra = saved_extra(folder)
    assert (extra["epoch"], extra["step"], extra["batches_done"]) == (2, 2 * STEPS_PER_EPOCH, 0)
    assert (runs["two"] / "spool" / extra["tracker_run_id"]).is_dir()  # the run to reopen
    with pytest.raises(ValueError, match="rank 2 is not a rank"):
        saved_extra(folder, rank=2)
    copy_dir = tmp_path / "last"
    shutil.copytree(folder, copy_dir)
    rank0 = next(copy_dir.glob("save-*/rank0-of-2.pt"))
    data = bytearray(rank0.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rank0.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        saved_extra(copy_dir)
