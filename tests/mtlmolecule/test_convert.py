"""Conversion of qm9pack's CSVs: targets against published values, bonds, errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mtlmolecule.convert import (
    ATOM_REF_HARTREE,
    HARTREE_TO_EV,
    TASKS,
    atomization_ev,
    read_qm9pack,
)

from .conftest import needs_convert

# PyG's QM9 targets of molecule gdb 1 (methane), PyG indices [0,1,2,3,5,6,12,13,14,15,11]:
# torch_geometric.datasets.QM9()[0].y, in D, a0^3, eV, eV, a0^2, eV, eV x4, cal/(mol K).
METHANE_PYG = [0.0, 13.21, -10.5499, 3.1865, 35.3641, 1.2177,
               -17.1722, -17.2868, -17.3897, -16.1519, 6.469]  # fmt: skip


def test_atom_references_match_pyg() -> None:
    """Our Hartree references x HARTREE_TO_EV are PyG's ``atomrefs`` (eV) for U0, U, H, G
    (to 0.1 meV: PyG's were converted with a slightly different factor)."""
    qm9 = pytest.importorskip("torch_geometric.datasets.qm9")
    for column, target in enumerate((7, 8, 9, 10)):
        for k, element in enumerate("HCNOF"):
            ours = ATOM_REF_HARTREE[element][column] * HARTREE_TO_EV
            assert ours == pytest.approx(qm9.atomrefs[target][k], abs=1e-4), (element, column)


def test_atomization_uses_each_property_references() -> None:
    # methane's raw QM9 energies (dsgdb9nsd_000001.xyz), Hartree
    raw = (-40.47893, -40.476062, -40.475117, -40.498597)
    got = [atomization_ev(e, "CHHHH", k) for k, e in enumerate(raw)]
    assert got == pytest.approx(METHANE_PYG[6:10], abs=1e-3)
    # one reference set for all four would be wrong by > 0.5 eV for G
    wrong = atomization_ev(raw[3], "CHHHH", 0)
    assert abs(wrong - METHANE_PYG[9]) > 0.5


@needs_convert
def test_converted_targets_match_published(real_cache: Path) -> None:
    from mtlmolecule.data import load_molecules

    mols = load_molecules(real_cache)
    assert mols.tasks == list(TASKS)
    assert mols.index.tolist() == sorted(mols.index.tolist())  # gdb-index order
    assert mols.index[0] == 1
    assert mols.targets[0].tolist() == pytest.approx(METHANE_PYG, abs=1e-3)
    # water (gdb 3): U0 = -76.404702 Ha in QM9; O + 2 H references
    water = int((mols.index == 3).nonzero())
    expected = (-76.404702 - (-75.064579 + 2 * -0.500273)) * HARTREE_TO_EV
    assert float(mols.targets[water, 6]) == pytest.approx(expected, abs=1e-4)
    assert float(mols.targets[water, 0]) == pytest.approx(1.8511, abs=1e-4)  # μ (D)


@needs_convert
def test_bonds_from_coordinates(real_cache: Path) -> None:
    from mtlmolecule.data import load_molecules

    mols = load_molecules(real_cache)

    def bonds_of(gdb: int) -> tuple[list[int], list[tuple[int, int]]]:
        i = int((mols.index == gdb).nonzero())
        b0, b1 = int(mols.bond_ptr[i]), int(mols.bond_ptr[i + 1])
        return mols.bond_type[b0:b1].tolist(), [tuple(p) for p in mols.bonds[b0:b1].tolist()]

    types, pairs = bonds_of(1)  # methane: 4 single C-H bonds
    assert types == [0, 0, 0, 0] and all(0 in p for p in pairs)
    types, _ = bonds_of(4)  # acetylene H-C#C-H: one triple bond
    assert sorted(types) == [0, 0, 2]
    i = int((mols.index == 4).nonzero())
    a0, a1 = int(mols.atom_ptr[i]), int(mols.atom_ptr[i + 1])
    carbons = mols.x[a0:a1][mols.x[a0:a1, 5] == 6]
    assert carbons[:, 7].tolist() == [1.0, 1.0]  # sp
    assert mols.x[:, 6].sum() > 0  # some aromatic atoms among the first 300 molecules


def _write_csvs(folder: Path, rows: list[dict[str, str]]) -> None:
    header = ["XYZ_file", "Index", "SMILES", "InChi", "N_atoms", "Elements", "XYZ_Ang",
              "Dipole_debye", "Polarizability_bohr3", "HOMO_au", "LUMO_au", "R2_bohr2",
              "ZPVE_au", "InternalEnergy_0K_au", "InternalEnergy_298K_au", "Enthalphy_298K_au",
              "GibbsFreeEnergy_298K_au", "Heatcapacity_Cv_cal_mol_K"]  # fmt: skip
    for k, name in enumerate(("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")):
        with (folder / name).open("w", newline="") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            for row in rows if k == 0 else []:
                w.writerow({h: row.get(h, "1.0") for h in header})


def _water_row(**over: str) -> dict[str, str]:
    row = {"Index": "3", "SMILES": "O", "N_atoms": "3", "Elements": "['O','H','H']",
           "XYZ_Ang": "[[0.,0.,0.],[0.96,0.,0.],[-0.24,0.93,0.]]",
           "InternalEnergy_0K_au": "-76.404702"}  # fmt: skip
    return {**row, **over}


def test_reads_the_csv_format(tmp_path: Path) -> None:
    _write_csvs(tmp_path, [_water_row()])
    (rec,) = list(read_qm9pack(tmp_path))
    assert rec.index == 3 and rec.elements == ("O", "H", "H")
    assert rec.positions.shape == (3, 3)
    assert rec.positions[1, 0] == pytest.approx(0.96)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"XYZ_Ang": "[[0.,0.,0.],[0.96,0.]]"}, "N_atoms = 3"),
        ({"XYZ_Ang": "[[0.,0.,x],[0.96,0.,0.],[1,1,1]]"}, "XYZ_Ang"),
        ({"Elements": "['O','H','Xe']"}, "unknown elements"),
        ({"Dipole_debye": "nan"}, "non-finite"),
    ],
)
def test_malformed_rows_name_file_and_column(
    tmp_path: Path, over: dict[str, str], message: str
) -> None:
    _write_csvs(tmp_path, [_water_row(), _water_row(**over)])
    with pytest.raises(ValueError, match=message) as err:
        list(read_qm9pack(tmp_path))
    assert "qm9_part1.csv, line 3" in str(err.value)


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pip install qm9pack"):
        list(read_qm9pack(tmp_path))
    (tmp_path / "qm9_part1.csv").write_text("Index,SMILES\n1,C\n")
    (tmp_path / "qm9_part2.csv").write_text("")
    (tmp_path / "qm9_part3.csv").write_text("")
    with pytest.raises(ValueError, match=r"columns .* are missing"):
        list(read_qm9pack(tmp_path))


def test_tasks_are_the_papers_eleven_in_pyg_order() -> None:
    assert list(TASKS) == ["mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv"]
    assert {t for t, (_, unit, _) in TASKS.items() if unit == "meV"} == {
        "homo", "lumo", "zpve", "U0", "U", "H", "G"
    }  # fmt: skip
    assert np.isclose(TASKS["homo"][2], 1000.0)
