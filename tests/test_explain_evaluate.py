"""Faithfulness curves, deletion fidelity and model randomisation against exact expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from atomnet.errors import AtomNetError
from atomnet.explain import create_analyzer
from atomnet.explain.evaluate import (
    deletion_fidelity,
    learned_energies,
    model_randomisation,
    perturbation_curves,
    spearman,
)
from atomnet.models import build_model
from atomnet.potential import Potential

MOLS = [molecule("CH3CH2OH"), molecule("C6H6"), molecule("CH3COOH")]


def make_potential(cutoff: float, seed: int = 0) -> Potential:
    torch.manual_seed(seed)
    model = build_model(
        "schnet", n_atom_basis=16, n_filters=16, n_interactions=2, n_rbf=10, cutoff=cutoff, max_z=20
    )
    model.set_statistics(-0.3, 2.0, atomref=np.linspace(0, -1.9, 20))
    return Potential(model).double().eval()


def small_potential(name: str, features: int, blocks: int, cutoff: float) -> Potential:
    """A small SchNet or DTNN (float64) with non-trivial output statistics."""
    torch.manual_seed(0)
    hp = dict(n_atom_basis=features, n_interactions=blocks, cutoff=cutoff, max_z=20)
    if name == "schnet":
        hp.update(n_filters=features, n_rbf=10)
    else:
        hp.update(n_factors=features, rbf_spacing=0.25, n_hidden=features // 2)
    model = build_model(name, **hp)
    model.set_statistics(-0.3, 2.0, atomref=np.linspace(0, -1.9, 20))
    return Potential(model).double().eval()


def test_curves_are_exact_for_a_model_without_interactions():
    """Cutoff 0.5 Å: no atom sees another, E = Σ isolated energies, so deleting S lowers f by exactly
    Σ_{i∈S} contribution_i: MoRF is the running sum of the largest contributions, fidelity is 1."""
    pot = make_potential(0.5)
    rel = [e.relevance for e in create_analyzer("contributions", pot).analyze(MOLS)]
    c = perturbation_curves(pot, MOLS, rel, "contributions", "delete", steps=4, n_random=3)
    for m, r in enumerate(rel):
        ks = np.rint(c.fractions * len(r)).astype(int)
        top = np.concatenate([[0.0], np.cumsum(np.sort(r)[::-1])])
        bottom = np.concatenate([[0.0], np.cumsum(np.sort(r))])
        np.testing.assert_allclose(c.morf[m], top[ks], atol=1e-10)
        np.testing.assert_allclose(c.lerf[m], bottom[ks], atol=1e-10)
    s = c.summary()
    assert s["aopc_morf"]["mean"] >= s["aopc_random"]["mean"] >= s["aopc_lerf"]["mean"]
    assert s["gap_lerf_morf"]["mean"] > 0
    fid = deletion_fidelity(pot, MOLS, rel, n_subsets=10)
    np.testing.assert_allclose(fid["energy_drops"], fid["relevance_sums"], atol=1e-10)
    assert fid["pearson"] > 1 - 1e-9


def test_mask_all_atoms_is_the_zero_embedding_baseline():
    pot = make_potential(4.0)
    masked = learned_energies(pot, MOLS, masks=[np.zeros(len(a)) for a in MOLS])
    for f, e in zip(masked, create_analyzer("integrated-gradients", pot).analyze(MOLS), strict=True):
        np.testing.assert_allclose(f, e.unexplained - e.reference.sum(), rtol=1e-10)
    unmasked = learned_energies(pot, MOLS, masks=[np.ones(len(a)) for a in MOLS])
    np.testing.assert_allclose(unmasked, learned_energies(pot, MOLS), rtol=1e-12)


@pytest.mark.parametrize("perturbation", ["delete", "mask"])
def test_curves_start_at_zero_and_methods_differ(perturbation):
    pot = make_potential(4.0)
    rel = [e.relevance for e in create_analyzer("lrp-gamma", pot).analyze(MOLS)]
    c = perturbation_curves(pot, MOLS, rel, "lrp-gamma", perturbation, steps=5)
    assert c.morf.shape == (3, 6)
    np.testing.assert_allclose(c.morf[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(c.morf[:, -1], c.lerf[:, -1], atol=1e-10)  # everything removed either way
    assert not np.allclose(c.morf, c.lerf)


def test_model_randomisation_changes_relevance_and_leaves_the_model():
    pot = make_potential(4.0)
    state = {k: v.clone() for k, v in pot.model.state_dict().items()}
    rows = model_randomisation(pot, MOLS, "lrp-gamma")
    assert [r["step"] for r in rows] == ["trained", "output", "interactions.1", "interactions.0", "embedding"]
    assert rows[0]["spearman"] == 1.0 and rows[-1]["spearman"] < 0.9
    for k, v in pot.model.state_dict().items():
        assert torch.equal(v, state[k])


def test_spearman_and_bad_perturbation():
    assert spearman(np.array([1.0, 2, 3]), np.array([10.0, 20, 30])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    with pytest.raises(AtomNetError, match="perturbation must be one of"):
        perturbation_curves(make_potential(4.0), MOLS[:1], [np.zeros(9)], perturbation="blur")


def test_environment_labels():
    from atomnet.explain.views import environments

    ethanol = molecule("CH3CH2OH")
    labels = environments(ethanol.numbers, ethanol.positions)
    assert labels.count("C sp3 (4)") == 2 and labels.count("O sp3 (2)") == 1 and labels.count("H (1)") == 6
    assert environments(molecule("C6H6").numbers, molecule("C6H6").positions).count("C sp2 (3)") == 6
    hcn = molecule("HCN")
    assert environments(hcn.numbers, hcn.positions) == ["C sp (2)", "N sp (1)", "H (1)"]
    nh3 = molecule("NH3")
    assert environments(nh3.numbers, nh3.positions)[0] == "N sp3 (3)"


def test_statistics_group_every_atom():
    from atomnet.explain.views import relevance_statistics

    pot = make_potential(4.0)
    ex = create_analyzer("lrp-gamma", pot).analyze(MOLS)
    stats = relevance_statistics(ex)
    assert sum(r["count"] for r in stats["element"].values()) == sum(len(a) for a in MOLS)
    all_c = np.concatenate([e.relevance[e.numbers == 6] for e in ex])
    np.testing.assert_allclose(stats["element"]["C"]["mean"], all_c.mean(), rtol=1e-12)


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_probe_map_equals_the_probe_in_the_structure_for_one_block(name):
    """With one interaction block the probe's energy depends only on the embeddings around it, so the
    one-directional map equals the probe's learned energy in the ordinary structure molecule + probe; the
    molecule itself is unchanged by the probes and a probe beyond the cutoff has its isolated-atom value."""
    from ase import Atoms

    from atomnet.explain.views import probe_map

    pot = small_potential(name, features=8, blocks=1, cutoff=3.0)
    water = molecule("H2O")
    xs, ys, values, planar, numbers = probe_map(pot, water, probe=6, spacing=0.7, margin=3.5)
    contributions = create_analyzer("contributions", pot)
    for iy, ix in [(0, 0), (len(ys) // 2, len(xs) // 2), (2, len(xs) - 3)]:
        structure = Atoms(numbers=list(numbers) + [6], positions=np.vstack([planar, [xs[ix], ys[iy], 0.0]]))
        [e] = contributions.analyze(structure)
        np.testing.assert_allclose(values[iy, ix], e.relevance[-1], rtol=1e-9, atol=1e-12)
    [lone] = contributions.analyze(Atoms("C"))
    corner = values[0, 0]
    if np.min(np.linalg.norm(planar[:, :2] - [xs[0], ys[0]], axis=1)) > 3.0:
        np.testing.assert_allclose(corner, lone.relevance[0], rtol=1e-12)


@pytest.mark.parametrize("name", ["schnet", "dtnn"])
def test_input_shifted_copy_is_the_same_function_and_which_methods_notice(name):
    from atomnet.data import batch_from_atoms
    from atomnet.explain.evaluate import input_invariance, input_shift_copy

    pot = small_potential(name, features=16, blocks=2, cutoff=4.0)
    shifted = input_shift_copy(pot, 0.7)
    batch = batch_from_atoms(MOLS, cutoff=4.0, dtype=torch.float64)
    a, b = pot(batch), shifted(batch)
    torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=1e-9, atol=1e-10)
    assert not torch.equal(shifted.model.embedding.weight, pot.model.embedding.weight)
    rows = {
        r["method"]: r
        for r in input_invariance(
            pot,
            MOLS,
            ["contributions", "gradient", "force-norm", "lrp-0", "gradient-x-input", "integrated-gradients"],
            0.7,
        )
    }
    for m in ("contributions", "gradient", "force-norm"):  # functions of the model's function only
        assert rows[m]["invariant"], rows[m]
    for m in ("lrp-0", "gradient-x-input", "integrated-gradients"):  # depend on x⁰ itself / a zero baseline
        assert not rows[m]["invariant"], rows[m]
