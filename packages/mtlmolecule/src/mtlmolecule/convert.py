"""Convert the QM9 CSVs shipped in the ``qm9pack`` package into mtlmolecule's compact cache.

qm9pack (PyPI, MIT) holds QM9 (Ramakrishnan et al., *Sci. Data* 1, 140022, 2014) as CSVs: one
row per molecule with its gdb ``Index``, elements, positions in Å and the standard properties
in the original units (Hartree, Debye, bohr). It has the 130,831 molecules left after removing
the 3,054 "uncharacterized" ones (133,885 − 3,054; its own column help says so), the same set
and order (by ``Index``) as PyTorch Geometric's ``QM9``.

The cache (``qm9_v1.npz``, about 30 MB) stores per molecule its gdb index, atoms, positions,
the bonds and bond types RDKit determines *from the coordinates* (``rdDetermineBonds``, so the
atom order is the positions' order), per-atom aromaticity and hybridisation, and the 11
targets of the DB-MTL paper in PyG's units. Complete graphs are built on the fly
(:mod:`mtlmolecule.data`).

Units (PyG's ``QM9`` docs): μ in D, α in a0³, ε_HOMO, ε_LUMO, ZPVE in eV, ⟨R²⟩ in a0², U0, U,
H, G as *atomization* energies in eV (the molecule's energy minus its atoms' reference
energies, each property with its own references), c_v in cal/(mol K).

    python -m mtlmolecule.convert --cache-dir ~/.cache/mtlmolecule
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ATOM_REF_HARTREE",
    "CACHE_FILE",
    "HARTREE_TO_EV",
    "TASKS",
    "BondResult",
    "atomization_ev",
    "convert",
    "default_cache_dir",
    "determine_bonds",
    "molecule_targets",
    "qm9pack_data_dir",
    "read_qm9pack",
]

CACHE_FILE = "qm9_v1.npz"
CACHE_VERSION = 1
CACHE_ENV = "MTLMOLECULE_CACHE"

# CODATA 2018 Hartree energy in eV (27.211386245988 eV), the factor PyG's QM9 uses
# (torch_geometric/datasets/qm9.py: HAR2EV = 27.211386246).
HARTREE_TO_EV = 27.211386246

# The DB-MTL paper's 11 QM9 tasks, in PyG's target order (PyG indices 0, 1, 2, 3, 5, 6, 12,
# 13, 14, 15, 11): name -> (unit of the cache, unit of the paper's Table 5, factor between).
TASKS: dict[str, tuple[str, str, float]] = {
    "mu": ("D", "D", 1.0),
    "alpha": ("a0^3", "a0^3", 1.0),
    "homo": ("eV", "meV", 1000.0),
    "lumo": ("eV", "meV", 1000.0),
    "r2": ("a0^2", "a0^2", 1.0),
    "zpve": ("eV", "meV", 1000.0),
    "U0": ("eV", "meV", 1000.0),
    "U": ("eV", "meV", 1000.0),
    "H": ("eV", "meV", 1000.0),
    "G": ("eV", "meV", 1000.0),
    "cv": ("cal/(mol K)", "cal/(mol K)", 1.0),
}

# Atom reference energies in Hartree, from QM9's ``atomref.txt`` (Ramakrishnan et al. 2014,
# figshare collection 978904; the same values PyG's QM9 uses in eV as ``atomrefs``, e.g.
# H: U0 -0.500273 Ha = -13.61312172 eV). Columns: U0 (0 K), U (298.15 K), H (298.15 K),
# G (298.15 K) — each property has its own references.
ATOM_REF_HARTREE: dict[str, tuple[float, float, float, float]] = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063162, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

_CSV_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
_COLUMNS = (
    "Index",
    "SMILES",
    "N_atoms",
    "Elements",
    "XYZ_Ang",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)
_ENERGY_COLUMNS = (
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
)
N_MOLECULES = 130_831

# How the bonds of a molecule were found (stored per molecule in the cache).
BOND_METHODS = ("xyz2mol", "xyz2mol_hueckel", "smiles_template", "connectivity_only")


def default_cache_dir() -> Path:
    """``$MTLMOLECULE_CACHE`` or ``~/.cache/mtlmolecule``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/mtlmolecule").expanduser()


def qm9pack_data_dir() -> Path:
    """The folder of qm9pack's CSVs, found without importing qm9pack (its ``__init__`` needs
    setuptools' removed ``pkg_resources``)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the QM9 conversion needs the qm9pack package (QM9's CSVs): "
            "pip install 'mtlmolecule[convert]' (qm9pack and rdkit), or pass source= a folder "
            f"with {', '.join(_CSV_FILES)}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _require_rdkit() -> Any:
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:
        raise ModuleNotFoundError(
            "the QM9 conversion determines bonds with RDKit: pip install 'mtlmolecule[convert]' "
            "(qm9pack and rdkit)"
        ) from e
    RDLogger.DisableLog("rdApp.*")  # type: ignore[attr-defined]
    return Chem


@dataclass(frozen=True)
class Record:
    """One parsed CSV row: the gdb index, SMILES, elements, positions (Å) and raw properties."""

    index: int
    smiles: str
    elements: tuple[str, ...]
    positions: np.ndarray
    props: dict[str, float]


def _floats(text: str, where: str, column: str) -> list[float]:
    try:
        return [float(s) for s in text.replace("[", " ").replace("]", " ").split(",")]
    except ValueError as e:
        raise ValueError(f"{where}: column {column} is not a list of numbers ({e})") from e


def read_qm9pack(
    source: str | os.PathLike[str] | None = None, *, limit: int | None = None
) -> Iterator[Record]:
    """Parse qm9pack's ``qm9_part{1,2,3}.csv`` (in ``source`` or the installed package),
    yielding molecules in file order (at most ``limit``). Raises ``ValueError`` naming the file,
    line and column of a malformed row."""
    folder = Path(source) if source is not None else qm9pack_data_dir()
    csv.field_size_limit(sys.maxsize)
    seen = 0
    for name in _CSV_FILES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: the QM9 conversion reads qm9pack's {', '.join(_CSV_FILES)} "
                "(pip install qm9pack, or point source= at a folder holding them)"
            )
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: columns {missing} are missing (is this qm9pack's CSV?)")
            for row in reader:
                if limit is not None and seen >= limit:
                    return
                yield _parse_row(row, f"{path}, line {reader.line_num}")
                seen += 1


def _parse_row(row: dict[str, str], where: str) -> Record:
    try:
        index = int(row["Index"])
        n = int(row["N_atoms"])
        props = {c: float(row[c]) for c in _COLUMNS[5:]}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad number in Index/N_atoms/property columns ({e})") from e
    elements = tuple(s.strip(" '\"") for s in row["Elements"].strip("[] ").split(","))
    unknown = sorted({e for e in elements if e not in ATOMIC_NUMBER})
    if unknown:
        raise ValueError(
            f"{where}: column Elements has unknown elements {unknown} (expected HCNOF)"
        )
    xyz = _floats(row["XYZ_Ang"], where, "XYZ_Ang")
    if len(elements) != n or len(xyz) != 3 * n:
        raise ValueError(
            f"{where}: N_atoms = {n} but Elements has {len(elements)} entries and XYZ_Ang "
            f"{len(xyz)} numbers (expected {3 * n})"
        )
    bad = [c for c, v in props.items() if not np.isfinite(v)]
    if bad:
        raise ValueError(f"{where}: non-finite values in columns {bad}")
    pos = np.asarray(xyz, dtype=np.float64).reshape(n, 3)
    return Record(index, row["SMILES"], elements, pos, props)


def atomization_ev(energy_hartree: float, elements: Sequence[str], column: int) -> float:
    """Atomization energy in eV: ``(E − Σ_atoms E_ref[atom, column]) · HARTREE_TO_EV``,
    ``column`` 0..3 for U0, U, H, G."""
    ref = sum(ATOM_REF_HARTREE[e][column] for e in elements)
    return (energy_hartree - ref) * HARTREE_TO_EV


def molecule_targets(record: Record) -> np.ndarray:
    """The 11 targets of :data:`TASKS` (float64) in PyG's units."""
    p = record.props
    energies = [atomization_ev(p[c], record.elements, k) for k, c in enumerate(_ENERGY_COLUMNS)]
    return np.array(
        [
            p["Dipole_debye"],
            p["Polarizability_bohr3"],
            p["HOMO_au"] * HARTREE_TO_EV,
            p["LUMO_au"] * HARTREE_TO_EV,
            p["R2_bohr2"],
            p["ZPVE_au"] * HARTREE_TO_EV,
            *energies,
            p["Heatcapacity_Cv_cal_mol_K"],
        ],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class BondResult:
    """Bonds of one molecule: ``pairs`` (B, 2) atom indices, ``types`` (B,) 0..3 for single,
    double, triple, aromatic; per atom ``aromatic`` (bool) and ``hybridization`` (0 other,
    1 sp, 2 sp2, 3 sp3); ``method`` indexes :data:`BOND_METHODS`."""

    pairs: np.ndarray
    types: np.ndarray
    aromatic: np.ndarray
    hybridization: np.ndarray
    method: int


def _xyz_mol(chem: Any, elements: Sequence[str], pos: np.ndarray) -> Any:
    from rdkit.Geometry import Point3D

    mol = chem.RWMol()
    conf = chem.Conformer(len(elements))
    for i, e in enumerate(elements):
        atom = chem.Atom(ATOMIC_NUMBER[e])
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
        conf.SetAtomPosition(i, Point3D(*(float(v) for v in pos[i])))
    mol.AddConformer(conf, assignId=True)
    return mol


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Silence what native code writes to file descriptors 1 and 2."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def determine_bonds(elements: Sequence[str], pos: np.ndarray, smiles: str = "") -> BondResult:
    """Bonds, bond orders and aromaticity from the coordinates (atom order = ``pos`` order).

    RDKit's ``rdDetermineBonds.DetermineBonds`` (xyz2mol, Kim & Kim 2015) with charge 0; where
    it finds no valid assignment (strained cages), the Hückel connectivity, then the bond
    orders of the molecule's SMILES mapped onto the connectivity, then connectivity with single
    bonds. The method used is recorded per molecule.
    """
    chem = _require_rdkit()
    from rdkit.Chem import AllChem, rdDetermineBonds

    mol: Any = None
    method = 0
    attempts: list[Any] = [
        lambda m: rdDetermineBonds.DetermineBonds(m, charge=0),
        lambda m: rdDetermineBonds.DetermineBonds(m, charge=0, useHueckel=True),
    ]
    for k, attempt in enumerate(attempts):
        m = _xyz_mol(chem, elements, pos)
        try:
            # YAeHMOP (the Hückel path) prints "Distance ... is suspicious" for every O-H bond
            with _quiet_native_output() if k else contextlib.nullcontext():
                attempt(m)
            mol, method = m, k
            break
        except Exception:
            continue
    if mol is None and smiles:
        m = _xyz_mol(chem, elements, pos)
        try:
            rdDetermineBonds.DetermineConnectivity(m)
            template = chem.AddHs(chem.MolFromSmiles(smiles))
            mol, method = AllChem.AssignBondOrdersFromTemplate(template, m), 2
        except Exception:
            mol = None
    if mol is None:
        mol = _xyz_mol(chem, elements, pos)
        rdDetermineBonds.DetermineConnectivity(mol)
        method = 3
    try:
        chem.SanitizeMol(mol)
    except Exception:
        mol.UpdatePropertyCache(strict=False)
        chem.SetHybridization(mol)
    codes = {
        chem.BondType.SINGLE: 0,
        chem.BondType.DOUBLE: 1,
        chem.BondType.TRIPLE: 2,
        chem.BondType.AROMATIC: 3,
    }
    hyb = {
        chem.HybridizationType.SP: 1,
        chem.HybridizationType.SP2: 2,
        chem.HybridizationType.SP3: 3,
    }
    bonds = list(mol.GetBonds())
    pairs = np.array(
        [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in bonds], dtype=np.uint8
    ).reshape(-1, 2)
    types = np.array([codes.get(b.GetBondType(), 0) for b in bonds], dtype=np.uint8)
    atoms = list(mol.GetAtoms())
    aromatic = np.array([a.GetIsAromatic() for a in atoms], dtype=bool)
    hybridization = np.array([hyb.get(a.GetHybridization(), 0) for a in atoms], dtype=np.uint8)
    return BondResult(pairs, types, aromatic, hybridization, method)


def convert(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    source: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Convert qm9pack's CSVs into ``<cache_dir>/qm9_v1.npz`` and return its path.

    Molecules are stored in gdb-index order (sorted by ``Index``), the order the published
    split file indexes. An existing cache is kept unless ``overwrite``. ``limit`` converts only
    the first molecules in file order (for tests); ``source`` is a folder with qm9pack's CSVs.
    """
    out_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = out_dir / CACHE_FILE
    if out.is_file() and not overwrite:
        return out
    _require_rdkit()
    indices: list[int] = []
    natoms: list[int] = []
    nbonds: list[int] = []
    z: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    types: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    methods: list[int] = []
    start = time.time()
    for k, rec in enumerate(read_qm9pack(source, limit=limit)):
        bonds = determine_bonds(rec.elements, rec.positions, rec.smiles)
        indices.append(rec.index)
        natoms.append(len(rec.elements))
        nbonds.append(len(bonds.types))
        z.append(np.array([ATOMIC_NUMBER[e] for e in rec.elements], dtype=np.uint8))
        centred = rec.positions - rec.positions.mean(axis=0)  # distances are unchanged
        pos.append(centred.astype(np.float32))
        flags.append(bonds.aromatic.astype(np.uint8) | (bonds.hybridization << 1))
        pairs.append(bonds.pairs)
        types.append(bonds.types)
        targets.append(molecule_targets(rec))
        methods.append(bonds.method)
        if progress and (k + 1) % 10000 == 0:
            print(f"converted {k + 1} molecules in {time.time() - start:.0f}s", file=sys.stderr)
    if not indices:
        raise ValueError("qm9pack's CSVs held no molecules")
    order = np.argsort(np.asarray(indices), kind="stable")
    if len(set(indices)) != len(indices):
        raise ValueError("qm9pack's CSVs repeat a molecule Index: the files are corrupt")

    def cat(parts: list[np.ndarray], dtype: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
        chosen = [parts[i] for i in order]
        return np.concatenate(chosen).astype(dtype) if chosen else np.zeros((0, *shape), dtype)

    arrays = {
        "version": np.array(CACHE_VERSION),
        "tasks": np.array(list(TASKS)),
        "index": np.asarray(indices, dtype=np.int32)[order],
        "natoms": np.asarray(natoms, dtype=np.uint8)[order],
        "nbonds": np.asarray(nbonds, dtype=np.uint8)[order],
        "bond_method": np.asarray(methods, dtype=np.uint8)[order],
        "z": cat(z, np.uint8),
        "pos": cat(pos, np.float32, (3,)),
        "atom_flags": cat(flags, np.uint8),
        "bonds": cat(pairs, np.uint8, (2,)),
        "bond_type": cat(types, np.uint8),
        "targets": np.stack([targets[i] for i in order]).astype(np.float32),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(out)
    if progress:
        counts = np.bincount(arrays["bond_method"], minlength=len(BOND_METHODS))
        how = ", ".join(f"{m}: {int(c)}" for m, c in zip(BOND_METHODS, counts, strict=True))
        print(
            f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(indices)} molecules; "
            f"bonds by {how}) in {time.time() - start:.0f}s",
            file=sys.stderr,
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mtlmolecule.convert [--cache-dir DIR] [--source DIR] [--overwrite]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", default=None, help="default: ~/.cache/mtlmolecule")
    parser.add_argument("--source", default=None, help="folder with qm9pack's CSVs")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = convert(
        args.cache_dir,
        source=args.source,
        limit=args.limit,
        overwrite=args.overwrite,
        progress=True,
    )
    print(path)


if __name__ == "__main__":
    main()
