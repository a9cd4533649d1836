"""A rank that dies must not leave the others hanging: real processes, one killed with
SIGKILL mid-training (gloo, CPU), every run bounded by a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mtltrain import distributed

WORKER = Path(__file__).with_name("_worker.py")
BOUND_S = 90  # far above what a clean failure takes (seconds), far below a hang


def _worker(out: Path, kill_rank: int) -> list[str]:
    return [sys.executable, str(WORKER), str(out), "dbmtl", "plain", "6", str(kill_rank), "2"]


@pytest.mark.parametrize("killed", [1, 0])
def test_survivor_names_the_dead_rank_without_a_launcher(tmp_path: Path, killed: int) -> None:
    """As under torchrun (which would also stop the job): the surviving rank itself exits
    non-zero with an error naming the rank that stopped (rank 0 hosts the job's store, so its
    death is reported as such)."""
    port = distributed.free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        procs.append(
            subprocess.Popen(_worker(tmp_path, killed), env=env, stderr=subprocess.PIPE, text=True)
        )
    start = time.monotonic()
    try:
        _, err = procs[1 - killed].communicate(timeout=BOUND_S)
    finally:
        for p in procs:
            p.kill()
            p.communicate()  # (closes the pipe)
    assert time.monotonic() - start < BOUND_S
    assert procs[killed].returncode == -9
    assert procs[1 - killed].returncode not in (0, None)
    assert "RankFailed" in err, err[-2000:]
    if killed == 1:
        assert "because rank 1 stopped" in err, err[-2000:]
    else:
        assert "rank 0 (which hosts the job's store) cannot be reached" in err, err[-2000:]


def test_launcher_stops_the_job_and_names_the_failed_rank(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    start = time.monotonic()
    code = distributed.launch(_worker(tmp_path, 1), 2, timeout_s=BOUND_S, grace_s=30)
    took = time.monotonic() - start
    err = capfd.readouterr().err
    assert code == 1 and took < BOUND_S
    assert "rank 1 of 2 was killed by SIGKILL" in err
    assert "the job failed: rank 1 was killed by SIGKILL" in err
    assert "because rank 1 stopped" in err  # rank 0 failed on its own, within the grace


def test_launcher_stops_a_rank_that_outlives_the_grace(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A rank that would wait forever (not in any collective) is terminated after the grace."""
    script = tmp_path / "job.py"
    script.write_text(
        "import os, sys, time\nif os.environ['RANK'] == '1':\n    sys.exit(3)\ntime.sleep(600)\n"
    )
    start = time.monotonic()
    code = distributed.launch([sys.executable, str(script)], 2, grace_s=1, timeout_s=BOUND_S)
    assert code == 3 and time.monotonic() - start < 30
    assert "rank 1 of 2 exited with code 3" in capfd.readouterr().err


def test_launcher_timeout_stops_every_rank(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("import time\ntime.sleep(600)\n")
    start = time.monotonic()
    assert distributed.launch([sys.executable, str(script)], 2, timeout_s=2) == 124
    assert time.monotonic() - start < 30


def test_env_errors_name_the_variable() -> None:
    assert distributed.env({}) is None
    job = distributed.env(
        {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    )
    assert job == distributed.DistEnv(1, 2, 1, "h", 29500)
    with pytest.raises(ValueError, match="WORLD_SIZE is set but RANK is not"):
        distributed.env({"WORLD_SIZE": "2", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        distributed.env({"RANK": "x", "WORLD_SIZE": "2", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match=r"RANK=2 must be in \[0, WORLD_SIZE=2\)"):
        distributed.env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="--nproc must be at least 1"):
        distributed.launch(["true"], 0)


def test_two_process_run_killed_and_resumed_continues_identically(tmp_path: Path) -> None:
    """Rank 1 is killed after step 5 (the last checkpoint is step 3); the relaunched job
    resumes from it and ends exactly where an uninterrupted 2-process run ends."""
    worker = Path(__file__).with_name("_trainer_worker.py")

    def job(out: Path, ckpt: Path, *kill: str) -> int:
        cmd = [sys.executable, str(worker), str(out), str(ckpt), *kill]
        return distributed.launch(cmd, 2, timeout_s=BOUND_S, grace_s=30)

    assert job(tmp_path / "full.json", tmp_path / "full") == 0
    assert job(tmp_path / "cut.json", tmp_path / "cut", "1", "5") != 0
    assert not (tmp_path / "cut.json").exists()
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert saved["step"] == 3  # rank 0 could not finish step 6 without rank 1
    assert job(tmp_path / "cut.json", tmp_path / "cut") == 0
    full = json.loads((tmp_path / "full.json").read_text())
    cut = json.loads((tmp_path / "cut.json").read_text())
    assert cut["first_step"] == 4 and full["first_step"] == 1  # it resumed after step 3
    assert cut["steps"] == full["steps"]
    assert cut["params"] == full["params"]  # bit for bit
    assert cut["bal"] == full["bal"]
    assert cut["val"] == full["val"]
