"""OpenMM interface: an atomnet potential as a PythonForce equals the ASE calculator (molecule, periodic box,
subset of a larger system), conserves energy in OpenMM's NVE like ``atomnet md``, and refuses bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase import units as ase_units
from ase.io import read

from atomnet.calculator import AtomNetCalculator
from atomnet.errors import AtomNetError, ModelInputError
from atomnet.md import init_velocities, run_md
from atomnet.pretrained import load_with_meta

openmm = pytest.importorskip("openmm")
from openmm import unit  # noqa: E402
from openmm.app import Element, Topology  # noqa: E402

from atomnet.interfaces.openmm import AtomNetForce, add_atomnet_force, system_from_atoms  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "schnet-md17-ethanol"
ETHANOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md17" / "ethanol_dft_1200.xyz"
#: kJ/mol per eV and Å per nm from ASE's constants (the interface uses OpenMM's: independent, 1e-8 apart).
KJ_PER_MOL = ase_units.mol / ase_units.kJ
NM = 10.0


@pytest.fixture(scope="module")
def frames() -> list[Atoms]:
    if not ETHANOL.is_file():
        pytest.skip(f"MD17 ethanol frames not found: {ETHANOL}")
    return read(ETHANOL, index=":5")


@pytest.fixture(scope="module")
def reference() -> AtomNetCalculator:
    """The ASE path that the OpenMM force must reproduce."""
    return AtomNetCalculator.from_checkpoint(MODEL, dtype=torch.float64)


def ase_results(calc: AtomNetCalculator, atoms: Atoms) -> tuple[float, np.ndarray]:
    """(energy in kJ/mol, forces (n_atoms, 3) in kJ/mol/nm) of ``atoms`` with the ASE calculator."""
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy() * KJ_PER_MOL, atoms.get_forces() * KJ_PER_MOL * NM


def context(system, positions_angstrom: np.ndarray, platform: str = "Reference") -> openmm.Context:
    ctx = openmm.Context(
        system, openmm.VerletIntegrator(0.5 * unit.femtosecond), openmm.Platform.getPlatformByName(platform)
    )
    ctx.setPositions(positions_angstrom / NM)
    return ctx


def openmm_results(ctx: openmm.Context) -> tuple[float, np.ndarray]:
    state = ctx.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    return energy, state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)


def assert_same(got: tuple[float, np.ndarray], want: tuple[float, np.ndarray], rtol: float = 1e-6) -> None:
    assert got[0] == pytest.approx(want[0], rel=rtol)
    scale = np.abs(want[1]).max()
    np.testing.assert_allclose(got[1], want[1], rtol=rtol, atol=rtol * scale)


def test_system_from_atoms_masses_and_box(frames):
    atoms = frames[0]
    system = system_from_atoms(atoms)
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(len(atoms))]
    np.testing.assert_allclose(masses, atoms.get_masses())
    box = atoms.copy()
    box.set_cell([9.0, 10.0, 11.0])
    box.set_pbc(True)
    vectors = system_from_atoms(box).getDefaultPeriodicBoxVectors()
    np.testing.assert_allclose([v.value_in_unit(unit.angstrom) for v in vectors], box.cell.array)


def test_md17_frames_equal_ase_calculator(frames, reference):
    system = system_from_atoms(frames[0])
    force = add_atomnet_force(system, MODEL, frames[0].numbers)
    assert not force.usesPeriodicBoundaryConditions()
    ctx = context(system, frames[0].positions)
    energies = []
    for atoms in frames:
        ctx.setPositions(atoms.positions / NM)
        got = openmm_results(ctx)
        assert_same(got, ase_results(reference, atoms))
        energies.append(got[0])
    # the frames differ by far more than round-off: OpenMM's positions really reach the model
    assert np.ptp(energies) > 1.0


def test_potential_object_and_energy_unit(frames):
    """A Potential object whose energies are kcal/mol: OpenMM gets them in kJ/mol."""
    potential, _ = load_with_meta(MODEL)
    atoms = frames[1]
    system = system_from_atoms(atoms)
    add_atomnet_force(system, potential, atoms, energy_unit="kcal/mol")
    ref = AtomNetCalculator(potential, dtype=torch.float64, energy_unit="kcal/mol")
    got, want = openmm_results(context(system, atoms.positions)), ase_results(ref, atoms)
    assert_same(got, want)
    in_ev = ase_results(AtomNetCalculator(potential, dtype=torch.float64), atoms)
    raw = in_ev[0] / KJ_PER_MOL  # the model's number, read as kcal/mol: 1 kcal = 4.184 kJ
    assert got[0] == pytest.approx(raw * 4.184, rel=1e-6)


def test_nve_conserves_energy_like_atomnet_md(frames, reference):
    """OpenMM's Verlet NVE with the atomnet force conserves the total energy as well as ``atomnet md``'s."""
    dt_fs, steps = 0.5, 300
    start = frames[0].copy()
    init_velocities(start, 300.0, seed=3)
    ase_atoms = start.copy()
    ase_atoms.set_velocities(start.get_velocities())
    ase_run = run_md(
        reference, ase_atoms, "nve", timestep_fs=dt_fs, steps=steps, init_velocity=False, progress=False
    )

    system = system_from_atoms(start)
    add_atomnet_force(system, MODEL, start.numbers)
    ctx = openmm.Context(
        system,
        openmm.VerletIntegrator(dt_fs * unit.femtosecond),
        openmm.Platform.getPlatformByName("Reference"),
    )
    ctx.setPositions(start.positions / NM)
    ctx.setVelocities(start.get_velocities() * (ase_units.fs * 1e3) / NM)  # Å/ASE-time -> nm/ps
    epot, ekin = [], []
    for _ in range(steps + 1):
        state = ctx.getState(getEnergy=True)
        epot.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL)
        ekin.append(state.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) / KJ_PER_MOL)
        ctx.getIntegrator().step(1)
    etot = np.add(epot, ekin)
    assert epot[0] == pytest.approx(ase_run.epot[0], rel=1e-7)  # same start (eV; CODATA 2014 vs 2018)
    omm_std, ase_std = etot.std(), ase_run.etot.std()
    assert np.std(ekin) > 0.02  # a real trajectory: kinetic energy exchanges with potential energy (eV)
    assert omm_std < 0.05 * np.std(ekin)
    assert omm_std < 3.0 * ase_std + 1e-5, (omm_std, ase_std)
    assert abs(etot[-1] - etot[0]) < 10 * ase_std + 1e-4


def ethanol_box(frames: list[Atoms], cell: np.ndarray) -> Atoms:
    """Four MD17 ethanol molecules in a periodic ``cell`` (Å), centred at the cell corners' neighbourhood so
    that every molecule crosses a face of the cell; positions are left unwrapped (outside the cell)."""
    box = Atoms(cell=cell, pbc=True)
    corners = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]) @ cell
    for atoms, corner in zip(frames, corners, strict=False):
        mol = atoms.copy()
        mol.translate(corner - mol.positions.mean(axis=0))
        box += mol
    return box


CELLS = {
    "cubic": np.diag([9.0, 9.0, 9.0]),
    "triclinic": np.array([[9.0, 0.0, 0.0], [2.0, 9.5, 0.0], [-1.5, 1.0, 10.0]]),  # OpenMM's reduced form
}


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
@pytest.mark.parametrize("shape", list(CELLS))
def test_periodic_box_equals_ase_calculator(frames, reference, shape, platform):
    box = ethanol_box(frames, CELLS[shape])
    assert ((box.get_scaled_positions(wrap=False) < 0) | (box.get_scaled_positions(wrap=False) >= 1)).any()
    system = system_from_atoms(box)
    force = add_atomnet_force(system, MODEL, box.numbers, periodic=True)
    assert force.usesPeriodicBoundaryConditions()
    ctx = context(system, box.positions, platform)
    rtol = 1e-6 if platform == "Reference" else 1e-5  # CPU: positions and forces in single precision
    assert_same(openmm_results(ctx), ase_results(reference, box), rtol)
    wrapped = box.copy()
    wrapped.wrap()
    isolated = ase_results(reference, Atoms(box.numbers, box.positions))
    assert abs(ase_results(reference, wrapped)[0] - isolated[0]) > 1.0  # the images matter in this box

    # a new box from the state (a barostat's move) reaches the model
    wrapped.set_cell(box.cell.array * 1.05, scale_atoms=True)
    ctx.setPeriodicBoxVectors(*(openmm.Vec3(*v) for v in wrapped.cell.array / NM))
    ctx.setPositions(wrapped.positions / NM)
    assert_same(openmm_results(ctx), ase_results(reference, wrapped), rtol)


def test_periodic_follows_the_system(frames):
    """``periodic=None``: periodic when the system already has a periodic force."""
    box = ethanol_box(frames, CELLS["cubic"])
    system = system_from_atoms(box)
    assert not add_atomnet_force(system, MODEL, box.numbers).usesPeriodicBoundaryConditions()
    system = system_from_atoms(box)
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    for _ in range(len(box)):
        nonbonded.addParticle(0.0, 0.3, 0.0)
    system.addForce(nonbonded)
    assert add_atomnet_force(system, MODEL, box.numbers).usesPeriodicBoundaryConditions()


def test_subset_of_a_larger_system(frames, reference):
    """Ethanol inside a system with three argon particles: the force acts on the chosen indices only."""
    atoms = frames[2]
    argon = [0, 5, 10]
    slots = [p for p in range(len(atoms) + len(argon)) if p not in argon]
    order = [6, 2, 8, 0, 4, 1, 7, 3, 5]
    indices = [slots[order.index(k)] for k in range(len(atoms))]  # ethanol atom k is particle indices[k]
    system = openmm.System()
    positions = np.zeros((len(atoms) + len(argon), 3))
    for p in range(len(positions)):
        system.addParticle(39.948 if p in argon else float(atoms.get_masses()[indices.index(p)]))
    positions[indices] = atoms.positions
    positions[argon] = [[5.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, 30.0]]  # one Ar inside the molecule
    topology = Topology()
    residue = topology.addResidue("MIX", topology.addChain())
    for p in range(len(positions)):
        z = 18 if p in argon else int(atoms.numbers[indices.index(p)])
        topology.addAtom(f"A{p}", Element.getByAtomicNumber(z), residue)

    for numbers in (atoms.numbers, topology):
        system_k = openmm.System()
        for p in range(system.getNumParticles()):
            system_k.addParticle(system.getParticleMass(p))
        force = add_atomnet_force(system_k, MODEL, numbers, indices=indices)
        assert list(force.getParticles()) == indices
        ctx = context(system_k, positions)
        energy, forces = openmm_results(ctx)
        assert_same((energy, forces[indices]), ase_results(reference, atoms))
        assert np.abs(forces[argon]).max() == 0.0
        positions[argon] += 3.0  # the argon atoms are invisible to the force
        ctx.setPositions(positions / NM)
        assert openmm_results(ctx)[0] == energy


def test_bad_input_is_one_line(frames):
    atoms = frames[0]
    system = system_from_atoms(atoms)
    bigger = openmm.System()
    for _ in range(len(atoms) + 2):
        bigger.addParticle(12.0)
    cases = [
        (
            lambda: add_atomnet_force(bigger, MODEL, atoms.numbers),
            AtomNetError,
            "9 atomic numbers for a system of 11",
        ),
        (
            lambda: add_atomnet_force(bigger, MODEL, atoms.numbers, indices=range(8)),
            AtomNetError,
            "9 atomic numbers for 8 particle indices",
        ),
        (
            lambda: add_atomnet_force(bigger, MODEL, atoms.numbers, indices=[0] * 9),
            AtomNetError,
            "repeated particle indices [0]",
        ),
        (
            lambda: add_atomnet_force(bigger, MODEL, atoms.numbers, indices=range(3, 12)),
            AtomNetError,
            "indices [11] outside",
        ),
        (
            lambda: add_atomnet_force(system, MODEL, [6, 17, 1, 1, 1, 1, 1, 1, 8]),
            ModelInputError,
            "['Cl'] (Z=[17]) unknown to the model",
        ),
        (lambda: add_atomnet_force(system, MODEL, []), AtomNetError, "non-empty"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)
    assert system.getNumForces() == 0 and bigger.getNumForces() == 0  # nothing added on failure


def test_errors_inside_a_step_reach_openmm(frames):
    """Input the model cannot evaluate (two atoms on top of each other) stops OpenMM with atomnet's message."""
    atoms = frames[0]
    system = system_from_atoms(atoms)
    add_atomnet_force(system, MODEL, atoms.numbers)
    positions = atoms.positions.copy()
    positions[1] = positions[0]
    ctx = context(system, positions)
    with pytest.raises(openmm.OpenMMException, match="atoms 0 and 1 overlap"):
        ctx.getState(getEnergy=True)


def test_force_object_keeps_its_calculator(frames):
    """AtomNetForce is the callback OpenMM calls (not a copy): its calculator sees every new geometry."""
    atoms = frames[0]
    callback = AtomNetForce(MODEL, atoms.numbers)
    system = system_from_atoms(atoms)
    callback.add_to(system)
    ctx = context(system, atoms.positions)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    ctx.getIntegrator().step(5)
    state = ctx.getState(getPositions=True, getForces=True)  # forces at the positions after the 5th step
    assert callback.calculator.n_evaluations == 6
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.abs(positions - atoms.positions).max() > 1e-4
    np.testing.assert_allclose(callback.atoms.positions, positions, rtol=1e-12, atol=1e-12)


def test_system_survives_xml_serialization(frames, reference):
    """XmlSerializer pickles the callback (model weights included): a reloaded System gives the same forces."""
    atoms = frames[3]
    system = system_from_atoms(atoms)
    add_atomnet_force(system, MODEL, atoms.numbers)
    reloaded = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    assert_same(openmm_results(context(reloaded, atoms.positions)), ase_results(reference, atoms))
