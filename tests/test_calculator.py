"""AtomNetCalculator: ASE contract, physics (FD forces/stress), Verlet skin, units, ensembles, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet
from test_models import make_potential

from atomnet import keys
from atomnet.calculator import AtomNetCalculator
from atomnet.data import batch_from_atoms
from atomnet.errors import AtomNetError, ConfigError, ModelInputError
from atomnet.models import save_model
from atomnet.units import KCAL_PER_MOL

# ase >= 3.23 suggests FiniteDifferenceCalculator; calculate_numerical_* are the same independent FD code
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


def water_box(n: int = 3, box: float = 5.0, seed: int = 0) -> Atoms:
    """``n`` rigidly rotated H2O molecules on a grid in a cubic box of ``box`` Å (no overlaps)."""
    rng = np.random.default_rng(seed)
    h2o = molecule("H2O")
    atoms = Atoms(cell=[box] * 3, pbc=True)
    for k in range(n):
        w = h2o.copy()
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        w.translate(np.array([k, (2 * k) % n, (k * k) % n]) * box / n + 0.8)
        atoms += w
    atoms.rattle(0.02, seed=seed)
    return atoms


def test_results_equal_potential():
    pot = make_potential("schnet")
    atoms = ethanol()
    atoms.calc = AtomNetCalculator(pot)
    ref = pot(batch_from_atoms([atoms], cutoff=pot.cutoff, dtype=torch.float64))
    assert atoms.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0]), abs=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES].numpy(), atol=1e-12)
    np.testing.assert_allclose(atoms.calc.get_property("energies", atoms), ref[keys.ATOMIC_ENERGIES].numpy())
    assert atoms.calc.results["free_energy"] == atoms.calc.results["energy"]
    assert isinstance(atoms.calc.results["forces"], np.ndarray)


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_energies_sum_and_forces_are_minus_gradient(name):
    atoms = ethanol()
    calc = AtomNetCalculator(make_potential(name))
    atoms.calc = calc
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    numeric = calc.calculate_numerical_forces(atoms, d=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), numeric, atol=1e-7)
    assert np.abs(atoms.get_forces()).max() > 1e-3  # not trivially zero


def test_stress_and_forces_periodic_water_vs_finite_differences():
    atoms = water_box()
    calc = AtomNetCalculator(make_potential("schnet", cutoff=3.5))
    atoms.calc = calc
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    np.testing.assert_allclose(stress, calc.calculate_numerical_stress(atoms, d=1e-5), atol=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), calc.calculate_numerical_forces(atoms, d=1e-4), atol=1e-7)
    assert np.abs(stress).max() > 1e-5
    # a cell smaller than twice the cutoff: atoms see their own images
    small = Atoms("OH2", positions=[[0.1, 0.2, 0], [1.0, 0.1, 0.3], [0.2, 1.0, 0.1]], cell=[2.6, 2.8, 3.1])
    small.pbc = True
    small.calc = AtomNetCalculator(make_potential("schnet", cutoff=3.0))
    np.testing.assert_allclose(
        small.get_stress(), small.calc.calculate_numerical_stress(small, d=1e-5), atol=1e-8
    )


def test_no_stress_for_molecules():
    atoms = ethanol()
    atoms.calc = AtomNetCalculator(make_potential("schnet"))
    with pytest.raises(Exception, match="stress"):
        atoms.get_stress()


def test_ase_contract_recomputes_only_on_change():
    atoms = water_box()
    calc = AtomNetCalculator(make_potential("schnet", cutoff=3.5))
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_potential_energies()
    atoms.calc.get_potential_energy(atoms.copy())  # an equal copy: nothing changed
    assert calc.n_evaluations == 1
    atoms.positions[0, 0] += 0.01
    assert atoms.get_potential_energy() != e0
    assert calc.n_evaluations == 2
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=False)
    atoms.get_forces()
    assert calc.n_evaluations == 3
    atoms.numbers[1] = 6
    atoms.get_forces()
    assert calc.n_evaluations == 4
    atoms.pbc = False
    assert "stress" not in calc.results or calc.results.get("stress") is None
    atoms.get_potential_energy()
    assert calc.n_evaluations == 5
    assert calc.n_neighbor_builds == 4  # the position change reused the list


def test_check_state_agrees_with_ase_compare_atoms():
    """The fast check_state reports exactly what ASE's compare_atoms reports."""
    from ase.calculators.calculator import compare_atoms

    atoms = water_box()
    calc = AtomNetCalculator(make_potential("schnet", cutoff=3.5))
    calc.calculate(atoms, ["energy"])
    variants = {"same": atoms.copy()}
    for name in ("positions", "tiny", "cell", "pbc", "numbers", "charges", "magmoms", "fewer"):
        b = atoms.copy()
        if name == "positions":
            b.positions[3, 1] += 1e-3
        elif name == "tiny":  # below ASE's tolerance of 1e-15 Å
            b.positions[3, 1] = np.nextafter(b.positions[3, 1], np.inf)
        elif name == "cell":
            b.cell[0, 0] += 1e-6
        elif name == "pbc":
            b.pbc = [True, False, True]
        elif name == "numbers":
            b.numbers[0] = 9
        elif name == "charges":
            b.set_initial_charges(np.ones(len(b)))
        elif name == "magmoms":
            b.set_initial_magnetic_moments(np.ones(len(b)))
        else:
            b = b[:-3]
        variants[name] = b
    for name, b in variants.items():
        assert set(calc.check_state(b)) == set(compare_atoms(calc.atoms, b)), name
    assert calc.check_state(variants["same"]) == calc.check_state(variants["tiny"]) == []
    assert calc.check_state(variants["positions"]) == ["positions"]
    calc.atoms.set_initial_magnetic_moments(np.zeros(len(atoms)))  # shared array with other values
    assert calc.check_state(variants["magmoms"]) == compare_atoms(calc.atoms, variants["magmoms"])


def test_energy_unit_conversion():
    pot = make_potential("schnet")
    atoms = water_box()
    in_ev = AtomNetCalculator(pot)
    in_kcal = AtomNetCalculator(pot, energy_unit="kcal/mol")  # same numbers, read as kcal/mol
    r_ev, r_kcal = {}, {}
    for calc, r in ((in_ev, r_ev), (in_kcal, r_kcal)):
        calc.calculate(atoms, ["energy", "forces", "stress"])
        r.update(calc.results)
    for key in ("energy", "energies", "forces", "stress"):
        np.testing.assert_allclose(r_kcal[key], np.asarray(r_ev[key]) * KCAL_PER_MOL, rtol=1e-12, atol=1e-15)
    assert KCAL_PER_MOL == pytest.approx(0.0433641, rel=1e-6)
    with pytest.raises(ValueError, match="unknown energy unit"):
        AtomNetCalculator(pot, energy_unit="furlong")


@pytest.mark.parametrize("periodic", [False, True])
def test_verlet_skin_gives_identical_results(periodic):
    """50 hot MD steps: a skin list (rebuilt rarely) equals a list rebuilt every step, to 1e-10."""
    if periodic:
        atoms, pot = water_box(), make_potential("schnet", cutoff=3.5)
    else:
        atoms, pot = ethanol(), make_potential("schnet")
    skinned, fresh = AtomNetCalculator(pot, skin=0.3), AtomNetCalculator(pot, skin=0.0)
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(size=(len(atoms), 3)) * 0.12 / np.sqrt(atoms.get_masses())[:, None])
    atoms.calc = skinned
    start = atoms.positions.copy()
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    for step in range(50):
        dyn.run(1)
        if periodic and step == 25:
            atoms.wrap()  # jumps by a lattice vector: must rebuild, shifts must stay valid
        probe = atoms.copy()
        probe.calc = fresh
        assert atoms.get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), probe.get_forces(), atol=1e-10)
        if periodic:
            np.testing.assert_allclose(atoms.get_stress(), probe.get_stress(), atol=1e-10)
    moved = np.linalg.norm(atoms.positions - start, axis=1).max()
    assert moved > skinned.skin  # atoms really left the buffer ...
    assert 1 < skinned.n_neighbor_builds < 25  # ... so the list was rebuilt, but rarely
    assert fresh.n_neighbor_builds >= 50


def test_ensemble_mean_and_std():
    p1, p2 = make_potential("schnet", seed=0), make_potential("schnet", seed=1)
    atoms = ethanol()
    single = []
    for p in (p1, p2):
        c = AtomNetCalculator(p)
        c.calculate(atoms, ["energy", "forces"])
        single.append(dict(c.results))
    ens = AtomNetCalculator([p1, p2])
    ens.calculate(atoms, ["energy", "forces"])
    e = np.array([s["energy"] for s in single])
    assert ens.results["energy"] == pytest.approx(e.mean(), abs=1e-12)
    assert ens.results["energy_std"] == pytest.approx(e.std(), abs=1e-12)
    f = np.stack([s["forces"] for s in single])
    np.testing.assert_allclose(ens.results["forces"], f.mean(0), atol=1e-12)
    np.testing.assert_allclose(ens.results["forces_std"], f.std(0), atol=1e-12)
    assert ens.results["energies"].sum() == pytest.approx(ens.results["energy"], abs=1e-10)


def test_from_checkpoint(tmp_path):
    pot = make_potential("schnet")
    path = save_model(pot.model, tmp_path / "m.pt", meta={"energy_unit": "kcal/mol", "elements": [1, 6, 8]})
    calc = AtomNetCalculator.from_checkpoint(path)  # float32 by default
    assert calc.dtype == torch.float32 and calc.energy_unit == "kcal/mol"
    atoms = ethanol()
    atoms.calc = calc
    ref = AtomNetCalculator(pot, energy_unit="kcal/mol")
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(atoms), abs=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(atoms), atol=1e-4)
    with pytest.raises(ModelInputError, match=r"\['N'\]"):
        calc.get_potential_energy(molecule("CH3CN"))  # nitrogen: not in the training elements
    ens = AtomNetCalculator.from_checkpoint([path, path], dtype=torch.float64)
    assert ens.get_property("energy_std", atoms) == pytest.approx(0.0, abs=1e-12)


def test_bad_input_errors(tmp_path):
    calc = AtomNetCalculator(make_potential("schnet"))  # max_z = 20
    with pytest.raises(ModelInputError, match=r"element\(s\) \['Fe'\]"):
        calc.get_potential_energy(Atoms("Fe2", positions=[[0, 0, 0], [2, 0, 0]]))
    nan = ethanol()
    nan.positions[3, 1] = np.nan
    with pytest.raises(ModelInputError, match=r"non-finite.*\[3\]"):
        calc.get_potential_energy(nan)
    overlap = ethanol()
    overlap.positions[5] = overlap.positions[2] + 0.01
    with pytest.raises(ModelInputError, match="atoms 2 and 5 overlap"):
        calc.get_potential_energy(overlap)
    with pytest.raises(AtomNetError, match=r"missing\.pt"):
        AtomNetCalculator.from_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80garbage")
    with pytest.raises(AtomNetError, match=r"corrupt\.pt"):
        AtomNetCalculator.from_checkpoint(corrupt)
    # the calculator recovers after an error
    assert np.isfinite(calc.get_potential_energy(ethanol()))


def test_far_away_atom_keeps_results_finite():
    atoms = ethanol()
    calc = AtomNetCalculator(make_potential("schnet"))
    atoms.calc = calc
    atoms.positions[0] += [1e6, -3e5, 2e5]
    assert np.isfinite(atoms.get_potential_energy())
    assert np.isfinite(atoms.get_forces()).all()
    assert np.isfinite(atoms.get_potential_energies()).all()
    np.testing.assert_allclose(atoms.get_forces()[0], 0.0, atol=1e-12)  # isolated: no neighbours


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_compiled_calculator_matches_eager(name):
    """compile=True: same energies, per-atom energies, forces and stress as eager, across a neighbour-list
    rebuild that changes the number of pairs (dynamic shapes); the caller's weights are untouched."""
    pot = make_potential(name, cutoff=3.5)
    eager = AtomNetCalculator(pot, skin=0.3)
    compiled = AtomNetCalculator(pot, skin=0.3, compile=True)
    atoms = water_box(n=3)
    frames = [atoms, atoms.copy()]
    frames[1].positions[:3] += 0.4  # moves a molecule: the pair list is rebuilt with another length
    pairs = []
    for frame in frames:
        for calc in (eager, compiled):
            calc.calculate(frame, ["energy", "forces", "stress"])
        pairs.append(compiled.pairs.built.pair_i.numel())
        for key in ("energy", "energies", "forces", "stress"):
            np.testing.assert_allclose(compiled.results[key], eager.results[key], rtol=1e-9, atol=1e-10)
    assert pairs[0] != pairs[1] and compiled.n_neighbor_builds == 2
    assert all(p.requires_grad for p in pot.model.parameters())
    if not compiled.compiled:
        pytest.skip("torch.compile is unavailable here (fell back to eager); equality checked on eager")


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_tabulated_calculator_matches_exact_and_compiles(name):
    """tabulate=True: results within the table's error of the exact model (energies 1e-8 eV, forces and
    stress 1e-6 relative), eagerly and compiled (compiled = eager to round-off), across a pair-list rebuild;
    a failed compilation falls back to the tabulated eager models, not to the exact ones."""
    pot = make_potential(name, cutoff=3.5)
    exact = AtomNetCalculator(pot, skin=0.3)
    tabulated = AtomNetCalculator(pot, skin=0.3, tabulate=True)
    both = AtomNetCalculator(pot, skin=0.3, tabulate=True, compile=True)
    atoms = water_box(n=3)
    frames = [atoms, atoms.copy()]
    frames[1].positions[:3] += 0.4
    for frame in frames:
        for calc in (exact, tabulated, both):
            calc.calculate(frame, ["energy", "forces", "stress"])
        for key in ("energy", "energies"):
            np.testing.assert_allclose(tabulated.results[key], exact.results[key], rtol=0, atol=1e-8)
        for key in ("forces", "stress"):
            scale = np.abs(exact.results[key]).max()
            np.testing.assert_allclose(tabulated.results[key], exact.results[key], rtol=0, atol=1e-6 * scale)
        for key in ("energy", "energies", "forces", "stress"):
            np.testing.assert_allclose(both.results[key], tabulated.results[key], rtol=1e-9, atol=1e-10)
    assert tabulated.tabulated and both.n_neighbor_builds == 2
    model = tabulated._models[0]
    assert type(model.get_submodule(model.distance_filters()[0])).__name__ == "TabulatedFilter"
    both._models = [lambda *a: (_ for _ in ()).throw(RuntimeError("inductor: no compiler"))]
    with pytest.warns(UserWarning, match="torch.compile failed"):
        both.calculate(frames[0], ["energy", "forces"])
    assert both._models is both._eager_models and not both.compiled
    tabulated.calculate(frames[0], ["energy", "forces"])
    np.testing.assert_array_equal(both.results["forces"], tabulated.results["forces"])  # same eager models


def test_tabulation_spacing_option():
    """tabulate=<float> sets the grid spacing (Å): a coarser grid is further from the exact model; forces are
    slopes of the spline, whose error falls like h³ (0.05 → 0.025 Å: about 8× smaller)."""
    pot = make_potential("schnet", cutoff=3.5)
    atoms = ethanol()
    exact = AtomNetCalculator(pot).get_forces(atoms.copy())
    errors = {}
    for spacing in (0.05, 0.025):
        calc = AtomNetCalculator(pot, tabulate=spacing)
        model = calc._models[0]
        assert model.get_submodule(model.distance_filters()[0]).spacing == pytest.approx(spacing)
        errors[spacing] = np.abs(calc.get_forces(atoms.copy()) - exact).max()
    assert 5 < errors[0.05] / errors[0.025] < 12
    with pytest.raises(ConfigError, match="spacing must be > 0"):
        AtomNetCalculator(pot, tabulate=0.0)


def test_compiled_calculator_with_two_threads():
    """torch.compile with more than one torch thread (inductor's threaded scatter code generation failed in
    torch 2.13; the calculator compiles single-threaded element-wise kernels): compiled, equal to eager."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pot = make_potential("schnet")
        compiled = AtomNetCalculator(pot, compile=True)
        compiled.calculate(ethanol(), ["energy", "forces"])
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            pytest.skip("no C++ compiler for torch.compile's inductor backend on this machine")
        assert compiled.compiled
        eager = AtomNetCalculator(pot)
        eager.calculate(ethanol(), ["energy", "forces"])
        for key in ("energy", "energies", "forces"):
            np.testing.assert_allclose(compiled.results[key], eager.results[key], rtol=1e-9, atol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    class Broken(torch.nn.Module):  # what torch.compile returns when inductor cannot build its kernels
        def __init__(self, model, **kwargs):
            super().__init__()
            self.cutoff = model.cutoff

        def forward(self, *args, **kwargs):
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", Broken)
    pot = make_potential("schnet")
    calc = AtomNetCalculator(pot, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*eagerly"):
        energy = calc.get_potential_energy(ethanol())
    assert not calc.compiled
    assert energy == pytest.approx(AtomNetCalculator(pot).get_potential_energy(ethanol()), abs=1e-12)
    with pytest.raises(ModelInputError, match="overlap"):  # input errors are not mistaken for compiler ones
        bad = ethanol()
        bad.positions[1] = bad.positions[0]
        AtomNetCalculator(pot, compile=True).get_potential_energy(bad)
