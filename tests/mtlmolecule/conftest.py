"""Fixtures for mtlmolecule: caches in the real ``qm9_v1.npz`` format, written by hand (no
qm9pack/RDKit needed) or converted from the first molecules of the installed qm9pack."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mtlmolecule.convert import CACHE_FILE, CACHE_VERSION, TASKS

HAS_CONVERT = all(importlib.util.find_spec(m) is not None for m in ("qm9pack", "rdkit"))
needs_convert = pytest.mark.skipif(
    not HAS_CONVERT, reason="needs qm9pack and rdkit (pip install 'mtlmolecule[convert]')"
)


def write_cache(folder: Path, molecules: list[dict]) -> Path:
    """Write a cache from dicts with z, pos, bonds [(i, j, type)], flags, targets, index."""
    arrays = {
        "version": np.array(CACHE_VERSION),
        "tasks": np.array(list(TASKS)),
        "index": np.array([m["index"] for m in molecules], dtype=np.int32),
        "natoms": np.array([len(m["z"]) for m in molecules], dtype=np.uint8),
        "nbonds": np.array([len(m["bonds"]) for m in molecules], dtype=np.uint8),
        "bond_method": np.zeros(len(molecules), dtype=np.uint8),
        "z": np.concatenate([np.asarray(m["z"], dtype=np.uint8) for m in molecules]),
        "pos": np.concatenate([np.asarray(m["pos"], dtype=np.float32) for m in molecules]),
        "atom_flags": np.concatenate([np.asarray(m["flags"], dtype=np.uint8) for m in molecules]),
        "bonds": np.concatenate(
            [
                np.asarray([b[:2] for b in m["bonds"]], dtype=np.uint8).reshape(-1, 2)
                for m in molecules
            ]
        ),
        "bond_type": np.concatenate(
            [np.asarray([b[2] for b in m["bonds"]], dtype=np.uint8) for m in molecules]
        ),
        "targets": np.stack([np.asarray(m["targets"], dtype=np.float32) for m in molecules]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / CACHE_FILE, **arrays)
    return folder


def water(index: int = 3, shift: float = 0.0) -> dict:
    """H2O: O sp3 (flags 3 << 1) bonded to two H by single bonds."""
    return {
        "index": index,
        "z": [8, 1, 1],
        "pos": [[0.0, 0.0, 0.0], [0.96 + shift, 0.0, 0.0], [-0.24, 0.93, 0.0]],
        "bonds": [(0, 1, 0), (0, 2, 0)],
        "flags": [3 << 1, 0, 0],
        "targets": np.arange(11, dtype=np.float32) + index,
    }


def random_molecules(n: int, seed: int = 0) -> list[dict]:
    """``n`` chain molecules of 3-9 atoms with random elements, positions and targets."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(3, 10))
        z = rng.choice([1, 6, 7, 8, 9], size=k)
        pos = np.cumsum(rng.normal(0.0, 0.8, size=(k, 3)) + np.array([1.2, 0, 0]), axis=0)
        bonds = [(j, j + 1, int(rng.integers(0, 4))) for j in range(k - 1)]
        flags = rng.integers(0, 8, size=k)
        out.append(
            {
                "index": i + 1,
                "z": z,
                "pos": pos,
                "bonds": bonds,
                "flags": flags,
                "targets": rng.normal(size=11) * np.arange(1, 12),
            }
        )
    return out


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 molecules of qm9pack, converted (skips without qm9pack/rdkit)."""
    if not HAS_CONVERT:
        pytest.skip("needs qm9pack and rdkit (pip install 'mtlmolecule[convert]')")
    from mtlmolecule.convert import convert

    folder = tmp_path_factory.mktemp("qm9cache")
    convert(folder, limit=300)
    return folder
