"""``mtlbalance.per_rank``: the mark, its errors, and that one process is unchanged by it (the
data-parallel behaviour is tested with real processes in tests/distributed and
tests/mtlrec/test_sharded_balancer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import mtlbalance


def test_marks_and_returns_the_same_tensor() -> None:
    leaf = torch.zeros(4, 3, requires_grad=True)
    assert mtlbalance.per_rank(leaf) is leaf
    leaf.data = torch.ones(7, 3)  # (the frontier is refilled each forward: the mark stays)
    from mtlbalance._params import is_per_rank

    assert is_per_rank(leaf)
    assert not is_per_rank(torch.zeros(4, 3, requires_grad=True))


def test_not_a_leaf_requiring_grad_is_an_error_naming_it() -> None:
    leaf = torch.zeros(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*not a leaf.*MulBackward0"):
        mtlbalance.per_rank(leaf * 2)
    with pytest.raises(ValueError, match=r"shape \(5,\).*does not require grad"):
        mtlbalance.per_rank(torch.zeros(5))
    with pytest.raises(TypeError, match="marks a tensor, got list"):
        mtlbalance.per_rank([leaf])  # type: ignore[arg-type]


def _step(mark: bool, method: str, **kw: object) -> tuple[list[torch.Tensor], dict]:
    """One step of a model whose first layer's output is a detached leaf given as a table
    (the split backward of mtlrec's table frontier, by hand)."""
    torch.manual_seed(0)
    lookup, enc = nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 5), nn.Tanh())
    heads = {t: nn.Linear(5, 1) for t in ("a", "b")}
    leaf = torch.zeros(0, 4, requires_grad=True)
    if mark:
        mtlbalance.per_rank(leaf)
    balancer = mtlbalance.make(method, enc, heads, tables=[leaf], **kw)
    x = torch.randn(6, 3)
    pooled = lookup(x)
    leaf.data = pooled.detach()
    z = enc(leaf)
    losses = {
        t: (s * (h(z) - 1.0) ** 2).mean() for (t, h), s in zip(heads.items(), (1, 30), strict=True)
    }
    stats = balancer.backward(losses)
    assert leaf.grad is not None
    pooled.backward(leaf.grad)
    params = [leaf.grad, *(p.grad for p in [*lookup.parameters(), *enc.parameters()])]
    return [p.clone() for p in params if p is not None], stats.to_dict()


@pytest.mark.parametrize(
    ("method", "kw"),
    [("dbmtl", {}), ("ew", {}), ("dbmtl", {"max_update_norm": 0.01}), ("dbmtl", {"mode": "fast"})],
)
def test_one_process_is_unchanged(method: str, kw: dict) -> None:
    want, want_stats = _step(False, method, **kw)
    got, got_stats = _step(True, method, **kw)
    assert len(got) == len(want) == 5
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    assert got_stats == want_stats


def test_accumulation_is_refused_under_a_process_group(tmp_path: Path) -> None:
    import torch.distributed as dist

    leaf = mtlbalance.per_rank(torch.zeros(0, 2, requires_grad=True))
    enc = nn.Linear(2, 2)
    balancer = mtlbalance.make(
        "dbmtl", enc, tasks=["a", "b"], tables=[("frontier", leaf)], process_group="world"
    )
    leaf.data = torch.randn(3, 2)
    z = enc(leaf)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 's'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"tables\.frontier are marked per_rank.*accumulate"):
            balancer.accumulate({"a": z[:, 0].pow(2).mean(), "b": z[:, 1].pow(2).mean()})
    finally:
        dist.destroy_process_group()
