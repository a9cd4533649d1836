"""``mtlbench run SPEC --nproc 2`` and the same command under torchrun train exactly what the
one-process run trains (the trainer splits each batch across the ranks; the Balancer
averages), and only rank 0 tracks and checkpoints. Real processes, gloo on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtltrain import distributed

TIMEOUT_S = 300
RUN = ["run", "synthetic-hetero", "--methods", "dbmtl", "--seeds", "1", "--epochs", "1"]
# a recsys spec (RecInputs batches, embedding tables balanced approximately) with a fast mode
REC = ["run", "mmoe-synthetic", "--methods", "dbmtl_probe", "--seeds", "1", "--epochs", "1"]


def _mtlbench(
    out: Path, *extra: str, launcher: list[str] | None = None, run: list[str] = RUN
) -> None:
    args = [*run, "--no-tracking", "--spool", str(out / "spool"), "--out", str(out)]
    cmd = [*(launcher or [sys.executable]), "-m", "mtlbench.cli", *args, "--quiet", *extra]
    done = subprocess.run(cmd, timeout=TIMEOUT_S, cwd=out, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}; its stderr ends:\n{done.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def outs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {k: tmp_path_factory.mktemp(k) for k in ("one", "nproc", "torchrun")}
    _mtlbench(dirs["one"], "--device", "cpu")
    _mtlbench(dirs["nproc"], "--device", "cpu", "--nproc", "2")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    torchrun += ["--master-port", str(distributed.free_port())]
    _mtlbench(dirs["torchrun"], "--device", "cpu", launcher=torchrun)
    return dirs


def _model(out: Path, run: str = "synthetic-hetero/dbmtl-seed0") -> dict[str, torch.Tensor]:
    ckpt = out / "checkpoints" / run / "last.pt"
    return torch.load(ckpt, weights_only=True)["model"]


def test_a_recsys_spec_with_a_fast_mode_on_two_ranks(tmp_path: Path) -> None:
    """RecInputs batches are cut by row (multi-hot bags included) and the probe mode reduces
    its probe rows: two ranks train what one process trains."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _mtlbench(one, "--device", "cpu", run=REC)
    _mtlbench(two, "--device", "cpu", "--nproc", "2", run=REC)
    want = _model(one, "mmoe-synthetic/dbmtl_probe-seed0")
    got = _model(two, "mmoe-synthetic/dbmtl_probe-seed0")
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("how", ["nproc", "torchrun"])
def test_two_ranks_train_what_one_process_trains(outs: dict[str, Path], how: str) -> None:
    want, got = _model(outs["one"]), _model(outs[how])
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("how", ["nproc", "torchrun"])
def test_only_rank0_tracks_and_reports(outs: dict[str, Path], how: str) -> None:
    one = sorted(p.name for p in (outs["one"] / "spool").iterdir())
    two = sorted(p.name for p in (outs[how] / "spool").iterdir())
    assert len(two) == len(one) > 0  # the group run, the run, the report: once each
    report = (outs[how] / "reports" / "synthetic-hetero" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| dbmtl |"))
    want = (outs["one"] / "reports" / "synthetic-hetero" / "report.md").read_text()
    assert row in want.splitlines()


def test_nproc_inside_a_job_must_match(tmp_path: Path) -> None:
    from mtlbench.launch import relaunch

    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(ValueError, match="--nproc 3 inside a job of WORLD_SIZE=2"):
            relaunch(["run", "x"], 3)
        assert relaunch(["run", "x"], 2) is None  # this process is a rank: run here
