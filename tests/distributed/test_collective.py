"""The bucketed collectives of data-parallel balancing, on 2 real gloo processes."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mtltrain import distributed

WORKER = Path(__file__).with_name("_collective_worker.py")


def test_bucketed_mean_gather_broadcast(tmp_path: Path) -> None:
    cmd = [sys.executable, str(WORKER), str(tmp_path)]
    assert distributed.launch(cmd, 2, timeout_s=120) == 0
    mean = 1.5  # (rank 0: ×1, rank 1: ×2) averaged
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        want_big = torch.arange(100, dtype=torch.float64).reshape(4, 25) * mean
        assert torch.equal(got["big"], want_big)
        for t in got["small"]:
            assert torch.equal(t, torch.full((3,), 1.5 * mean))
        assert torch.equal(got["half"], torch.full((5,), mean, dtype=torch.float16))
        assert torch.equal(got["expanded"], torch.full((3, 2), 2.0 * mean))
        # rank 0 put 1 at index 0, rank 1 put 2 at index 1, both 1 at index 9; / W
        want_sparse = torch.zeros(10)
        want_sparse[0], want_sparse[1], want_sparse[9] = 0.5, 1.0, 1.0
        assert torch.equal(got["sparse"], want_sparse)
        # rank 0: 1 column of 1s, rank 1: 2 columns of 2s; concatenated in rank order, / W
        assert torch.equal(got["gathered"], torch.tensor([[0.5, 1.0, 1.0], [0.5, 1.0, 1.0]]))
        assert torch.equal(got["draws"], torch.tensor([10.0]))  # rank 0's
        assert len(got["warned"]) == 1, got["warned"]  # once, not every step
        assert "initialised with 2 processes but the Balancer" in got["warned"][0]
    # the payload of rank 0's last collectives (since construction): 800 + 7·12 + 5·2 (mean_)
    # + 24 (the expanded copy) + the sparse gather (1·2 indices · 8 + 2 values · 4, padded to
    # the larger count 2) + 2·1·4 (rows, padded to 2 columns: 2·2·4) + 4 (broadcast)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert r0["bytes"] == 800 + 84 + 10 + 24 + (2 * 8 + 2 * 4) + 2 * 2 * 4 + 4
