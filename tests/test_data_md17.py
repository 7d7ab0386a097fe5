"""MD17 / rMD17 npz readers and index files on the real shared data, and broken inputs."""

from __future__ import annotations

import numpy as np
import pytest

from atomnet.data.md17 import read_index_file, read_md17_npz, read_rmd17_npz
from atomnet.errors import DataFormatError


@pytest.fixture(scope="module")
def ccsd(shared_data):
    path = shared_data / "md17" / "ethanol_ccsd_t-train.npz"
    with np.load(path) as d:
        raw = {k: d[k] for k in d.files}
    return path, raw


def test_md17_npz_matches_np_load(ccsd):
    path, raw = ccsd
    t = read_md17_npz(path)
    assert t.n_molecules == 1000 and t.n_atoms.tolist() == [9] * 1000
    np.testing.assert_array_equal(t.properties["energy"], raw["E"][:, 0])
    np.testing.assert_array_equal(t.properties["forces"], raw["F"].reshape(-1, 3))
    np.testing.assert_array_equal(t.positions, raw["R"].reshape(-1, 3))
    assert t.numbers[:9].tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1] and len(t.numbers) == 9000
    assert t.units == {"energy": "kcal/mol", "forces": "kcal/mol/Angstrom"} and t.per_atom == {"forces"}
    assert t.meta["name"] == "ethanol_ccsd" and t.meta["theory"] == "Psi4: CCSD(T), cc-pVTZ"
    assert t.meta["md5"] == "cdad377f9048f070ba9071b647d19397"
    assert -97096 < t.properties["energy"].min() and t.properties["energy"].max() < -97064


def _rmd17_from_extxyz(path, out, n=50):
    """A small rMD17-layout npz from the shared rMD17 extxyz frames (parsed by hand, without ASE)."""
    lines = path.read_text().splitlines()
    natoms = int(lines[0])
    coords, forces, energies = [], [], []
    for f in range(n):
        block = lines[f * (natoms + 2) : (f + 1) * (natoms + 2)]
        energies.append(float(block[1].split("energy=")[1].split()[0]))
        rows = np.array([line.split()[1:] for line in block[2:]], dtype=float)
        coords.append(rows[:, :3])
        forces.append(rows[:, 3:])
    data = dict(
        nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]),
        coords=np.array(coords),
        energies=np.array(energies),
        forces=np.array(forces),
        old_indices=np.arange(n) * 7,
        old_energies=np.array(energies) - 120.0,
        old_forces=np.array(forces) * 1.01,
    )
    np.savez(out, **data)
    return data


def test_rmd17_npz(shared_data, tmp_path):
    raw = _rmd17_from_extxyz(shared_data / "rmd17" / "rmd17_ethanol_1000.xyz", tmp_path / "rmd17_ethanol.npz")
    t = read_rmd17_npz(tmp_path / "rmd17_ethanol.npz")
    assert t.n_molecules == 50
    np.testing.assert_array_equal(t.properties["energy"], raw["energies"])
    assert t.properties["energy"][0] == -97078.10995362196  # header of frame 0, read by eye
    np.testing.assert_array_equal(t.properties["forces"], raw["forces"].reshape(-1, 3))
    np.testing.assert_array_equal(t.positions, raw["coords"].reshape(-1, 3))
    np.testing.assert_array_equal(t.properties["old_indices"], raw["old_indices"])
    np.testing.assert_array_equal(t.properties["old_energy"], raw["old_energies"])
    assert t.per_atom == {"forces", "old_forces"} and t.units["old_energy"] == "kcal/mol"
    assert "old_energy" not in read_rmd17_npz(tmp_path / "rmd17_ethanol.npz", include_old=False).properties


def test_index_file(tmp_path):
    path = tmp_path / "index_train_01.csv"
    path.write_text("\n".join(str(i) for i in [5, 3, 999]) + "\n")
    assert read_index_file(path, n=1000).tolist() == [5, 3, 999]
    path.write_text("index\n1,2\n# comment\n3\n")
    assert read_index_file(path).tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("1\n2\nabc\n", r"\(line 3\): 'abc' is not an integer"),
        ("1\n2.5\n", "not an integer"),
        ("1\n1000\n", r"\(line 2\): index 1000 out of range \[0, 1000\)"),
        ("-1\n", "out of range"),
        ("\n", "no indices"),
    ],
)
def test_bad_index_file(tmp_path, text, problem):
    path = tmp_path / "index_test_01.csv"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=rf"index_test_01\.csv.*{problem}"):
        read_index_file(path, n=1000)


# ---------------------------------------------------------------------------------------------- broken
def _save(tmp_path, raw, **changes):
    data = {**raw, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **data)
    return tmp_path / "bad.npz"


def test_missing_keys(ccsd, tmp_path):
    with pytest.raises(DataFormatError, match=r"bad\.npz: missing keys \['F'\]"):
        read_md17_npz(_save(tmp_path, ccsd[1], F=None))
    with pytest.raises(DataFormatError, match=r"bad\.npz: missing keys \['nuclear_charges', 'coords'"):
        read_rmd17_npz(_save(tmp_path, ccsd[1]))


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda r: {"E": r["E"][:10]}, r"E must have shape \(1000,\) or \(1000, 1\)"),
        (lambda r: {"R": r["R"][:10], "F": r["F"][:10]}, r"E must have shape \(10,\)"),
        (lambda r: {"z": r["z"][:8]}, r"R must have shape \(n, 8, 3\) for natoms = len\(z\)"),
        (lambda r: {"F": r["F"][:, :8]}, r"F must have the shape of R"),
        (lambda r: {"z": np.zeros((0,), dtype=int)}, r"z must have shape \(natoms,\)"),
    ],
)
def test_mismatched_shapes(ccsd, tmp_path, change, problem):
    with pytest.raises(DataFormatError, match=rf"bad\.npz: {problem}"):
        read_md17_npz(_save(tmp_path, ccsd[1], **change(ccsd[1])))


def test_nan_inf(ccsd, tmp_path):
    raw = ccsd[1]
    r = raw["R"].copy()
    r[7, 2, 1] = np.nan
    with pytest.raises(DataFormatError, match=r"bad\.npz \(frame 7\): NaN/inf in R"):
        read_md17_npz(_save(tmp_path, raw, R=r))
    e = raw["E"].copy()
    e[3] = np.inf
    with pytest.raises(DataFormatError, match=r"bad\.npz \(frame 3\): NaN/inf in E"):
        read_md17_npz(_save(tmp_path, raw, E=e))


def test_not_an_npz(ccsd, tmp_path):
    path = tmp_path / "md17_ethanol.npz"
    path.write_text("this is not a zip file\n")
    with pytest.raises(DataFormatError, match=r"md17_ethanol\.npz: not a readable \.npz archive"):
        read_md17_npz(path)
    path.write_bytes(ccsd[0].read_bytes()[:100_000])  # truncated zip
    with pytest.raises(DataFormatError, match=r"md17_ethanol\.npz: not a readable \.npz archive"):
        read_md17_npz(path)
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataFormatError, match=r"single\.npy: not an \.npz archive"):
        read_md17_npz(tmp_path / "single.npy")
    with pytest.raises(DataFormatError, match=r"nothere\.npz: file not found"):
        read_rmd17_npz(tmp_path / "nothere.npz")
