"""StoreDataset: memory-mapped gathering gives the same batches as building them directly."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from atomnet import keys
from atomnet.data.batch import make_batch
from atomnet.data.dataset import StoreDataset, make_loader
from atomnet.data.store import write_store
from atomnet.data.table import MoleculeTable
from atomnet.units import HARTREE, KCAL_PER_MOL


@pytest.fixture()
def store_path(tmp_path):
    rng = np.random.default_rng(1)
    n_mol = 30
    n_atoms = rng.integers(2, 12, size=n_mol)
    total = int(n_atoms.sum())
    table = MoleculeTable(
        numbers=rng.choice([1, 6, 7, 8, 9], size=total),
        positions=rng.normal(size=(total, 3)) * 2.0,
        n_atoms=n_atoms,
        properties={
            "U0": rng.normal(size=n_mol),
            "energy": rng.normal(size=n_mol) * 100,
            "forces": rng.normal(size=(total, 3)),
        },
        units={"U0": "Hartree", "energy": "kcal/mol", "forces": "kcal/mol/Angstrom"},
        per_atom={"forces"},
    )
    path = write_store(table, tmp_path / "s.h5", progress=False)
    return path, table


def expected_batch(table, mols, cutoff):
    o = table.offsets
    atoms = np.concatenate([np.arange(o[m], o[m + 1]) for m in mols])
    return make_batch(
        torch.from_numpy(table.numbers[atoms]),
        torch.from_numpy(table.positions[atoms].astype(np.float32)),
        torch.from_numpy(table.n_atoms[mols]),
        cutoff,
    ), atoms


def test_getitems_matches_direct_batch(store_path):
    path, table = store_path
    ds = StoreDataset(path, cutoff=3.0)
    assert len(ds) == 30
    assert all(isinstance(a, np.memmap) for a in ds._open().values())  # nothing loaded into memory
    mols = [5, 0, 29, 5, 17]
    batch = ds.__getitems__(mols)
    ref, atoms = expected_batch(table, mols, 3.0)
    assert torch.equal(batch.numbers, ref.numbers)
    assert torch.equal(batch.positions, ref.positions)
    assert torch.equal(batch.molecule, ref.molecule) and torch.equal(batch.n_atoms, ref.n_atoms)
    assert torch.equal(batch.pair_i, ref.pair_i) and torch.equal(batch.pair_j, ref.pair_j)
    assert batch.positions.dtype == torch.float32
    torch.testing.assert_close(
        batch.targets["U0"], torch.tensor(table.properties["U0"][mols] * HARTREE, dtype=torch.float32)
    )
    torch.testing.assert_close(
        batch.targets[keys.FORCES],
        torch.tensor(table.properties["forces"][atoms] * KCAL_PER_MOL, dtype=torch.float32),
    )
    assert batch.targets[keys.ENERGY].shape == (5,)


def test_single_item_targets_subset_and_energy_key(store_path):
    path, table = store_path
    ds = StoreDataset(path, cutoff=None, targets=[], indices=[3, 4, 9], dtype=torch.float64, energy_key="U0")
    item = ds[2]  # molecule 9
    assert item.n_molecules == 1 and int(item.n_atoms[0]) == table.n_atoms[9]
    assert set(item.targets) == {keys.ENERGY}
    assert item.targets[keys.ENERGY].dtype == torch.float64
    assert item.targets[keys.ENERGY].item() == pytest.approx(table.properties["U0"][9] * HARTREE, rel=1e-12)
    n = int(table.n_atoms[9])
    assert item.pair_i.numel() == n * (n - 1)  # cutoff None: all pairs
    sub = ds.subset([0, 2])
    assert len(sub) == 2 and sub.n_atoms.tolist() == table.n_atoms[[3, 9]].tolist()
    with pytest.raises(IndexError):
        ds.__getitems__([3])


def test_pickle_drops_memmaps_and_loader_is_reproducible(store_path):
    path, _ = store_path
    ds = StoreDataset(path, cutoff=5.0, targets=["energy"])
    ds._open()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays is None
    torch.testing.assert_close(clone[4].positions, ds[4].positions)

    def order(seed, workers=0):
        return [
            b.targets[keys.ENERGY] for b in make_loader(ds, 8, shuffle=True, seed=seed, num_workers=workers)
        ]

    a, b, c = order(3), order(3), order(4)
    assert [x.shape[0] for x in a] == [8, 8, 8, 6]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    w = order(3, workers=2)
    assert all(torch.equal(x, y) for x, y in zip(a, w, strict=True))


def test_non_contiguous_store_falls_back_to_reading(store_path, tmp_path):
    path, table = store_path
    with h5py.File(path, "a") as f:
        data = f["positions"][()]
        attrs = dict(f["positions"].attrs)
        del f["positions"]
        f.create_dataset("positions", data=data, chunks=(16, 3), compression="gzip")
        f["positions"].attrs.update(attrs)
    ds = StoreDataset(path, cutoff=3.0)
    assert not isinstance(ds._open()["positions"], np.memmap)
    ref, _ = expected_batch(table, [1, 2], 3.0)
    assert torch.equal(ds.__getitems__([1, 2]).positions, ref.positions)


@pytest.mark.parametrize("sizes", [[5, 7, 6, 8], [1, 2, 30, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]])
def test_molecular_pairs_dense_and_flat_paths_match_brute_force(sizes):
    from atomnet.data.neighbors import molecular_pairs

    rng = np.random.default_rng(len(sizes))
    n_atoms = torch.tensor(sizes)
    positions = torch.tensor(rng.normal(size=(sum(sizes), 3)) * 2.0, dtype=torch.float64)
    pair_i, pair_j = molecular_pairs(positions, n_atoms, 2.5)
    expected, start = [], 0
    for n in sizes:
        p = positions[start : start + n].numpy()
        d = np.linalg.norm(p[None, :] - p[:, None], axis=-1)
        expected += [(start + a, start + b) for a in range(n) for b in range(n) if a != b and d[a, b] < 2.5]
        start += n
    assert list(zip(pair_i.tolist(), pair_j.tolist(), strict=True)) == expected
