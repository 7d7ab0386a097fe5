"""HDF5 store: unit conversion, provenance, atomic writes, validation and clear errors on bad files."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from atomnet.data import store as store_mod
from atomnet.data.store import FORMAT_VERSION, Store, format_summary, open_store, write_store
from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError
from atomnet.units import BOHR, HARTREE, KCAL_PER_MOL


def synthetic_table(n_mol: int = 20, seed: int = 0, source: str = "synthetic") -> MoleculeTable:
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(2, 9, size=n_mol)
    total = int(n_atoms.sum())
    return MoleculeTable(
        numbers=rng.choice([1, 6, 7, 8], size=total),
        positions=rng.normal(size=(total, 3)) * 2.0,
        n_atoms=n_atoms,
        properties={
            "energy": rng.normal(size=n_mol) * 1000.0,
            "forces": rng.normal(size=(total, 3)) * 10.0,
            "mu": rng.random(n_mol),
        },
        units={"energy": "kcal/mol", "forces": "kcal/mol/Angstrom", "mu": "D"},
        per_atom={"forces"},
        source=source,
        ids=np.arange(1, n_mol + 1),
        meta={"reader": "synthetic"},
    )


def test_units_layout_and_provenance(tmp_path):
    src = tmp_path / "source.txt"
    src.write_text("hello")
    table = synthetic_table(source=str(src))
    out = write_store(table, tmp_path / "s.h5", progress=False)
    with h5py.File(out, "r") as f:
        for name in ("numbers", "positions", "offsets", "properties/energy", "atom_properties/forces"):
            assert f[name].chunks is None and f[name].compression is None  # contiguous, memory-mappable
        assert f["numbers"].dtype == np.int8 and f["positions"].dtype == np.float32
        assert f["properties/energy"].dtype == np.float64
        assert f["properties/energy"].attrs["unit"] == "eV"
        assert f["properties/energy"].attrs["source_unit"] == "kcal/mol"
        assert f["atom_properties/forces"].attrs["unit"] == "eV/Angstrom"
        assert f["positions"].attrs["unit"] == "Angstrom"
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["source_sha256"] == store_mod.sha256_of(src)
        assert f.attrs["meta.reader"] == "synthetic"
        assert f.attrs["created_utc"].endswith("+00:00")
    with open_store(out) as s:
        assert s.n_molecules == 20 and s.n_atoms_total == table.n_atoms.sum()
        np.testing.assert_array_equal(s.offsets, table.offsets)
        np.testing.assert_allclose(
            s.property("energy"), table.properties["energy"] * KCAL_PER_MOL, rtol=1e-12
        )
        np.testing.assert_allclose(s.property("forces"), table.properties["forces"] * KCAL_PER_MOL, rtol=1e-6)
        np.testing.assert_allclose(s.property("mu"), table.properties["mu"], rtol=1e-6)  # D kept as is
        np.testing.assert_array_equal(s.numbers, table.numbers)
        z, pos = s.molecule(3)
        a, b = table.offsets[3], table.offsets[4]
        np.testing.assert_array_equal(z, table.numbers[a:b])
        np.testing.assert_allclose(pos, table.positions[a:b], rtol=1e-6)
        np.testing.assert_array_equal(s.file["ids"][()], table.ids)
        summary = s.summary()
    assert summary["properties"]["energy"]["unit"] == "eV"
    assert set(summary["elements"]) <= {1, 6, 7, 8}
    text = format_summary(summary)
    assert "energy" in text and "kcal/mol" in text and "eV/Angstrom" in text


def test_length_and_hartree_conversion(tmp_path):
    table = MoleculeTable(
        numbers=np.array([6, 1, 1, 1, 1]),
        positions=np.arange(15.0).reshape(5, 3),
        n_atoms=np.array([5]),
        properties={"U0": np.array([-40.47893])},
        units={"U0": "Hartree"},
        length_unit="Bohr",
        cells=np.eye(3)[None] * 10.0,
        pbcs=np.array([[True, True, False]]),
    )
    with open_store(write_store(table, tmp_path / "m.h5", progress=False)) as s:
        assert s.property("U0")[0] == pytest.approx(-40.47893 * HARTREE, rel=1e-12)
        np.testing.assert_allclose(s.positions, table.positions * BOHR, rtol=1e-6)
        np.testing.assert_allclose(s.file["cells"][()], 10.0 * BOHR * np.eye(3)[None], rtol=1e-6)
        assert s.file["pbcs"][()].tolist() == [[True, True, False]]
        assert s.source_unit("positions") == "Bohr"


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    original = store_mod._write_dataset

    def failing(group, name, *args):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted mid-way
        original(group, name, *args)

    monkeypatch.setattr(store_mod, "_write_dataset", failing)
    with pytest.raises(KeyboardInterrupt):
        write_store(synthetic_table(), tmp_path / "out.h5", progress=False)
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []  # neither the store nor the temporary file


def test_failed_overwrite_keeps_old_store(tmp_path, monkeypatch):
    out = write_store(synthetic_table(n_mol=5), tmp_path / "out.h5", progress=False)

    def failing(*args):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "_write_dataset", failing)
    with pytest.raises(OSError):
        write_store(synthetic_table(n_mol=7), out, progress=False)
    assert os.listdir(tmp_path) == ["out.h5"]
    with open_store(out) as s:
        assert s.n_molecules == 5


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.positions.__setitem__((7, 1), np.nan), "non-finite position"),
        (lambda t: t.positions.__setitem__((7, 0), np.inf), "non-finite position"),
        (lambda t: t.numbers.__setitem__(7, 0), "atomic number 0"),
        (lambda t: t.numbers.__setitem__(7, 119), "atomic number 119"),
    ],
)
def test_validation_names_molecule(tmp_path, change, message):
    table = synthetic_table()
    change(table)
    molecule = int(np.searchsorted(table.offsets, 7, side="right") - 1)
    with pytest.raises(DataFormatError, match=rf"molecule {molecule}\).*{message}"):
        write_store(table, tmp_path / "bad.h5", progress=False)
    assert os.listdir(tmp_path) == []


def test_validation_shapes_and_empty(tmp_path):
    t = synthetic_table()
    t.positions = t.positions[:-1]
    with pytest.raises(DataFormatError, match="positions has shape"):
        write_store(t, tmp_path / "bad.h5", progress=False)
    t = synthetic_table()
    t.properties["energy"] = t.properties["energy"][:-1]
    with pytest.raises(DataFormatError, match="'energy'"):
        write_store(t, tmp_path / "bad.h5", progress=False)
    t = synthetic_table()
    t.n_atoms = t.n_atoms.copy()
    t.n_atoms[-1] += t.n_atoms[2]
    t.n_atoms[2] = 0
    with pytest.raises(DataFormatError, match=r"molecule 2\): empty molecule"):
        write_store(t, tmp_path / "bad.h5", progress=False)
    assert os.listdir(tmp_path) == []


def test_bad_files(tmp_path):
    good = write_store(synthetic_table(n_mol=200), tmp_path / "good.h5", progress=False)
    data = good.read_bytes()
    (tmp_path / "text.h5").write_text("this is not HDF5\n")
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    for name in ("text.h5", "trunc.h5"):
        with pytest.raises(DataFormatError, match=name):
            Store(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataFormatError, match="not an atomnet store"):
        Store(tmp_path / "other.h5")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.attrs["format"] = store_mod.FORMAT_NAME
        f.attrs["format_version"] = 99
    with pytest.raises(DataFormatError, match="format version 99"):
        Store(tmp_path / "v.h5")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.attrs["format"] = store_mod.FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f["numbers"] = np.ones(3, np.int8)
    with pytest.raises(DataFormatError, match="missing dataset 'positions'"):
        Store(tmp_path / "m.h5")
    with open_store(good) as s, pytest.raises(DataFormatError, match="no property 'U0'"):
        s.property("U0")
