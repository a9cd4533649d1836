"""Data-parallel balancing with real processes (gloo, CPU): W ranks each on their shard of
the global batch must train exactly as one process on the whole batch.

Each job runs ``_worker.py`` (started by :func:`mtltrain.distributed.launch`, bounded by a
timeout) for several methods one after the other; the reference is the same script in one
process without torch.distributed. Expected values therefore come from the one-process
code path (no reduce stage at all), never from the distributed one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _identical import assert_identical

from mtltrain import distributed

WORKER = Path(__file__).with_name("_worker.py")
STEPS = 4
TIMEOUT_S = 240
# gradient level exact (dbmtl, pcgrad: random order), loss level (ew, uw: learned
# log-variances, rlw: random weights, famo: after_step state), representation level (mgda_ub)
METHODS = ("ew", "dbmtl", "pcgrad", "uw", "rlw", "famo", "mgda_ub")
# the fast (approximate) modes: probe (the encoder's bias), representation (DB-MTL's norms
# and a Gram weighting's Gram matrix at z), periodic (K = 4: one exact step, three reused)
FAST = ("dbmtl_probe", "dbmtl_rep", "imtl_g~representation", "dbmtl_periodic")
# with an embedding table balanced approximately (tables=): dense and sparse gradients
TABLES = ("dbmtl@tables", "dbmtl@sparse", "ew@sparse", "dbmtl_probe@sparse", "dbmtl_rep@tables")
# the table read through a per-rank leaf (mtlbalance.per_rank: this rank's pooled rows, as
# mtlrec's table frontier): gradient level, loss level, the fast modes, a randomised method,
# and clipping to max_update_norm (the norm of a per-rank gradient is global)
FRONTIER = (
    "dbmtl@frontier",
    "ew@frontier",
    "dbmtl_probe@frontier",
    "dbmtl_rep@frontier",
    "pcgrad@frontier",
    "dbmtl@frontierclip",
)
ALL = METHODS + FAST + TABLES + FRONTIER


def _run_single(out: Path, methods: str, mode: str = "single") -> None:
    subprocess.run(
        [sys.executable, str(WORKER), str(out), methods, mode, str(STEPS)],
        check=True,
        timeout=TIMEOUT_S,
    )


def _run_job(out: Path, methods: str, mode: str, nproc: int = 2) -> None:
    code = distributed.launch(
        [sys.executable, str(WORKER), str(out), methods, mode, str(STEPS)],
        nproc,
        timeout_s=TIMEOUT_S,
    )
    assert code == 0, f"the {nproc}-process job ({mode}, {methods}) failed with {code}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One reference run and the distributed jobs, shared by the tests below."""
    kinds = ("single", "plain", "ddp", "ddp_sync", "accumulate")
    dirs = {k: tmp_path_factory.mktemp(k) for k in kinds}
    _run_single(dirs["single"], ",".join(ALL))
    _run_job(dirs["plain"], ",".join([*ALL, "dbmtl@frontiernan"]), "plain")
    _run_job(dirs["ddp"], "dbmtl,ew", "ddp")
    _run_job(dirs["ddp_sync"], "dbmtl", "ddp_sync")
    _run_job(dirs["accumulate"], "dbmtl,uw,dbmtl_probe,dbmtl_periodic", "accumulate")
    return dirs


def _load(d: Path, method: str, rank: int) -> dict:
    return torch.load(d / f"{method}-rank{rank}.pt", weights_only=True)


def _assert_params_close(got: dict, want: dict, what: str) -> None:
    for step, (ps, qs) in enumerate(zip(got["params"], want["params"], strict=True)):
        for i, (p, q) in enumerate(zip(ps, qs, strict=True)):
            torch.testing.assert_close(
                p, q, rtol=1e-5, atol=1e-5, msg=lambda m, s=step, i=i: f"{what} step {s} p{i}: {m}"
            )


@pytest.mark.parametrize("method", ALL)
def test_two_processes_equal_one_process(runs: dict[str, Path], method: str) -> None:
    want = _load(runs["single"], method, 0)
    for rank in (0, 1):
        got = _load(runs["plain"], method, rank)
        _assert_params_close(got, want, f"{method} rank {rank}")
        for key in want["stats"][-1]:  # the global losses, weights, norms are reported
            assert got["stats"][-1][key] == pytest.approx(want["stats"][-1][key], rel=1e-5), key


@pytest.mark.parametrize("method", ALL)
def test_ranks_hold_identical_state(runs: dict[str, Path], method: str) -> None:
    r0, r1 = _load(runs["plain"], method, 0), _load(runs["plain"], method, 1)
    assert_identical(r0["balancer"], r1["balancer"], f"{method} balancer state")
    assert_identical(r0["params"], r1["params"], f"{method} parameters")
    assert_identical(r0["stats"], r1["stats"], f"{method} stats")


@pytest.mark.parametrize("method", ["dbmtl", "ew"])
def test_ddp_wrapped_model_is_reduced_once(runs: dict[str, Path], method: str) -> None:
    """DDP's forward under no_sync(): the Balancer's reduction is the only one (a second
    all-reduce of the mean would not change it, but a missing one would; a sum instead of
    a mean would double it)."""
    want = _load(runs["single"], method, 0)
    for rank in (0, 1):
        _assert_params_close(_load(runs["ddp"], method, rank), want, f"ddp {method} rank {rank}")


def test_ddp_does_not_reduce_what_the_balancer_writes(runs: dict[str, Path]) -> None:
    """The Balancer takes every gradient with torch.autograd.grad, so DDP's reducer (hooked
    on the accumulation into .grad) never fires: even with the forward outside no_sync() the
    update is reduced once, by the Balancer (docs/distributed.md, the DDP contract)."""
    want = _load(runs["single"], "dbmtl", 0)
    for rank in (0, 1):
        _assert_params_close(_load(runs["ddp_sync"], "dbmtl", rank), want, f"rank {rank}")


@pytest.mark.parametrize("method", ["dbmtl", "uw", "dbmtl_probe", "dbmtl_periodic"])
def test_accumulated_steps_equal_one_process(runs: dict[str, Path], method: str) -> None:
    want = _load(runs["single"], method, 0)
    r0, r1 = _load(runs["accumulate"], method, 0), _load(runs["accumulate"], method, 1)
    _assert_params_close(r0, want, f"accumulated {method}")
    assert_identical(r0["balancer"], r1["balancer"], f"accumulated {method} balancer state")


def test_traffic_per_step(runs: dict[str, Path]) -> None:
    """What each rank puts into collectives per step, counted by hand for the worker's model
    (P = 4·6 + 6 = 30 shared values, 3 heads of 6 + 1, T = 3 float32 losses)."""
    shared, heads, losses = 30, 3 * 7, 3
    ew = _load(runs["plain"], "ew", 0)["bytes"]
    dbmtl = _load(runs["plain"], "dbmtl", 0)["bytes"]
    assert ew == [4 * (losses + shared + heads)] * STEPS  # one combined gradient
    assert dbmtl == [4 * (losses + 3 * shared + heads)] * STEPS  # the T rows


def test_fast_mode_traffic_per_step(runs: dict[str, Path]) -> None:
    """A fast mode sends EW's traffic and only a little more (counted by hand as above):
    probe: the T rows of its 6-value probe (the encoder's bias); representation: the T × T
    Gram matrix at z; periodic (K = 4): the exact step's rows once, then EW's."""
    shared, heads, losses, probe = 30, 3 * 7, 3, 6
    ew = 4 * (losses + shared + heads)
    assert _load(runs["plain"], "dbmtl_probe", 0)["bytes"] == [ew + 4 * 3 * probe] * STEPS
    assert _load(runs["plain"], "dbmtl_rep", 0)["bytes"] == [ew + 4 * 3 * 3] * STEPS
    exact = 4 * (losses + 3 * shared + heads)
    assert _load(runs["plain"], "dbmtl_periodic", 0)["bytes"] == [exact] + [ew] * (STEPS - 1)


# ---------------------------------------------------------------------- per-rank tables
@pytest.mark.parametrize("method", FRONTIER)
def test_per_rank_gradient_is_the_local_share(runs: dict[str, Path], method: str) -> None:
    """Rank r's frontier holds the rows [4r, 4r + 4) of the global batch of 8; its gradient
    must be those rows of the one-process frontier's gradient (∂ℓ/∂Ê_r = (1/W) ∂ℓ^r/∂Ê_r):
    not averaged with the other rank's rows, not the local gradient unscaled or times W."""
    want = _load(runs["single"], method, 0)["frontier"]
    for rank in (0, 1):
        got = _load(runs["plain"], method, rank)["frontier"]
        assert len(got) == len(want) == STEPS
        for step, (g, w) in enumerate(zip(got, want, strict=True)):
            assert w.shape == (8, 2) and g.shape == (4, 2)
            assert w[4 * rank : 4 * rank + 4].abs().max() > 1e-3  # (the test can fail)
            torch.testing.assert_close(
                g, w[4 * rank : 4 * rank + 4], rtol=1e-5, atol=1e-6, msg=f"{rank} {step}"
            )


def test_per_rank_traffic_is_one_float64_beyond(runs: dict[str, Path]) -> None:
    """A per-rank table is not reduced: beyond the rows (shared = the encoder's 6·6 + 6 = 42
    values with the frontier's 2 inputs) only its squared norm, one float64, crosses."""
    shared, heads, losses = 42, 3 * 7, 3
    assert (
        _load(runs["plain"], "dbmtl@frontier", 0)["bytes"]
        == [4 * (losses + 3 * shared + heads) + 8] * STEPS
    )
    assert (
        _load(runs["plain"], "ew@frontier", 0)["bytes"]
        == [4 * (losses + shared + heads) + 8] * STEPS
    )


def test_one_ranks_non_finite_frontier_skips_the_step_on_every_rank(
    runs: dict[str, Path],
) -> None:
    """Rank 1's frontier gradient is NaN on step 1 (rank 0's is finite), under a loss scale:
    both ranks skip that step (nothing written, the same stats) and go on in lockstep (the
    job finished: nobody waited forever in a collective)."""
    r0, r1 = (_load(runs["plain"], "dbmtl@frontiernan", r) for r in (0, 1))
    for got in (r0, r1):
        assert [s.get("skipped", 0.0) for s in got["stats"]] == [0.0, 1.0, 0.0, 0.0]
        for p, q in zip(got["params"][1], got["params"][0], strict=True):
            assert torch.equal(p, q)  # nothing changed on step 1
        assert not torch.equal(got["params"][2][0], got["params"][1][0])  # training went on
    assert_identical(r0["params"], r1["params"], "parameters")
    assert_identical(r0["balancer"], r1["balancer"], "balancer state")
    assert r0["frontier"][1] is None and r1["frontier"][1] is None
