"""``atomnet relax`` and ``atomnet vibrate``: converged geometries checked by fresh force/stress evaluations,
the double-backprop Hessian against finite differences and against ASE's ``Vibrations``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.io import read, write
from ase.vibrations import Vibrations

from atomnet.calculator import AtomNetCalculator
from atomnet.cli import main
from atomnet.data.batch import batch_from_atoms
from atomnet.potential import energy_and_forces, hessian
from atomnet.pretrained import load_model
from atomnet.relax import relax
from atomnet.vibrate import mode_table, vibrations

MODEL = "schnet-md17-ethanol"


@pytest.fixture(scope="module")
def calc():
    torch.set_num_threads(1)
    return AtomNetCalculator.from_checkpoint(MODEL, dtype=torch.float64)


@pytest.fixture(scope="module")
def minimum(calc):
    """Ethanol relaxed tightly (1e-4 eV/Å) with the shipped model."""
    start = molecule("CH3CH2OH")
    start.rattle(0.05, seed=1)
    result = relax(start, calc, fmax=1e-4, optimizer="BFGS", steps=500)
    assert result.converged
    return result.atoms


def fmax_of(atoms, calc) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


@pytest.mark.parametrize("optimizer", ["BFGS", "LBFGS", "FIRE"])
def test_every_optimizer_reaches_the_same_minimum(optimizer, calc, minimum):
    start = molecule("CH3CH2OH")
    start.rattle(0.05, seed=1)
    result = relax(start, calc, fmax=0.005, optimizer=optimizer, steps=2000)
    assert result.converged
    assert fmax_of(result.atoms, calc) < 0.005  # a fresh evaluation, not the optimiser's own record
    assert result.energies[-1] < result.energies[0]
    m = minimum.copy()
    m.calc = calc
    # near a minimum E − E_min ≈ ½ F·H⁻¹·F: tiny for |F| < 5 meV/Å
    assert result.energies[-1] == pytest.approx(m.get_potential_energy(), abs=1e-4)


def test_cell_relaxation_zeroes_forces_and_stress(calc):
    """An ethanol crystal (one molecule per 6.5 Å cell, interacting with its images) relaxes to zero forces
    and zero stress, as a fresh evaluation of the relaxed cell shows."""
    atoms = molecule("CH3CH2OH")
    atoms.cell = [6.5, 6.5, 6.5]
    atoms.pbc = True
    atoms.center()
    result = relax(atoms, calc, fmax=0.01, cell=True, steps=400)
    assert result.converged
    relaxed = result.atoms.copy()
    relaxed.calc = calc
    assert np.linalg.norm(relaxed.get_forces(), axis=1).max() < 0.01
    virial = np.abs(relaxed.get_stress(voigt=False)).max() * relaxed.get_volume()
    assert virial < 0.01  # FrechetCellFilter's criterion: stress × volume below fmax (eV)
    assert not np.allclose(relaxed.cell.array, atoms.cell.array, atol=0.05)  # the cell did move
    assert result.energies[-1] < result.energies[0]


def test_cell_relaxation_under_pressure_balances_it(calc):
    atoms = molecule("CH3CH2OH")
    atoms.cell = [6.5, 6.5, 6.5]
    atoms.pbc = True
    atoms.center()
    p = 0.05  # GPa
    result = relax(atoms, calc, fmax=0.005, cell=True, pressure_GPa=p, steps=600)
    assert result.converged
    relaxed = result.atoms.copy()
    relaxed.calc = calc
    stress = relaxed.get_stress(voigt=False)
    # mechanical equilibrium under hydrostatic pressure: σ = −p·1 (ASE's sign convention)
    np.testing.assert_allclose(stress, -p * units.GPa * np.eye(3), atol=0.005 / relaxed.get_volume())


def test_relax_cli_writes_structure_trajectory_and_plot(tmp_path, capsys):
    start = molecule("CH3CH2OH")
    start.rattle(0.05, seed=2)
    write(tmp_path / "start.xyz", start)
    out = tmp_path / "relaxed.xyz"
    assert main(["relax", MODEL, str(tmp_path / "start.xyz"), "--fmax", "0.01", "--out", str(out)]) == 0
    assert "converged" in capsys.readouterr().out
    relaxed = read(out)
    calc = AtomNetCalculator.from_checkpoint(MODEL, dtype=torch.float64)
    assert fmax_of(relaxed, calc) < 0.01
    assert len(read(tmp_path / "relaxed.traj", index=":")) >= 2
    assert (tmp_path / "relaxed.png").read_bytes()[:4] == b"\x89PNG"
    # not converged within the step limit: exit status 1, said so
    assert main(["relax", MODEL, str(tmp_path / "start.xyz"), "--steps", "2", "--out", str(out)]) == 1
    assert "NOT converged" in capsys.readouterr().out


def test_relax_bad_input_is_one_line(tmp_path, capsys):
    write(tmp_path / "eth.xyz", molecule("CH3CH2OH"))
    cases = [
        (["relax", MODEL, str(tmp_path / "missing.xyz")], "not found"),
        (["relax", MODEL, str(tmp_path / "eth.xyz"), "--fmax", "0"], "--fmax must be > 0"),
        (["relax", MODEL, str(tmp_path / "eth.xyz"), "--cell"], "--cell needs a structure periodic"),
        (["vibrate", MODEL, str(tmp_path / "eth.xyz"), "--rows-per-pass", "0"], "--rows-per-pass"),
    ]
    (tmp_path / "bad.xyz").write_text("3\n\nC 0 0\n")
    # every command that takes one structure reads it through data.ase_io.read_structure
    bad, missing = str(tmp_path / "bad.xyz"), str(tmp_path / "missing.xyz")
    for argv in (["relax", MODEL], ["vibrate", MODEL], ["md", MODEL], ["serve", MODEL]):
        extra = ["--unix", "atomnet-test-never"] if argv[0] == "serve" else ["--out", str(tmp_path / "o")]
        cases.append(([*argv, bad, *extra], "cannot read structure"))
        cases.append(([*argv, missing, *extra], "structure file not found"))
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_hessian_equals_finite_differences_of_the_forces(minimum):
    potential = load_model(MODEL).double()
    atoms = minimum.copy()
    atoms.rattle(0.02, seed=3)  # away from the minimum: a generic point
    batch = batch_from_atoms([atoms], cutoff=potential.cutoff)
    h = hessian(potential.model, batch, rows_per_pass=7).numpy()  # blocks that do not divide 27 rows
    assert h.shape == (27, 27)
    np.testing.assert_allclose(h, h.T, atol=1e-10)
    np.testing.assert_allclose(h, hessian(potential.model, batch, rows_per_pass=1).numpy(), atol=1e-10)
    step = 1e-5
    for col in (0, 5, 13, 26):
        a, c = divmod(col, 3)
        forces = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[a, c] += sign * step
            out = energy_and_forces(potential.model, batch_from_atoms([moved], cutoff=potential.cutoff))
            forces.append(out["forces"].reshape(-1).numpy())
        fd = -(forces[0] - forces[1]) / (2 * step)  # ∂²E/∂x∂x_col = −∂F/∂x_col
        np.testing.assert_allclose(h[:, col], fd, atol=1e-6)


def test_frequencies_equal_ases_finite_difference_vibrations(minimum, calc, tmp_path):
    """ASE's ``Vibrations`` displaces atoms (central differences, 4 points) and reads forces from the
    calculator; its Hessian and frequencies agree with the exact one."""
    potential = load_model(MODEL).double()
    exact = vibrations(minimum, potential)
    atoms = minimum.copy()
    atoms.calc = calc
    ase_vib = Vibrations(atoms, delta=1e-3, nfree=4, name=str(tmp_path / "vib"))
    ase_vib.run()
    fd = ase_vib.get_vibrations()
    np.testing.assert_allclose(exact.get_hessian_2d(), fd.get_hessian_2d(), atol=2e-4)
    f_exact = np.real(exact.get_frequencies()[6:])
    f_fd = np.real(fd.get_frequencies()[6:])
    np.testing.assert_allclose(f_exact, f_fd, atol=0.5)  # cm⁻¹
    # a relaxed molecule: six near-zero modes (translations, rotations), the rest real and positive
    rows = mode_table(exact)
    assert all(abs(r["wavenumber_cm-1"]) < 20 for r in rows[:6])
    assert all(not r["imaginary"] and r["wavenumber_cm-1"] > 100 for r in rows[6:])


def test_vibrate_cli_writes_table_json_and_mode_animations(minimum, tmp_path, capsys):
    write(tmp_path / "min.xyz", minimum)
    out = tmp_path / "vib"
    assert main(["vibrate", MODEL, str(tmp_path / "min.xyz"), "--out", str(out), "--frames", "8"]) == 0
    printed = capsys.readouterr().out
    assert "cm^-1" in printed and "not at a minimum" not in printed
    record = json.loads((out / "vibrations.json").read_text())
    assert len(record["modes"]) == 27
    direct = mode_table(vibrations(read(tmp_path / "min.xyz"), load_model(MODEL).double()))
    assert [r["wavenumber_cm-1"] for r in record["modes"]] == pytest.approx(
        [r["wavenumber_cm-1"] for r in direct], abs=1e-6
    )
    frames = read(out / "mode_26.traj", index=":")
    assert len(frames) == 8 and not np.allclose(frames[0].positions, frames[2].positions)
    assert (out / "vibrations.txt").read_text().startswith("mode")
    # an unrelaxed structure gets a warning
    start = molecule("CH3CH2OH")
    start.rattle(0.1, seed=4)
    write(tmp_path / "start.xyz", start)
    assert main(["vibrate", MODEL, str(tmp_path / "start.xyz"), "--out", str(tmp_path / "v2")]) == 0
    assert "not at a minimum" in capsys.readouterr().out
