"""How the trainer cuts a global batch across ranks (``data_parallel="split_batch"``)."""

from __future__ import annotations

import pytest
import torch

from mtltrain import distributed


@pytest.fixture
def rank1_of_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)


def test_contiguous_slice_and_weight(rank1_of_3: None) -> None:
    x = torch.arange(14.0).reshape(7, 2)
    inputs, targets, weight = distributed.split_batch(
        {"dense": x, "ids": [torch.arange(7)]}, {"a": torch.arange(7.0)}
    )
    # rank 1 of 3 on n = 7: rows [floor(7/3), floor(14/3)) = [2, 4)
    assert torch.equal(inputs["dense"], x[2:4])
    assert torch.equal(inputs["ids"][0], torch.tensor([2, 3]))
    assert torch.equal(targets["a"], torch.tensor([2.0, 3.0]))
    assert weight == pytest.approx(3 * 2 / 7)


def test_weights_make_the_global_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    """(1/W) Σ_r w_r mean(slice_r) is the mean over the whole batch, for uneven slices
    (n = 10 over W = 4: 2, 3, 2, 3 rows), and the slices cover the batch once."""
    values, world = torch.arange(10.0) ** 2, 4
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    total, seen = 0.0, []
    for r in range(world):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None, r=r: r)
        inputs, targets, weight = distributed.split_batch(values, {"a": values})
        total += weight * targets["a"].mean().item() / world
        seen += inputs.tolist()
    assert seen == values.tolist()
    assert total == pytest.approx(values.mean().item())


def test_errors_say_what_to_do(rank1_of_3: None) -> None:
    with pytest.raises(ValueError, match=r"a batch of 2 sample.* cannot be split across 3"):
        distributed.split_batch(torch.zeros(2, 1), {"a": torch.zeros(2)})
    with pytest.raises(TypeError, match=r"cannot split a batch holding a str.*sharded_loader"):
        distributed.split_batch("text", {"a": torch.zeros(6)})
    with pytest.raises(ValueError, match=r"shape \(5,\) has no batch dimension first"):
        distributed.split_batch(torch.zeros(5), {"a": torch.zeros(6)})
    with pytest.raises(ValueError, match="first dimensions \\[5, 6\\]"):
        distributed.split_batch(torch.zeros(6), {"a": torch.zeros(6), "b": torch.zeros(5)})
