"""Checks on the committed GFN2-xTB ethanol data set (data/ethanol_xtb.extxyz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ase_io = pytest.importorskip("ase.io")

DATA = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"
N_FRAMES = 2000
N_ATOMS = 9


@pytest.fixture(scope="module")
def frames():
    assert DATA.is_file(), f"missing {DATA}"
    return ase_io.read(DATA, ":")


def _tblite_calc():
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # pragma: no cover - depends on environment
        pytest.skip(f"tblite not importable ({exc}); pip install tblite to recompute labels")
    return TBLite(method="GFN2-xTB", verbosity=0)


def _fresh(atoms):
    from ase import Atoms

    return Atoms(atoms.get_chemical_symbols(), positions=atoms.get_positions())


def test_file_size_small():
    assert DATA.stat().st_size < 2_000_000


def test_frames_shape_and_finite(frames):
    assert len(frames) == N_FRAMES
    for i, a in enumerate(frames):
        assert len(a) == N_ATOMS
        assert a.get_chemical_formula() == "C2H6O"
        assert a.info["frame"] == i
        assert a.info["energy_unit"] == "eV"
        assert a.info["force_unit"] == "eV/Ang"
        e = a.get_potential_energy()
        f = a.get_forces()
        assert np.isfinite(e)
        assert f.shape == (N_ATOMS, 3)
        assert np.all(np.isfinite(f))
        assert np.all(np.isfinite(a.positions))
    energies = np.array([a.get_potential_energy() for a in frames])
    # GFN2-xTB total energy of ethanol is ~ -310 eV; thermal spread ~1 eV
    assert -312 < energies.min() and energies.max() < -307
    assert energies.std() > 0.01  # not a single repeated geometry


@pytest.mark.parametrize("idx", [0, N_FRAMES - 1])
def test_labels_match_tblite(frames, idx):
    calc = _tblite_calc()
    ref = frames[idx]
    a = _fresh(ref)
    a.calc = calc
    assert abs(a.get_potential_energy() - ref.get_potential_energy()) < 1e-4
    np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-3, rtol=0)


def test_forces_are_negative_energy_gradient(frames):
    calc = _tblite_calc()
    ref = frames[len(frames) // 2]
    a = _fresh(ref)
    a.calc = calc
    h = 1e-3  # Angstrom
    x0 = a.get_positions()
    fd = np.zeros_like(x0)
    for i in range(len(a)):
        for k in range(3):
            x = x0.copy()
            x[i, k] += h
            a.set_positions(x)
            ep = a.get_potential_energy()
            x[i, k] -= 2 * h
            a.set_positions(x)
            em = a.get_potential_energy()
            fd[i, k] = -(ep - em) / (2 * h)
    np.testing.assert_allclose(fd, ref.get_forces(), atol=1e-3, rtol=0)
