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
