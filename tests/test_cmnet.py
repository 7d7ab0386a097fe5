"""CMNet (Montavon et al. 2012): Coulomb matrices equal the baseline's, sorting, and the physics that holds for
a global, sorted descriptor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from physics_checks import (
    check_atomic_energies_sum,
    check_batch_equals_single,
    check_forces_finite_difference,
    check_invariance,
    evaluate,
)

from atomnet import keys
from atomnet.baselines.coulomb import coulomb_matrices, sort_by_row_norm, upper_triangle
from atomnet.data import batch_from_atoms
from atomnet.errors import ModelInputError
from atomnet.models import build_model, load_model_file, save_model
from atomnet.models.cmnet import coulomb_matrix, padded
from atomnet.potential import Potential
from atomnet.units import BOHR

MOLS = [molecule("CH3CH2OH"), molecule("CH4"), molecule("C6H6")]


def make_potential(**kw) -> Potential:
    torch.manual_seed(0)
    model = build_model("cmnet", max_atoms=12, hidden=[32, 16], n_steps=5, theta=5.0, max_z=20, **kw)
    model.set_statistics(-0.3, 2.0, atomref=np.linspace(0, -1.9, 20))
    return Potential(model).double().eval()


def test_matrices_equal_the_baseline():
    batch = batch_from_atoms(MOLS, cutoff=0.0, dtype=torch.float64)
    z = padded(batch, batch.numbers, 12)
    r = padded(batch, batch.positions / BOHR, 12)
    ours = coulomb_matrix(z, r).numpy()
    ref = coulomb_matrices(z.numpy(), r.numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # sorted upper triangles, on geometries without row-norm ties (symmetric molecules may order ties apart)
    rattled = [m.copy() for m in MOLS]
    for k, m in enumerate(rattled):
        m.rattle(0.02, seed=k)
    batch = batch_from_atoms(rattled, cutoff=0.0, dtype=torch.float64)
    z, r = padded(batch, batch.numbers, 12), padded(batch, batch.positions / BOHR, 12)
    pot = make_potential(expansion="none")
    feats = pot.model.entries(batch, batch.positions, None).detach().numpy()
    np.testing.assert_allclose(
        feats, upper_triangle(sort_by_row_norm(coulomb_matrices(z.numpy(), r.numpy()))), rtol=1e-12
    )


def test_random_sorting_in_training_and_deterministic_evaluation():
    pot = make_potential()
    batch = batch_from_atoms(MOLS, cutoff=0.0, dtype=torch.float64)
    a, b = (pot(batch, forces=False)[keys.ENERGY] for _ in range(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    pot.model.train()
    x1 = pot.model.entries(batch, batch.positions, torch.randn(3, 12, dtype=torch.float64) * 5)
    x2 = pot.model.entries(batch, batch.positions, torch.randn(3, 12, dtype=torch.float64) * 5)
    assert not torch.equal(x1, x2)
    # a draw permutes the same entries: the multiset of each molecule's values is unchanged
    x0 = pot.model.entries(batch, batch.positions, None)
    torch.testing.assert_close(x1.sort(1).values, x0.sort(1).values)
    # averaging over random sortings at test time
    avg = make_potential(test_sortings=8)
    e = avg(batch, forces=False)[keys.ENERGY]
    assert torch.isfinite(e).all() and not torch.allclose(e, a)
    # the evaluation draws are a fixed table: the same energies on every call, whatever the global RNG
    torch.manual_seed(123)
    torch.testing.assert_close(avg(batch, forces=False)[keys.ENERGY], e, rtol=0, atol=0)
    # ... and the mean of the model on those 8 noisy sortings, each molecule on its own
    model = avg.model
    table = model.evaluation_noise(8, batch.positions)
    assert table.shape == (8, model.max_atoms)
    by_hand = torch.stack(
        [model.output(model.features(batch, batch.positions, row.expand(3, -1))).squeeze(-1) for row in table]
    ).mean(0)
    y, _ = model.molecular_outputs(batch, batch.positions)
    torch.testing.assert_close(y, by_hand, rtol=1e-12, atol=1e-12)
    check_batch_equals_single(avg, MOLS)
    other = make_potential(test_sortings=8, sorting_seed=1)
    other.model.load_state_dict(model.state_dict())
    assert not torch.allclose(other(batch, forces=False)[keys.ENERGY], e)


def test_physics_that_holds():
    """Rotation/translation and permutation (distinct row norms), forces = −∇E, batch = single, per-atom
    shares sum to E. Not tested because it does not hold for a global descriptor: additivity of far-apart
    molecules and smoothness at a cutoff (there is none); periodic cells are not supported."""
    pot = make_potential()
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)  # distinct row norms (the symmetric geometry has ties)
    check_invariance(pot, atoms)
    check_forces_finite_difference(pot, atoms)
    check_batch_equals_single(pot, MOLS)
    check_atomic_energies_sum(pot, MOLS)


def test_file_round_trip_and_errors(tmp_path):
    pot = make_potential()
    model, _ = load_model_file(save_model(pot.model, tmp_path / "cm.pt"))
    batch = batch_from_atoms(MOLS, cutoff=0.0, dtype=torch.float64)
    torch.testing.assert_close(Potential(model).double().eval()(batch)[keys.ENERGY], pot(batch)[keys.ENERGY])
    with pytest.raises(ModelInputError, match="more than max_atoms=12"):
        evaluate(pot, [molecule("C6H6") + molecule("CH4")])
    with pytest.raises(ValueError, match="expansion must be"):
        build_model("cmnet", expansion="fourier")


def test_ase_calculator():
    from atomnet.calculator import AtomNetCalculator

    pot = make_potential()
    atoms = molecule("CH3CH2OH")
    atoms.calc = AtomNetCalculator(pot)
    e = atoms.get_potential_energy()
    ref = evaluate(pot, [atoms])
    np.testing.assert_allclose(e, ref[keys.ENERGY][0], rtol=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES], rtol=1e-5, atol=1e-8)


def test_cross_validation_script_uses_the_krr_folds(shared_data, tmp_path):
    """scripts/cmnet_qm7_cv.py: the test set of fold k is fold k of scripts/krr_qm7.py; a finished fold is read
    back instead of retrained."""
    import importlib.util
    import json
    from pathlib import Path

    from atomnet.baselines.krr import kfold_indices

    spec = importlib.util.spec_from_file_location(
        "cv", Path(__file__).resolve().parents[1] / "scripts" / "cmnet_qm7_cv.py"
    )
    cv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cv)
    splits = cv.fold_splits(7101, 5, 500, 0)
    for split, (rest, test) in zip(splits, kfold_indices(7101, 5, 0), strict=True):
        np.testing.assert_array_equal(split.test, test)
        np.testing.assert_array_equal(np.sort(np.concatenate([split.train, split.val])), rest)
        assert len(split.val) == 500
    argv = ["--data", str(shared_data / "qm7" / "qm7.tar.gz"), "--out", str(tmp_path), "--only", "0", "--minutes", "0.2",
            "--set", "train.max_epochs=1", "--set", "model.hidden=[8]", "--set", f"train.out_dir={tmp_path}",
            "--set", "train.num_threads=1"]  # fmt: skip
    assert cv.main(argv) == 0
    first = json.loads((tmp_path / "cv.json").read_text())
    assert set(first["folds"]) == {"0"} and first["folds"]["0"]["test_mae_kcal/mol"] > 0
    mtime = (tmp_path / "fold0" / "summary.json").stat().st_mtime
    assert cv.main(argv) == 0  # read back, not retrained
    assert (tmp_path / "fold0" / "summary.json").stat().st_mtime == mtime
