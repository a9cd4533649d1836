"""Graph construction, splits and normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlmolecule.data import QM9Graphs, graph, load_molecules, make_splits

from .conftest import random_molecules, water, write_cache

SHARED_SPLIT = Path(__file__).resolve().parents[2] / ".." / "shared/data/qm9/random_split.t"


def test_water_graph(tmp_path: Path) -> None:
    mols = load_molecules(write_cache(tmp_path, [water()]))
    g = graph(mols, 0)
    # node features: one-hot HCNOF, Z, aromatic, sp, sp2, sp3, number of H
    assert g.x.tolist() == [
        [0, 0, 0, 1, 0, 8, 0, 0, 0, 1, 2],
        [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
    ]
    # complete graph without self loops, both directions
    pairs = [tuple(e) for e in g.edge_index.t().tolist()]
    assert sorted(pairs) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    attr = {p: g.edge_attr[k] for k, p in enumerate(pairs)}
    assert attr[(0, 1)][:4].tolist() == [1, 0, 0, 0] == attr[(1, 0)][:4].tolist()
    assert attr[(1, 2)][:4].tolist() == [0, 0, 0, 0]  # not bonded
    assert float(attr[(0, 1)][4]) == pytest.approx(0.96, abs=1e-6)
    d12 = ((0.96 + 0.24) ** 2 + 0.93**2) ** 0.5
    assert float(attr[(2, 1)][4]) == pytest.approx(d12, abs=1e-5)
    assert g.y.shape == (1, 11)


def test_bond_types_and_offsets_across_molecules(tmp_path: Path) -> None:
    mols = random_molecules(5, seed=3)
    loaded = load_molecules(write_cache(tmp_path, mols))
    for i, m in enumerate(mols):
        g = graph(loaded, i)
        n = len(m["z"])
        assert g.num_nodes == n and g.edge_index.shape[1] == n * (n - 1)
        assert g.x[:, 5].tolist() == [float(z) for z in m["z"]]
        for a, b, kind in m["bonds"]:
            k = int(((g.edge_index[0] == a) & (g.edge_index[1] == b)).nonzero())
            assert g.edge_attr[k, :4].argmax() == kind and g.edge_attr[k, :4].sum() == 1
        assert int(g.edge_attr[:, :4].sum()) == 2 * len(m["bonds"])


def test_seeded_split_sizes_and_determinism() -> None:
    n = 130_831
    a, b = make_splits(n, seed=0), make_splits(n, seed=0)
    assert (a.test.numel(), a.val.numel(), a.train.numel()) == (10_000, 10_000, 110_831)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    c = make_splits(n, seed=1)
    assert not torch.equal(a.test, c.test)
    everything = torch.cat([a.train, a.val, a.test]).sort().values
    assert torch.equal(everything, torch.arange(n))


def test_split_file_order(tmp_path: Path) -> None:
    n = 30_000
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "split.t"
    torch.save(perm, path)
    s = make_splits(n, split_file=path)
    assert torch.equal(s.test, perm[:10_000])
    assert torch.equal(s.val, perm[10_000:20_000])
    assert torch.equal(s.train, perm[20_000:])
    with pytest.raises(ValueError, match="not a permutation"):
        make_splits(n + 1, split_file=path)
    with pytest.raises(FileNotFoundError, match=r"random_split\.t"):
        make_splits(n, split_file=tmp_path / "missing.t")


def test_sizes_keep_the_head_of_each_part(tmp_path: Path) -> None:
    n = 30_000
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(6))
    path = tmp_path / "split.t"
    torch.save(perm, path)
    targets = torch.randn(n, 11)
    s = make_splits(n, split_file=path, sizes=(500, None, 300), targets=targets)
    assert torch.equal(s.test, perm[:300])  # published test molecules, not a re-split
    assert torch.equal(s.val, perm[10_000:20_000])
    assert torch.equal(s.train, perm[20_000:20_500])
    assert s.info["train"] == 500
    torch.testing.assert_close(s.mean, targets[perm[20_000:20_500]].mean(0))  # train statistics
    with pytest.raises(ValueError, match=r"train size must be an int between 1 and 10000"):
        make_splits(n, split_file=path, sizes=(10_001, None, None))
    with pytest.raises(ValueError, match="subset or sizes"):
        make_splits(n, split_file=path, sizes=(5, 5, 5), subset=100)
    with pytest.raises(ValueError, match=r"sizes must be \(train, val, test\)"):
        make_splits(n, split_file=path, sizes=(5, 5))


@pytest.mark.skipif(not SHARED_SPLIT.is_file(), reason="../shared/data/qm9 is not here")
def test_published_split_file() -> None:
    s = make_splits(130_831, split_file=SHARED_SPLIT)
    assert (s.test.numel(), s.val.numel(), s.train.numel()) == (10_000, 10_000, 110_831)


def test_subset_and_train_normalisation(tmp_path: Path) -> None:
    mols = load_molecules(write_cache(tmp_path, random_molecules(260, seed=1)))
    s = make_splits(len(mols), seed=2, subset=200, targets=mols.targets)
    assert s.train.numel() + s.val.numel() + s.test.numel() == 200
    assert s.test.numel() == s.val.numel() == round(200 * (260 // 13) / 260)
    again = make_splits(len(mols), seed=2, subset=200, targets=mols.targets)
    assert torch.equal(s.train, again.train)
    train = QM9Graphs(mols, s.train, s.mean, s.std)
    assert train.y.mean(0).abs().max() < 1e-5
    assert (train.y.std(0) - 1).abs().max() < 1e-4
    val = QM9Graphs(mols, s.val, s.mean, s.std)
    raw = mols.targets[s.val[0]]
    assert torch.allclose(val[0].y[0] * s.std + s.mean, raw, atol=1e-4)


def test_missing_cache_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m mtlmolecule.convert"):
        load_molecules(tmp_path)
