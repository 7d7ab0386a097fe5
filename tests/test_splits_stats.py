"""Reproducible splits (saved/loaded as npz) and standardisation statistics (atomrefs recovered exactly)."""

from __future__ import annotations

import numpy as np
import pytest

from atomnet.data.splits import Split, load_split, nested_splits, random_split, save_split
from atomnet.data.stats import fit_atomrefs, mean_energy_per_atom
from atomnet.data.store import open_store, write_store
from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError
from atomnet.units import HARTREE


def test_random_split_counts_fractions_and_seed():
    s = random_split(100, (70, 20, 10), seed=1)
    assert s.sizes() == (70, 20, 10)
    assert np.unique(np.concatenate([s.train, s.val, s.test])).size == 100
    again = random_split(100, (70, 20, 10), seed=1)
    assert all(np.array_equal(s[k], again[k]) for k in ("train", "val", "test"))
    assert not np.array_equal(s.train, random_split(100, (70, 20, 10), seed=2).train)
    assert random_split(101, (0.8, 0.1, 0.1), seed=0).sizes() == (81, 10, 10)
    assert random_split(100, (10, 5, None), seed=0).sizes() == (10, 5, 85)
    assert random_split(100, (10, 5, 5), seed=0).sizes() == (10, 5, 5)  # rest unused
    with pytest.raises(ValueError, match="exceed"):
        random_split(10, (8, 2, 1))


def test_nested_splits_share_val_test_and_nest_training_sets():
    splits = nested_splits(100, [40, 10, 20], n_val=5, n_test=15, seed=3)
    assert list(splits) == [10, 20, 40]
    for size, sp in splits.items():
        assert sp.sizes() == (size, 5, 15)
        np.testing.assert_array_equal(sp.test, splits[10].test)
        np.testing.assert_array_equal(sp.val, splits[10].val)
        assert not set(sp.train) & (set(sp.val) | set(sp.test))
    assert set(splits[10].train) < set(splits[20].train) < set(splits[40].train)
    again = nested_splits(100, [10], n_val=5, n_test=15, seed=3)[10]
    np.testing.assert_array_equal(again.train, splits[10].train)
    with pytest.raises(ValueError, match="not enough"):
        nested_splits(50, [40], n_val=5, n_test=15)


def test_save_load_and_bad_split_files(tmp_path):
    s = random_split(50, (30, 10, 10), seed=7)
    path = save_split(tmp_path / "split.npz", s)
    t = load_split(path, n=50)
    assert t.seed == 7 and all(np.array_equal(s[k], t[k]) for k in ("train", "val", "test"))
    with pytest.raises(DataFormatError, match="out of range"):
        load_split(path, n=40)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataFormatError, match="junk.npz"):
        load_split(tmp_path / "junk.npz")
    np.savez(tmp_path / "nokey.npz", train=np.arange(3))
    with pytest.raises(DataFormatError, match="lacks arrays"):
        load_split(tmp_path / "nokey.npz")
    save_split(tmp_path / "overlap.npz", Split(np.arange(5), np.arange(4, 6), np.arange(0)))
    with pytest.raises(DataFormatError, match="overlap"):
        load_split(tmp_path / "overlap.npz")
    np.savez(tmp_path / "float.npz", train=np.ones(2), val=np.arange(2), test=np.arange(2))
    with pytest.raises(DataFormatError, match="integer"):
        load_split(tmp_path / "float.npz")
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "missing.npz")


@pytest.fixture()
def atomref_store(tmp_path):
    """Molecules of H, C, N, O whose energies are exactly Σ_Z count_Z a_Z (in Hartree)."""
    rng = np.random.default_rng(0)
    refs = {1: -0.5, 6: -37.8, 7: -54.6, 8: -75.1}
    n_atoms = rng.integers(3, 15, size=60)
    numbers = rng.choice(list(refs), size=int(n_atoms.sum()))
    mol = np.repeat(np.arange(60), n_atoms)
    energy = np.bincount(mol, weights=np.vectorize(refs.get)(numbers).astype(float))
    table = MoleculeTable(
        numbers=numbers,
        positions=rng.normal(size=(len(numbers), 3)),
        n_atoms=n_atoms,
        properties={"U0": energy},
        units={"U0": "Hartree"},
    )
    return write_store(table, tmp_path / "a.h5", progress=False), refs, energy, n_atoms


def test_fit_atomrefs_recovers_known_values(atomref_store):
    path, refs, _, _ = atomref_store
    atomref, res_mean, res_std = fit_atomrefs(path, "U0", indices=np.arange(40), max_z=10)
    assert atomref.shape == (11,)
    for z, a in refs.items():
        assert atomref[z] == pytest.approx(a * HARTREE, abs=1e-9)
    assert np.count_nonzero(atomref) == 4  # absent elements -> 0
    assert abs(res_mean) < 1e-10 and res_std < 1e-10


def test_mean_energy_per_atom_on_subset(atomref_store):
    path, _, energy, n_atoms = atomref_store
    idx = np.array([1, 5, 9, 33])
    with open_store(path) as store:
        value = mean_energy_per_atom(store, "U0", idx)
    assert value == pytest.approx(np.mean(energy[idx] * HARTREE / n_atoms[idx]), rel=1e-12)
    with pytest.raises(ValueError, match="max_z"):
        fit_atomrefs(path, "U0", max_z=5)


def test_split_from_index_files(tmp_path):
    from atomnet.data.splits import split_from_index_files

    (tmp_path / "index_train_01.csv").write_text("\n".join(map(str, range(0, 40))) + "\n")
    (tmp_path / "index_test_01.csv").write_text("\n".join(map(str, range(40, 50))) + "\n")
    s = split_from_index_files(
        tmp_path / "index_train_01.csv", tmp_path / "index_test_01.csv", n_val=10, seed=3
    )
    assert s.sizes() == (30, 10, 10)
    assert sorted(np.concatenate([s.train, s.val]).tolist()) == list(range(40))
    assert s.test.tolist() == list(range(40, 50))
    with pytest.raises(DataFormatError, match="out of range"):
        split_from_index_files(tmp_path / "index_train_01.csv", n=20)
