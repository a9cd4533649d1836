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


def test_rec_inputs_are_cut_by_row_bags_included(rank1_of_3: None) -> None:
    """mtlrec's RecInputs (ids, dense, multi-hot bags of different sizes): rank 1 of 3 on
    n = 7 gets rows 2 and 3, written out by hand."""
    from mtlrec.data import Jagged, RecInputs

    bags = [[1], [], [4, 5, 6], [7], [8, 9], [], [3]]
    offsets = torch.tensor([0, 1, 1, 4, 5, 7, 7, 8])
    full = RecInputs(
        {"user": torch.arange(10, 17)},
        torch.arange(14.0).reshape(7, 2),
        {"tags": Jagged(offsets, torch.tensor([v for b in bags for v in b]))},
    )
    inputs, targets, weight = distributed.split_batch(full, {"click": torch.arange(7.0)})
    assert torch.equal(inputs.sparse["user"], torch.tensor([12, 13]))
    assert torch.equal(inputs.dense, torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(inputs.multi_hot["tags"].offsets, torch.tensor([0, 3, 4]))
    assert torch.equal(inputs.multi_hot["tags"].values, torch.tensor([4, 5, 6, 7]))
    assert torch.equal(targets["click"], torch.tensor([2.0, 3.0]))
    assert weight == pytest.approx(3 * 2 / 7)


def test_graph_batches_are_cut_by_graph(rank1_of_3: None) -> None:
    """A torch_geometric Batch of 7 graphs of different sizes: rank 1 of 3 gets graphs 2 and
    3, with their nodes and edges renumbered as a batch of those two graphs alone."""
    geometric = pytest.importorskip("torch_geometric.data")
    graphs = []
    for g in range(7):
        nodes = 2 + g % 3
        edges = torch.tensor([[i, (i + 1) % nodes] for i in range(nodes)]).T
        graphs.append(geometric.Data(x=torch.full((nodes, 1), float(g)), edge_index=edges))
    full = geometric.Batch.from_data_list(graphs)
    inputs, targets, _ = distributed.split_batch(full, {"mu": torch.arange(7.0)})
    assert inputs.num_graphs == 2
    # graphs 2 (4 nodes) and 3 (2 nodes), their node features 2.0 and 3.0
    assert inputs.x.squeeze(1).tolist() == [2.0] * 4 + [3.0] * 2
    assert inputs.batch.tolist() == [0] * 4 + [1] * 2
    ring4 = [[0, 1], [1, 2], [2, 3], [3, 0]]
    ring2 = [[4, 5], [5, 4]]
    assert inputs.edge_index.T.tolist() == ring4 + ring2
    assert torch.equal(targets["mu"], torch.tensor([2.0, 3.0]))


def test_objects_that_cannot_be_cut(rank1_of_3: None) -> None:
    from mtlrec.data import RecInputs

    with pytest.raises(TypeError, match="cannot split a batch holding a str"):
        distributed.split_batch("abcdef", {"a": torch.zeros(6)})  # (str has index() and len())
    short = RecInputs({"user": torch.arange(5)})
    with pytest.raises(ValueError, match="its RecInputs holds 5 rows, not 6"):
        distributed.split_batch(short, {"a": torch.zeros(6)})
