"""Neighbour pairs against a brute-force O(N² × images) reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from atomnet.data import batch_from_atoms
from atomnet.data.neighbors import linear_pairs, molecular_pairs


def brute_force(positions, cutoff, cell=None, pbc=(False, False, False)):
    """Set of (i, j, s1, s2, s3) with |R_j - R_i + S @ cell| < cutoff, (i, S) != (j, 0)."""
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=float)
    reach = []
    for k in range(3):
        if pbc[k]:
            # enough images: the plane spacing along k is V / |a_l x a_m|
            other = np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])
            spacing = abs(np.linalg.det(cell)) / np.linalg.norm(other)
            reach.append(int(np.ceil(cutoff / spacing)) + 1)
        else:
            reach.append(0)
    pairs = set()
    n = len(positions)
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        s = np.array(shift, dtype=float)
        for i in range(n):
            for j in range(n):
                if i == j and not s.any():
                    continue
                if np.linalg.norm(positions[j] - positions[i] + s @ cell) < cutoff:
                    pairs.add((i, j, *shift))
    return pairs


def as_set(i, j, s=None):
    s = np.zeros((len(i), 3)) if s is None else np.asarray(s)
    return {(int(a), int(b), *map(int, np.rint(c))) for a, b, c in zip(i, j, s, strict=True)}


def test_molecular_pairs_batch_matches_brute_force():
    mols = [molecule("CH3CH2OH"), molecule("C6H6"), molecule("H2O"), Atoms("H", positions=[[0, 0, 0]])]
    positions = torch.tensor(np.concatenate([m.positions for m in mols]))
    n_atoms = torch.tensor([len(m) for m in mols])
    i, j = molecular_pairs(positions, n_atoms, cutoff=2.5)
    got = as_set(i, j)
    expected, start = set(), 0
    for m in mols:
        expected |= {(a + start, b + start, 0, 0, 0) for a, b, *_ in brute_force(m.positions, 2.5)}
        start += len(m)
    assert got == expected and len(got) == len(i)  # no duplicates, nothing across molecules
    i_all, _ = molecular_pairs(positions, n_atoms, cutoff=None)
    assert len(i_all) == sum(len(m) * (len(m) - 1) for m in mols)


@pytest.mark.parametrize(
    "cell,pbc",
    [
        (np.diag([2.1, 2.4, 2.9]), (True, True, True)),  # cell smaller than twice the cutoff
        (np.array([[3.0, 0.0, 0.0], [1.2, 2.7, 0.0], [0.4, 0.9, 3.3]]), (True, True, True)),  # triclinic
        (np.diag([2.5, 2.5, 10.0]), (True, True, False)),  # slab: mixed pbc
    ],
)
def test_linear_pairs_periodic_matches_brute_force(cell, pbc):
    rng = np.random.default_rng(3)
    positions = rng.random((7, 3)) @ cell
    i, j, s = linear_pairs(positions, 3.0, cell, pbc)
    expected = brute_force(positions, 3.0, cell, pbc)
    got = as_set(i, j, s)
    assert got == expected
    assert len(got) == len(i)


def test_linear_pairs_large_nonperiodic_matches_molecular():
    rng = np.random.default_rng(0)
    positions = rng.random((300, 3)) * 12.0
    i, j, _ = linear_pairs(positions, 4.0)
    mi, mj = molecular_pairs(torch.tensor(positions), torch.tensor([300]), 4.0)
    assert as_set(i, j) == as_set(mi, mj)


def test_periodic_batch_pair_vectors_have_correct_lengths():
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=True)
    batch = batch_from_atoms([atoms, molecule("H2O")], cutoff=3.6)
    d = batch.pair_vectors().norm(dim=1)
    assert (d < 3.6).all() and (d > 0.5).all()
    # simple cubic a = 2.5: 6 neighbours at 2.5, 12 at 3.54 within 3.6 Å; water: 6 directed pairs
    assert int((batch.molecule[batch.pair_i] == 0).sum()) == 18
    assert int((batch.molecule[batch.pair_i] == 1).sum()) == 6
