"""Generic ASE input (extxyz, ASE-db) and extxyz output."""

from __future__ import annotations

import ase
import ase.db
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from atomnet.data.ase_io import read_ase, write_extxyz
from atomnet.errors import DataFormatError
from atomnet.units import KCAL_PER_MOL


def parse_extxyz_by_hand(path, n_frames):
    lines = path.read_text().splitlines()
    natoms = int(lines[0])
    energies, rows = [], []
    for f in range(n_frames):
        block = lines[f * (natoms + 2) : (f + 1) * (natoms + 2)]
        energies.append(float(block[1].split("energy=")[1].split()[0]))
        rows.append(np.array([line.split()[1:] for line in block[2:]], dtype=float))
    rows = np.concatenate(rows)
    return np.array(energies), rows[:, :3], rows[:, 3:]


@pytest.mark.parametrize("rel", ["md17/ethanol_dft_1200.xyz", "rmd17/rmd17_ethanol_1000.xyz"])
def test_md17_extxyz(shared_data, rel):
    path = shared_data / rel
    t = read_ase(path, index=":50", energy_unit="kcal/mol")
    e, pos, forces = parse_extxyz_by_hand(path, 50)
    assert t.n_molecules == 50 and t.n_atoms.tolist() == [9] * 50
    np.testing.assert_array_equal(t.properties["energy"], e)
    np.testing.assert_array_equal(t.positions, pos)
    np.testing.assert_array_equal(t.properties["forces"], forces)
    assert t.units == {"energy": "kcal/mol", "forces": "kcal/mol/Angstrom"}
    assert t.numbers[:9].tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert t.cells is None and t.pbcs is None


def test_full_md17_file(shared_data):
    t = read_ase(shared_data / "md17" / "ethanol_dft_1200.xyz", energy_unit="kcal/mol")
    assert t.n_molecules == 1200
    assert t.properties["energy"][0] == -97197.1953092244  # header of frame 0, read by eye
    assert -97210 < t.properties["energy"].mean() < -97180


def test_write_extxyz_roundtrip(shared_data, tmp_path):
    t = read_ase(shared_data / "rmd17" / "rmd17_ethanol_1000.xyz", index=":20", energy_unit="kcal/mol")
    out = write_extxyz(t, tmp_path / "out.xyz")
    assert [p.name for p in tmp_path.iterdir()] == ["out.xyz"]  # no temp file left
    back = read_ase(out)  # written in eV and Å
    np.testing.assert_allclose(back.properties["energy"], t.properties["energy"] * KCAL_PER_MOL, rtol=1e-12)
    # ASE writes 8 decimals per column
    np.testing.assert_allclose(back.properties["forces"], t.properties["forces"] * KCAL_PER_MOL, atol=1e-8)
    np.testing.assert_allclose(back.positions, t.positions, atol=1e-8)
    raw = read_ase(out, energy_unit="kcal/mol")
    assert raw.units["forces"] == "kcal/mol/Angstrom"
    write_extxyz(t, tmp_path / "raw.xyz", internal_units=False)
    np.testing.assert_array_equal(read_ase(tmp_path / "raw.xyz").properties["energy"], t.properties["energy"])


def _periodic_frames():
    frames = []
    for k in range(3):
        a = ase.Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3 + 0.1 * k]], cell=np.eye(3) * 5.4, pbc=True)
        a.calc = SinglePointCalculator(a, energy=-10.0 - k, forces=np.full((2, 3), 0.1 * k))
        frames.append(a)
    return frames


def test_ase_db_and_periodic(tmp_path):
    frames = _periodic_frames()
    with ase.db.connect(tmp_path / "si.db") as db:
        for a in frames:
            db.write(a)
    t = read_ase(tmp_path / "si.db")
    assert t.n_molecules == 3
    np.testing.assert_array_equal(t.properties["energy"], [-10.0, -11.0, -12.0])
    np.testing.assert_array_equal(t.cells, np.stack([np.eye(3) * 5.4] * 3))
    assert t.pbcs.all() and t.units["energy"] == "eV"
    write_extxyz(t, tmp_path / "si.xyz")
    back = read_ase(tmp_path / "si.xyz")
    np.testing.assert_allclose(back.cells, t.cells)
    np.testing.assert_allclose(back.properties["forces"], t.properties["forces"])


def test_custom_keys(tmp_path):
    frames = []
    for k in range(2):
        a = ase.Atoms("H2O", positions=np.eye(3) + k)
        a.info["dft_energy"] = -76.0 - k
        a.arrays["dft_forces"] = np.ones((3, 3)) * k
        frames.append(a)
    ase.io.write(tmp_path / "w.xyz", frames)
    t = read_ase(tmp_path / "w.xyz", energy_key="dft_energy", forces_key="dft_forces", energy_unit="Hartree")
    assert t.properties["energy"].tolist() == [-76.0, -77.0] and t.units["forces"] == "Hartree/Angstrom"
    assert "energy" not in read_ase(tmp_path / "w.xyz").properties  # no key given, none present: no energy


# ---------------------------------------------------------------------------------------------- broken
def test_missing_energy_key(shared_data, tmp_path):
    frames = _periodic_frames()
    frames[1].calc = None
    ase.io.write(tmp_path / "partial.xyz", frames)
    with pytest.raises(DataFormatError, match=r"partial\.xyz \(frame 1\): no energy 'energy'"):
        read_ase(tmp_path / "partial.xyz", energy_key="energy")
    with pytest.raises(DataFormatError, match=r"ethanol_dft_1200\.xyz \(frame 0\): no energy 'dft'"):
        read_ase(shared_data / "md17" / "ethanol_dft_1200.xyz", index=":2", energy_key="dft")


def test_nan_coordinates(shared_data, tmp_path):
    lines = (shared_data / "md17" / "ethanol_dft_1200.xyz").read_text().splitlines()[:22]
    lines[13] = lines[13].replace("-0.29742780", "nan", 1)  # frame 1, atom 0
    (tmp_path / "nan.xyz").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"nan\.xyz \(frame 1, atom 0\): NaN/inf coordinates"):
        read_ase(tmp_path / "nan.xyz", energy_unit="kcal/mol")


@pytest.mark.parametrize(
    "text",
    [
        '9\nProperties=species:S:1:pos:R:3 pbc="F F F"\nC 0 0 0\n',  # truncated
        "2\n\nC 0 0 0\nC x 0 0\n",  # non-numeric
        "\x00\x01binary garbage\n",
    ],
)
def test_unreadable(tmp_path, text):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(
        DataFormatError, match=r"bad\.xyz( \((frame|line) [^)]*\))?: [^\n]+$"
    ):  # one line, file + place
        read_ase(path)


def test_not_found(tmp_path):
    with pytest.raises(DataFormatError, match=r"missing\.xyz: file not found"):
        read_ase(tmp_path / "missing.xyz")
