"""Coulomb-matrix representations: hand-computed matrix, permutation invariance, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from atomnet.baselines.coulomb import (
    RepresentationError,
    coulomb_matrices,
    coulomb_representation,
    pad_molecules,
    upper_triangle,
)
from atomnet.units import BOHR

# water, Å
Z_H2O = np.array([8, 1, 1])
R_H2O = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])


def water_by_hand() -> np.ndarray:
    d_oh = np.linalg.norm(R_H2O[1] - R_H2O[0]) / BOHR  # Bohr
    d_hh = 2 * 0.7572 / BOHR
    return np.array(
        [
            [0.5 * 8**2.4, 8 / d_oh, 8 / d_oh],
            [8 / d_oh, 0.5, 1 / d_hh],
            [8 / d_oh, 1 / d_hh, 0.5],
        ]
    )


def test_water_by_hand():
    M = water_by_hand()
    assert M[0, 0] == pytest.approx(73.5167, abs=1e-4)
    x = coulomb_representation(Z_H2O, R_H2O, [3], "plain")
    np.testing.assert_allclose(x[0], M[np.triu_indices(3)], rtol=1e-12)
    # padded to 5 atoms: extra rows and columns are zero
    x5 = coulomb_representation(Z_H2O, R_H2O, [3], "plain", size=5)
    full = np.zeros((5, 5))
    full[:3, :3] = M
    np.testing.assert_allclose(x5[0], full[np.triu_indices(5)], rtol=1e-12)
    # qmllib convention: distances in Å
    xa = coulomb_representation(Z_H2O, R_H2O, [3], "plain", distance_unit="Angstrom")
    assert xa[0, 1] == pytest.approx(M[0, 1] / BOHR)  # 1/r is larger in 1/Å


def test_sorted_and_eigenvalue_by_hand():
    M = water_by_hand()
    s = coulomb_representation(Z_H2O, R_H2O, [3], "sorted")[0]
    assert s[0] == pytest.approx(M[0, 0])  # oxygen row has the largest norm
    ev = coulomb_representation(Z_H2O, R_H2O, [3], "eigenvalue", size=4)[0]
    np.testing.assert_allclose(ev[:3], np.sort(np.linalg.eigvalsh(M))[::-1], rtol=1e-12)
    assert ev[3] == 0.0 and np.all(np.diff(ev[:3]) <= 0)


def random_molecules(rng, n_mol=20, max_atoms=9):
    n_atoms = rng.integers(2, max_atoms + 1, n_mol)
    numbers = rng.choice([1, 6, 7, 8, 16], n_atoms.sum())
    positions = rng.normal(scale=1.5, size=(n_atoms.sum(), 3))
    return numbers, positions, n_atoms


@pytest.mark.parametrize("variant", ["sorted", "eigenvalue"])
def test_permutation_invariance(variant):
    rng = np.random.default_rng(1)
    numbers, positions, n_atoms = random_molecules(rng)
    perm = np.concatenate(
        [o + rng.permutation(n) for o, n in zip(np.cumsum(n_atoms) - n_atoms, n_atoms, strict=True)]
    )
    a = coulomb_representation(numbers, positions, n_atoms, variant, size=10)
    b = coulomb_representation(numbers[perm], positions[perm], n_atoms, variant, size=10)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # rotation + translation invariance too
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    c = coulomb_representation(numbers, positions @ q.T + 3.0, n_atoms, variant, size=10)
    np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-9)


def test_plain_is_not_permutation_invariant_and_chunks_agree():
    rng = np.random.default_rng(2)
    numbers, positions, n_atoms = random_molecules(rng)
    a = coulomb_representation(numbers, positions, n_atoms, "plain")
    b = coulomb_representation(numbers, positions, n_atoms, "plain", chunk_size=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20, n_atoms.max() * (n_atoms.max() + 1) // 2)


def test_random_sorted():
    rng = np.random.default_rng(3)
    numbers, positions, n_atoms = random_molecules(rng, n_mol=6)
    x = coulomb_representation(numbers, positions, n_atoms, "random", size=9, noise=1e-12, n_draws=4, seed=0)
    s = coulomb_representation(numbers, positions, n_atoms, "sorted", size=9)
    assert x.shape == (6, 4, 45)
    np.testing.assert_allclose(x, np.repeat(s[:, None], 4, axis=1))  # tiny noise = sorted
    y = coulomb_representation(numbers, positions, n_atoms, "random", size=9, noise=50.0, n_draws=4, seed=0)
    assert not np.allclose(y[:, 0], y[:, 1])  # large noise permutes
    # every draw is a permutation of the same matrix: same multiset of entries
    np.testing.assert_allclose(np.sort(y, axis=2), np.sort(np.repeat(s[:, None], 4, axis=1), axis=2))


def test_full_matrix_symmetric():
    Z, R = pad_molecules(Z_H2O, R_H2O, [3], size=4)
    M = coulomb_matrices(Z, R / BOHR)
    np.testing.assert_allclose(M[0], M[0].T)
    np.testing.assert_allclose(M[0, :3, :3], water_by_hand(), rtol=1e-12)
    assert upper_triangle(M).shape == (1, 10)


def test_bad_input():
    with pytest.raises(RepresentationError, match="molecule 0 has 3 atoms, more than the padding size 2"):
        coulomb_representation(Z_H2O, R_H2O, [3], "sorted", size=2)
    bad = R_H2O.copy()
    bad[1, 0] = np.nan
    with pytest.raises(RepresentationError, match="molecule 1 has non-finite"):
        coulomb_representation(np.r_[Z_H2O, Z_H2O], np.r_[R_H2O, bad], [3, 3], "sorted")
    with pytest.raises(RepresentationError, match="unknown Coulomb-matrix variant"):
        coulomb_representation(Z_H2O, R_H2O, [3], "bag")
    with pytest.raises(RepresentationError, match="same position"):
        coulomb_representation(Z_H2O, np.zeros((3, 3)), [3], "plain")
    with pytest.raises(RepresentationError, match="n_atoms sums to 4"):
        coulomb_representation(Z_H2O, R_H2O, [4], "plain")
