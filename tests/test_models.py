"""Physics checks applied to every registered model (float64, small random models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from physics_checks import (
    check_atomic_energies_sum,
    check_batch_equals_single,
    check_cutoff_smoothness,
    check_forces_finite_difference,
    check_invariance,
    check_separability,
    check_stress_finite_difference,
    evaluate,
)

from atomnet import keys
from atomnet.data import batch_from_atoms
from atomnet.errors import AtomNetError, ModelInputError
from atomnet.models import MODELS, build_model, load_model_file, save_model
from atomnet.potential import Potential

SMALL = {
    "schnet": dict(n_atom_basis=16, n_filters=16, n_interactions=2, n_rbf=20, cutoff=4.0, max_z=20),
    "dtnn": dict(
        n_atom_basis=16, n_factors=16, n_interactions=2, cutoff=4.0, rbf_spacing=0.25, n_hidden=8, max_z=20
    ),
}


def make_potential(name: str, seed: int = 0, **overrides) -> Potential:
    torch.manual_seed(seed)
    model = build_model(name, **{**SMALL[name], **overrides})
    # non-trivial statistics so standardisation is exercised
    model.set_statistics(mean=-0.3, std=2.0, atomref=np.linspace(0, -1.9, 20))
    return Potential(model).double().eval()


#: the models built on atom-centred interactions; CMNet (a global descriptor) has its own tests (test_cmnet.py)
LOCAL = sorted(SMALL)


@pytest.fixture(params=LOCAL)
def pot(request) -> Potential:
    return make_potential(request.param)


def test_registry_covers_models():
    assert set(MODELS) == set(SMALL) | {"cmnet"} and set(SMALL) == {"schnet", "dtnn"}


def test_invariance(pot):
    check_invariance(pot, molecule("CH3CH2OH"))


def test_forces_are_minus_gradient(pot):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    check_forces_finite_difference(pot, atoms)


def test_batch_equals_single(pot):
    check_batch_equals_single(pot, [molecule("CH4"), molecule("CH3CH2OH"), molecule("H2O"), molecule("C6H6")])


def test_atomic_energies_sum(pot):
    check_atomic_energies_sum(pot, [molecule("CH3CH2OH"), molecule("NH3")])


def test_far_apart_molecules_are_additive(pot):
    check_separability(pot, molecule("CH3CH2OH"), molecule("H2O"))


def test_cutoff_smoothness(pot):
    check_cutoff_smoothness(pot)


@pytest.mark.parametrize("name", LOCAL)
def test_stress_matches_strain_derivative(name):
    pot = make_potential(name, cutoff=3.0)
    # a cell smaller than twice the cutoff: atoms interact with several of their own images
    atoms = Atoms(
        "OH2", positions=[[0.1, 0.2, 0.0], [1.0, 0.1, 0.3], [0.2, 1.0, 0.1]], cell=[2.6, 2.8, 3.1], pbc=True
    )
    check_stress_finite_difference(pot, atoms)


@pytest.mark.parametrize("name", LOCAL)
def test_periodic_forces_finite_difference(name):
    pot = make_potential(name, cutoff=3.0)
    atoms = Atoms(
        "OH2", positions=[[0.1, 0.2, 0.0], [1.0, 0.1, 0.3], [0.2, 1.0, 0.1]], cell=[2.6, 2.8, 3.1], pbc=True
    )
    check_forces_finite_difference(pot, atoms)


def test_float32_default_and_double_just_works():
    torch.manual_seed(0)
    pot = Potential(build_model("schnet", **SMALL["schnet"]))
    assert pot.dtype == torch.float32
    b = batch_from_atoms([molecule("CH4")], cutoff=4.0)
    e32 = pot(b)[keys.ENERGY]
    pot.double()
    e64 = pot(b)[keys.ENERGY]  # the batch is cast to the model's dtype
    assert e64.dtype == torch.float64
    torch.testing.assert_close(e32.double(), e64, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [*LOCAL, "cmnet"])
def test_default_batches_keep_float64_positions(name):
    """batch_from_atoms keeps ASE's float64 positions: a float64 potential gives forces that agree with
    central finite differences to float64 accuracy (positions rounded to float32 would fail at ~1e-4), and a
    float32 model (called directly, not through a Potential) casts the batch itself."""
    torch.manual_seed(0)
    kw = dict(max_atoms=12, hidden=[16], n_steps=5, theta=5.0, max_z=20) if name == "cmnet" else SMALL[name]
    model = build_model(name, **kw).eval()  # eval: CMNet sorts deterministically
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    batch = batch_from_atoms([atoms], cutoff=4.0)
    assert batch.positions.dtype == torch.float64
    np.testing.assert_array_equal(batch.positions.numpy(), atoms.positions)
    assert model(batch)[keys.ENERGY].dtype == torch.float32  # float32 model: cast once, inside
    pot = Potential(model).double().eval()
    forces = pot(batch)[keys.FORCES].numpy()
    h = 1e-5
    for i, k in [(0, 0), (2, 1), (8, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * h
            energies.append(
                float(pot(batch_from_atoms([moved], cutoff=4.0), forces=False)[keys.ENERGY][0].detach())
            )
        assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[i, k], abs=1e-7)


def test_create_graph_only_when_training():
    pot = make_potential("schnet")
    b = batch_from_atoms([molecule("CH4")], cutoff=4.0, dtype=torch.float64)
    assert not pot(b)[keys.FORCES].requires_grad
    pot.train()
    out = pot(b)
    assert out[keys.FORCES].requires_grad  # force loss can be back-propagated to the weights
    out[keys.FORCES].pow(2).sum().backward()
    assert pot.model.embedding.weight.grad is not None


def test_energy_only_training_keeps_parameter_gradients():
    pot = make_potential("dtnn").train()
    b = batch_from_atoms([molecule("CH4")], cutoff=4.0, dtype=torch.float64)
    pot(b, forces=False)[keys.ENERGY].sum().backward()
    assert pot.model.embedding.weight.grad is not None


def test_dtnn_hidden_states():
    pot = make_potential("dtnn")
    pot.model.return_hidden = True
    b = batch_from_atoms([molecule("CH3CH2OH")], cutoff=4.0, dtype=torch.float64)
    out = pot(b, forces=False)
    assert out["hidden_states"].shape == (3, 9, 16)  # embedding + 2 passes


def test_bad_input_errors(pot):
    too_heavy = Atoms("Fe2", positions=[[0, 0, 0], [2, 0, 0]])  # Z = 26 > max_z = 20
    with pytest.raises(ModelInputError, match="outside the model's range"):
        evaluate(pot, [too_heavy])
    nan = molecule("H2O")
    nan.positions[1, 0] = np.nan
    with pytest.raises(ModelInputError, match="non-finite"):
        evaluate(pot, [nan])
    empty = batch_from_atoms([Atoms()], cutoff=4.0)
    with pytest.raises(ModelInputError, match="empty batch"):
        pot(empty)
    short = batch_from_atoms([molecule("H2O")], cutoff=2.0)
    with pytest.raises(ModelInputError, match="cutoff"):
        pot(short)


def test_model_file_round_trip(tmp_path, pot):
    path = save_model(pot.model, tmp_path / "m.pt", meta={"units": "eV"})
    model, meta = load_model_file(path)
    assert meta == {"units": "eV"}
    b = batch_from_atoms([molecule("CH3CH2OH")], cutoff=pot.cutoff, dtype=torch.float64)
    torch.testing.assert_close(Potential(model).double()(b)[keys.ENERGY], pot(b)[keys.ENERGY])


def test_model_file_errors(tmp_path):
    with pytest.raises(AtomNetError, match="not found"):
        load_model_file(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(AtomNetError, match="cannot read model file"):
        load_model_file(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(AtomNetError, match="not an atomnet model file"):
        load_model_file(other)


@pytest.mark.parametrize("periodic", [False, True])
def test_mirrored_pairs_give_same_results_as_full_list(pot, periodic):
    """Filters computed once per unordered pair (mirrored batch) = filters computed for every pair."""
    from dataclasses import replace

    if periodic:
        atoms = Atoms(
            "OH2",
            positions=[[0.1, 0.2, 0.0], [1.0, 0.1, 0.3], [0.2, 1.0, 0.1]],
            cell=[3.1, 3.3, 3.6],
            pbc=True,
        )
        batch = batch_from_atoms([atoms], cutoff=pot.cutoff, dtype=torch.float64)
    else:
        batch = batch_from_atoms(
            [molecule("CH3CH2OH"), molecule("H2O")], cutoff=pot.cutoff, dtype=torch.float64
        )
    assert batch.mirrored
    h = batch.pair_i.numel() // 2
    assert torch.equal(batch.pair_i[:h], batch.pair_j[h:]) and torch.equal(batch.pair_j[:h], batch.pair_i[h:])
    full = replace(batch, mirrored=False)
    a, b = pot(batch, stress=periodic), pot(full, stress=periodic)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-12, rtol=0)
