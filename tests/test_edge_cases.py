"""Edge cases of the calculator path (issue 17): atoms exactly at the cutoff, coincident atoms, one atom,
isolated atoms, hydrogen only, empty structures, tiny and huge cells, float64 end to end. Each case is checked
against an independent expectation (continuity, additivity, a supercell, finite differences)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from atomnet.calculator import AtomNetCalculator
from atomnet.cli import main
from atomnet.errors import ModelInputError

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]
MODEL = "schnet-md17-ethanol"


@pytest.fixture(scope="module")
def calc64():
    return AtomNetCalculator.from_checkpoint(MODEL, dtype=torch.float64, skin=0.0)


def energy(atoms: Atoms, calc) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return float(atoms.get_potential_energy())


def forces(atoms: Atoms, calc) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_forces()


def test_a_pair_exactly_at_the_cutoff_is_continuous(calc64):
    """Two atoms at exactly r_c: the energy is that of two isolated atoms, and it joins the values just
    inside (to second order: f_c and its slope vanish at r_c) and outside; forces vanish there, no NaN."""
    rc = calc64.cutoff

    def pair(d: float) -> Atoms:
        return Atoms("CO", positions=[[0, 0, 0], [0, 0, d]])

    apart = energy(Atoms("C"), calc64) + energy(Atoms("O"), calc64)
    e_at, e_out = energy(pair(rc), calc64), energy(pair(rc + 1e-6), calc64)
    assert e_at == pytest.approx(apart, abs=1e-12) and e_out == pytest.approx(apart, abs=1e-12)
    inside = [energy(pair(rc - d), calc64) - apart for d in (1e-2, 1e-3)]
    assert abs(inside[1]) < abs(inside[0]) / 50  # quadratic approach: 100x smaller for 10x closer
    np.testing.assert_array_equal(forces(pair(rc), calc64), np.zeros((2, 3)))
    assert np.abs(forces(pair(rc - 1e-3), calc64)).max() < 1e-3


def test_coincident_atoms_are_a_clear_error(calc64):
    atoms = molecule("CH3CH2OH")
    atoms.positions[3] = atoms.positions[2]
    with pytest.raises(ModelInputError, match="atoms 2 and 3 overlap"):
        energy(atoms, calc64)


def test_a_single_atom_and_isolated_atoms(calc64):
    """One atom has no neighbours: zero force, and the energy of far-apart atoms is the sum of theirs."""
    singles = {z: energy(Atoms(numbers=[z], positions=[[0, 0, 0]]), calc64) for z in (1, 6, 8)}
    assert all(np.isfinite(list(singles.values())))
    lone = Atoms(numbers=[6], positions=[[0, 0, 0]])
    np.testing.assert_array_equal(forces(lone, calc64), np.zeros((1, 3)))
    spread = Atoms(numbers=[1, 6, 8, 1], positions=[[0, 0, 0], [20, 0, 0], [0, 30, 0], [0, 0, 40]])
    assert energy(spread, calc64) == pytest.approx(2 * singles[1] + singles[6] + singles[8], abs=1e-9)
    np.testing.assert_array_equal(forces(spread, calc64), np.zeros((4, 3)))


def test_hydrogen_only_molecule_has_consistent_forces(calc64):
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    f = forces(atoms, calc64)
    np.testing.assert_allclose(f[0], -f[1], atol=1e-12)  # Newton's third law
    h = 1e-5
    fd = []
    for s in (1, -1):
        moved = atoms.copy()
        moved.positions[1, 2] += s * h
        fd.append(energy(moved, calc64))
    assert f[1, 2] == pytest.approx(-(fd[0] - fd[1]) / (2 * h), abs=1e-6)


def test_an_empty_structure_is_a_clear_error(calc64, tmp_path, capsys):
    with pytest.raises(ModelInputError, match="empty"):
        energy(Atoms(), calc64)
    (tmp_path / "empty.xyz").write_text("0\n\n")
    assert main(["relax", MODEL, str(tmp_path / "empty.xyz"), "--out", str(tmp_path / "r.xyz")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "empty" in err


def test_a_cell_smaller_than_the_cutoff_equals_its_supercell(calc64):
    """A 2.9 Å cubic cell (many periodic images inside the 5 Å cutoff): E(2×2×2 supercell) = 8 E(cell)."""
    cell = Atoms("CO", positions=[[0, 0, 0], [1.2, 0.3, 0.1]], cell=[2.9, 3.0, 3.1], pbc=True)
    e1 = energy(cell, calc64)
    e8 = energy(cell.repeat((2, 2, 2)), calc64)
    assert e8 == pytest.approx(8 * e1, rel=1e-10)
    f1 = forces(cell, calc64)
    np.testing.assert_allclose(forces(cell.repeat((2, 2, 2)), calc64)[:2], f1, atol=1e-9)


def test_a_huge_cell_is_the_isolated_molecule(calc64):
    mol = molecule("CH3CH2OH")
    boxed = mol.copy()
    boxed.cell = [1000.0, 1000.0, 1000.0]
    boxed.pbc = True
    boxed.center()
    assert energy(boxed, calc64) == pytest.approx(energy(mol, calc64), abs=1e-9)
    np.testing.assert_allclose(forces(boxed, calc64), forces(mol, calc64), atol=1e-10)


def test_float64_end_to_end(calc64):
    """Positions, model and results in float64: finite differences agree to 1e-7 eV/Å (float32 cannot),
    here for a periodic box whose molecule interacts with its images."""
    atoms = molecule("CH3CH2OH")
    atoms.cell, atoms.pbc = [6.5, 6.8, 7.0], True
    atoms.rattle(0.05, seed=0)
    f = forces(atoms, calc64)
    h = 1e-5
    for a, c in [(0, 0), (3, 2), (7, 1)]:
        e = []
        for s in (1, -1):
            moved = atoms.copy()
            moved.positions[a, c] += s * h
            e.append(energy(moved, calc64))
        assert f[a, c] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-7)
    assert calc64.potentials[0].dtype == torch.float64
