"""QM9 graphs, splits and target normalisation, from the cache :mod:`mtlmolecule.convert` writes.

Graphs follow PyG's QM9 example (Fey & Lenssen 2019; Gilmer et al. 2017), the setup of the
DB-MTL paper (via LibMTL's QM9 example):

- node features (11, PyG's ``QM9``): one-hot H/C/N/O/F, atomic number, aromatic,
  sp/sp2/sp3, number of bonded hydrogens;
- the complete graph without self loops; edge attributes (5): bond-type one-hot
  (single/double/triple/aromatic, all zero for non-bonded pairs) and the interatomic distance
  in Å (``T.Complete()`` + ``T.Distance(norm=False)`` of the example).

Differences from PyG's own ``QM9``: bonds and aromaticity come from RDKit's perception from
the coordinates, not from QM9's SDF file, so a few molecules (strained cages, zwitterion-like
structures) may have different bond orders; the cache records how each molecule's bonds
were found.

Splits: a split file (e.g. the published ``random_split.t``: test = first 10,000 entries,
val = next 10,000, train = the rest, indexing molecules in gdb-index order) or a seeded
permutation of the same sizes. Targets are z-normalised with the training split's mean and
standard deviation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .convert import CACHE_FILE, CACHE_VERSION, TASKS, default_cache_dir

__all__ = [
    "NUM_EDGE_FEATURES",
    "NUM_NODE_FEATURES",
    "QM9Graphs",
    "QM9Molecules",
    "Splits",
    "load_molecules",
    "make_loader",
    "make_splits",
    "unpack",
]

NUM_NODE_FEATURES = 11
NUM_EDGE_FEATURES = 5
TEST_SIZE = 10_000
VAL_SIZE = 10_000
_TYPE_INDEX = {1: 0, 6: 1, 7: 2, 8: 3, 9: 4}


@dataclass
class QM9Molecules:
    """All molecules of the cache, as flat tensors with per-molecule offsets.

    ``x`` holds every atom's 11 node features; ``atom_ptr[i]:atom_ptr[i+1]`` are molecule
    ``i``'s atoms (``pos`` in Å), ``bond_ptr`` likewise its bonds (``bonds``: local atom indices,
    ``bond_type`` 0..3); ``targets`` (N, 11) in PyG's units; ``index`` the gdb indices.
    """

    index: Tensor
    atom_ptr: Tensor
    bond_ptr: Tensor
    x: Tensor
    pos: Tensor
    bonds: Tensor
    bond_type: Tensor
    targets: Tensor
    tasks: list[str]
    source: str = ""

    def __len__(self) -> int:
        return int(self.index.shape[0])


def load_molecules(cache_dir: str | os.PathLike[str] | None = None) -> QM9Molecules:
    """Load ``<cache_dir>/qm9_v1.npz`` (default ``~/.cache/mtlmolecule``) and build the node
    features. Raises ``FileNotFoundError`` saying how to make the cache."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / CACHE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no QM9 cache at {path}: convert qm9pack's CSVs once with "
            f"`python -m mtlmolecule.convert --cache-dir {folder}` "
            "(needs pip install 'mtlmolecule[convert]': qm9pack and rdkit)"
        )
    with np.load(path) as d:
        keys = set(d.files)
        need = {"version", "tasks", "index", "natoms", "nbonds", "z", "pos", "atom_flags"}
        need |= {"bonds", "bond_type", "targets"}
        if not need <= keys:
            raise ValueError(
                f"{path} lacks arrays {sorted(need - keys)}: not an mtlmolecule cache; delete it "
                "and run `python -m mtlmolecule.convert` again"
            )
        if int(d["version"]) != CACHE_VERSION or list(d["tasks"]) != list(TASKS):
            raise ValueError(
                f"{path} was written by another mtlmolecule version (cache version "
                f"{int(d['version'])}, expected {CACHE_VERSION}): run `python -m "
                "mtlmolecule.convert --overwrite`"
            )
        arrays = {k: d[k] for k in need}
    natoms = torch.from_numpy(arrays["natoms"].astype(np.int64))
    nbonds = torch.from_numpy(arrays["nbonds"].astype(np.int64))
    atom_ptr = torch.cat([torch.zeros(1, dtype=torch.long), natoms.cumsum(0)])
    bond_ptr = torch.cat([torch.zeros(1, dtype=torch.long), nbonds.cumsum(0)])
    z = torch.from_numpy(arrays["z"].astype(np.int64))
    bonds = torch.from_numpy(arrays["bonds"].astype(np.int64)).reshape(-1, 2)
    if int(atom_ptr[-1]) != z.numel() or int(bond_ptr[-1]) != bonds.shape[0]:
        raise ValueError(f"{path}: atom/bond counts do not add up; the cache is corrupt")
    flags = torch.from_numpy(arrays["atom_flags"].astype(np.int64))
    x = _node_features(z, flags, bonds, atom_ptr, bond_ptr)
    return QM9Molecules(
        index=torch.from_numpy(arrays["index"].astype(np.int64)),
        atom_ptr=atom_ptr,
        bond_ptr=bond_ptr,
        x=x,
        pos=torch.from_numpy(arrays["pos"]).float(),
        bonds=bonds,
        bond_type=torch.from_numpy(arrays["bond_type"].astype(np.int64)),
        targets=torch.from_numpy(arrays["targets"]).float(),
        tasks=list(TASKS),
        source=str(path),
    )


def _node_features(
    z: Tensor, flags: Tensor, bonds: Tensor, atom_ptr: Tensor, bond_ptr: Tensor
) -> Tensor:
    """PyG QM9's 11 node features for every atom, vectorised."""
    lookup = torch.full((10,), -1, dtype=torch.long)
    for number, k in _TYPE_INDEX.items():
        lookup[number] = k
    type_idx = lookup[z]
    aromatic = (flags & 1).float()
    hyb = flags >> 1
    # global atom indices of every bond's two ends
    mol_of_bond = torch.repeat_interleave(
        torch.arange(atom_ptr.numel() - 1), bond_ptr[1:] - bond_ptr[:-1]
    )
    ends = bonds + atom_ptr[mol_of_bond].unsqueeze(1)
    num_h = torch.zeros(z.numel())
    for a, b in ((0, 1), (1, 0)):
        num_h.index_add_(0, ends[:, a], (z[ends[:, b]] == 1).float())
    return torch.cat(
        [
            torch.nn.functional.one_hot(type_idx, 5).float(),
            z.float().unsqueeze(1),
            aromatic.unsqueeze(1),
            torch.stack([(hyb == 1).float(), (hyb == 2).float(), (hyb == 3).float()], 1),
            num_h.unsqueeze(1),
        ],
        dim=1,
    )


def graph(molecules: QM9Molecules, i: int, y: Tensor | None = None) -> Any:
    """Molecule ``i`` as a PyG ``Data``: ``x`` (n, 11), complete ``edge_index`` without self
    loops, ``edge_attr`` (n(n−1), 5) = bond one-hot + distance, ``pos``, ``y`` (1, 11)."""
    from torch_geometric.data import Data

    a0, a1 = int(molecules.atom_ptr[i]), int(molecules.atom_ptr[i + 1])
    b0, b1 = int(molecules.bond_ptr[i]), int(molecules.bond_ptr[i + 1])
    n = a1 - a0
    pos = molecules.pos[a0:a1]
    bond_hot = torch.zeros(n, n, 4)
    pairs, kinds = molecules.bonds[b0:b1], molecules.bond_type[b0:b1]
    bond_hot[pairs[:, 0], pairs[:, 1], kinds] = 1.0
    bond_hot[pairs[:, 1], pairs[:, 0], kinds] = 1.0
    row = torch.arange(n).repeat_interleave(n)
    col = torch.arange(n).repeat(n)
    keep = row != col
    row, col = row[keep], col[keep]
    dist = (pos[row] - pos[col]).norm(dim=-1, keepdim=True)
    edge_attr = torch.cat([bond_hot[row, col], dist], dim=1)
    target = molecules.targets[i : i + 1] if y is None else y.unsqueeze(0)
    return Data(
        x=molecules.x[a0:a1],
        edge_index=torch.stack([row, col]),
        edge_attr=edge_attr,
        pos=pos,
        y=target,
        idx=torch.tensor([i]),
    )


class QM9Graphs(torch.utils.data.Dataset[Any]):
    """The molecules ``ids`` (positions in gdb-index order) as PyG graphs built on access,
    with targets ``(y − mean) / std``."""

    def __init__(self, molecules: QM9Molecules, ids: Tensor, mean: Tensor, std: Tensor) -> None:
        self.molecules = molecules
        self.ids = ids.long()
        self.mean = mean
        self.std = std
        self.y = (molecules.targets[self.ids] - mean) / std

    def __len__(self) -> int:
        return int(self.ids.numel())

    def __getitem__(self, k: int) -> Any:
        return graph(self.molecules, int(self.ids[k]), self.y[k])


@dataclass
class Splits:
    """Train/val/test molecule ids and the training split's target mean and std."""

    train: Tensor
    val: Tensor
    test: Tensor
    mean: Tensor
    std: Tensor
    info: dict[str, Any] = field(default_factory=dict)


def make_splits(
    n: int,
    *,
    split_file: str | os.PathLike[str] | None = None,
    seed: int = 0,
    subset: int | None = None,
    sizes: Sequence[int | None] | None = None,
    targets: Tensor | None = None,
) -> Splits:
    """Split ``n`` molecules: from ``split_file`` (a torch-saved int64 permutation; test =
    first 10,000, val = next 10,000, train = the rest) or a permutation seeded by ``seed``
    with the same sizes (scaled down for small ``n``: 1/13 test, 1/13 val).

    ``subset`` keeps that many molecules, drawn with ``seed`` from the permutation's order and
    split in the same proportions (for quick runs). ``sizes`` = ``(train, val, test)`` instead
    keeps the first that many molecules of each part (None: all of it), so a reduced run
    trains on part of the published training set and is tested on published test molecules.
    ``targets`` (n, T) gives the training split's mean and std (else zeros and ones).
    """
    if split_file is not None:
        path = Path(split_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"split file {path} does not exist (the published split is "
                "../shared/data/qm9/random_split.t; omit split_file for a seeded permutation)"
            )
        perm = torch.load(path, weights_only=True)
        if not isinstance(perm, Tensor) or perm.dim() != 1:
            raise ValueError(f"{path}: expected a 1-D tensor of molecule positions")
        perm = perm.long()
        if perm.numel() != n or not torch.equal(perm.sort().values, torch.arange(n)):
            raise ValueError(
                f"{path}: not a permutation of the {n} molecules of the cache "
                f"({perm.numel()} entries); was the cache built from all of qm9pack?"
            )
        test_size, val_size = TEST_SIZE, VAL_SIZE
        source = str(path)
    else:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=g)
        test_size = min(TEST_SIZE, n // 13)
        val_size = min(VAL_SIZE, n // 13)
        source = f"seeded permutation (seed {seed})"
    if subset is not None:
        if not 3 <= subset <= n:
            raise ValueError(f"subset must be between 3 and {n}, not {subset}")
        frac_test, frac_val = test_size / n, val_size / n
        g = torch.Generator().manual_seed(seed + 1)
        perm = perm[torch.randperm(n, generator=g)[:subset]]
        test_size = max(1, round(subset * frac_test))
        val_size = max(1, round(subset * frac_val))
    test = perm[:test_size]
    val = perm[test_size : test_size + val_size]
    train = perm[test_size + val_size :]
    if sizes is not None:
        if subset is not None:
            raise ValueError("give subset or sizes, not both")
        if len(sizes) != 3:
            raise ValueError(f"sizes must be (train, val, test), not {list(sizes)}")
        parts = {"train": train, "val": val, "test": test}
        for (name, part), size in zip(list(parts.items()), sizes, strict=True):
            if size is None:
                continue
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(part):
                raise ValueError(
                    f"{name} size must be an int between 1 and {len(part)} "
                    f"(the {name} part of {source}), not {size!r}"
                )
            parts[name] = part[:size]
        train, val, test = parts["train"], parts["val"], parts["test"]
    if train.numel() == 0:
        raise ValueError(f"no training molecules left ({perm.numel()} in all)")
    if targets is not None:
        mean = targets[train].mean(0)
        std = targets[train].std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
    else:
        mean = torch.zeros(len(TASKS))
        std = torch.ones(len(TASKS))
    info = {
        "split": source,
        "train": int(train.numel()),
        "val": int(val.numel()),
        "test": int(test.numel()),
    }
    return Splits(train, val, test, mean, std, info)


def make_loader(dataset: Any, batch_size: int, shuffle: bool) -> Any:
    """A PyG ``DataLoader`` (shuffling draws from the global torch RNG at iteration start)."""
    from torch_geometric.loader import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def unpack(batch: Any, tasks: Sequence[str] = tuple(TASKS)) -> tuple[Any, dict[str, Tensor]]:
    """``Batch -> (batch, {task: normalised target (B,)})``."""
    return batch, {t: batch.y[:, k] for k, t in enumerate(tasks)}
