"""One rank of the collectives test: ``python _collective_worker.py OUT_DIR``.

Rank r (of W) holds tensors whose values are ``(r + 1) ×`` a fixed pattern, so their mean
over the ranks is ``(W + 1) / 2 ×`` the pattern; tiny bucket sizes force the slicing of a
large tensor and the packing of small ones into several buckets."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

import mtlbalance
from mtlbalance._step.collective import Collective
from mtltrain import distributed


def main(out: Path) -> None:
    job = distributed.init_from_env("cpu", timeout_s=30)
    assert job is not None
    k = float(job.rank + 1)
    c = Collective("world", bucket_bytes=64, inplace_bytes=256)
    big = torch.arange(100, dtype=torch.float64).reshape(4, 25) * k  # 800 B: 13 slices
    small = [torch.full((3,), 1.5, dtype=torch.float32) * k for _ in range(7)]  # 12 B each
    half = torch.ones(5, dtype=torch.float16) * k  # another dtype: its own bucket
    c.mean_([big, *small, half])
    expanded = torch.tensor(2.0 * k).expand(3, 2)  # autograd-style: not contiguous
    (reduced,) = c.mean([expanded])
    sparse = torch.sparse_coo_tensor([[job.rank, 9]], [k, 1.0], (10,))
    (sparse_mean,) = c.mean([sparse])
    rows = torch.full((2, 1 + job.rank), k)  # rank r holds 1 + r representation columns
    gathered = c.gather_rows(rows)
    draws = c.broadcast(torch.tensor([10.0 + job.rank]))
    payload = c.bytes_last_step
    # a Balancer without process_group in a job: every rank alone, and it says so once
    enc = torch.nn.Linear(2, 1)
    balancer = mtlbalance.make("ew", enc, tasks=["a"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            balancer.backward({"a": enc(torch.ones(1, 2)).sum()})
    said = [str(w.message) for w in caught if "has no process_group" in str(w.message)]
    torch.save(
        {
            "big": big,
            "small": small,
            "half": half,
            "expanded": reduced,
            "sparse": sparse_mean.to_dense(),
            "gathered": gathered,
            "draws": draws,
            "bytes": payload,
            "warned": said,
        },
        out / f"rank{job.rank}.pt",
    )
    distributed.end_rank(0)  # leave the job, skip the finalisation (docs/distributed.md)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
