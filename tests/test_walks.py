"""Relevant walks (GNN-LRP): the fast transfer-matrix path against a slow per-walk reference, conservation,
symmetry, locality, pairs, subgraphs, body orders and top-k."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from walk_reference import slow_walk_relevance

from atomnet.data import batch_from_atoms
from atomnet.errors import AtomNetError
from atomnet.explain import body_order_relevance, create_analyzer, pair_relevance, subgraph_relevance, walks
from atomnet.explain.walks import enumerate_walks, top_walks, transfer_matrices
from atomnet.models import build_model
from atomnet.potential import Potential

SMALL = {
    "schnet": dict(n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=10, cutoff=2.0, max_z=20),
    "dtnn": dict(
        n_atom_basis=8, n_factors=8, n_interactions=2, cutoff=2.0, rbf_spacing=0.25, n_hidden=4, max_z=20
    ),
}


def make_potential(name: str, **overrides) -> Potential:
    torch.manual_seed(0)
    model = build_model(name, **{**SMALL[name], **overrides})
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.3)
    model.set_statistics(-0.3, 2.0, atomref=np.linspace(0, -1.9, 20))
    return Potential(model).double().eval()


@pytest.fixture(params=sorted(SMALL))
def pot(request):
    return make_potential(request.param)


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("rule", ["lrp-gamma", "lrp-epsilon", "lrp-0"])
def test_fast_walks_equal_the_per_walk_reference(pot, mirrored, rule):
    atoms = molecule("CH3CH2OH")
    batch = batch_from_atoms([atoms], cutoff=pot.cutoff, dtype=torch.float64)
    if not mirrored:
        perm = torch.from_numpy(np.random.default_rng(0).permutation(batch.pair_i.numel()))
        batch = replace(batch, pair_i=batch.pair_i[perm], pair_j=batch.pair_j[perm], mirrored=False)
    wm = transfer_matrices(pot.model, batch, rule)
    w, r = enumerate_walks(wm)
    for k in range(len(w)):  # every walk (145 here)
        ref = slow_walk_relevance(pot, batch, w[k].tolist(), rule)
        assert abs(r[k].item() - ref) <= 1e-9 * max(abs(ref), 1e-12) + 1e-15, (
            w[k].tolist(),
            r[k].item(),
            ref,
        )


def test_walks_conserve_to_atom_relevance_and_energy(pot):
    atoms = molecule("CH3CH2OH")
    e = walks(pot, atoms, "lrp-gamma")
    lrp = create_analyzer("lrp-gamma", pot).analyze(atoms)[0]
    per_atom = np.bincount(e.walks[:, 0], weights=e.relevance, minlength=len(atoms))
    np.testing.assert_allclose(per_atom, lrp.relevance, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(e.relevance.sum() + e.unexplained, e.energy, rtol=1e-10)
    assert e.walks.shape[1] == 3 and e.complete
    # every step goes to a neighbour within the cutoff or stays
    d = atoms.get_all_distances()
    for t in range(2):
        assert (d[e.walks[:, t], e.walks[:, t + 1]] < pot.cutoff).all()


def test_walk_and_pair_relevance_are_invariant(pot):
    atoms = molecule("CH3CH2OH")
    ref = walks(pot, atoms)
    ref_map = dict(zip(map(tuple, ref.walks.tolist()), ref.relevance, strict=True))
    moved = atoms.copy()
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    moved.positions = atoms.positions @ q.T + [3.0, -1.0, 2.0]
    perm = np.random.default_rng(3).permutation(len(atoms))
    permuted = moved[perm]  # new atom k is old atom perm[k]
    out = walks(pot, permuted)
    for w, r in zip(out.walks.tolist(), out.relevance, strict=True):
        np.testing.assert_allclose(r, ref_map[tuple(perm[w])], rtol=1e-7, atol=1e-13)
    pairs, pairs_perm = pair_relevance(pot, atoms), pair_relevance(pot, permuted)
    np.testing.assert_allclose(pairs_perm, pairs[np.ix_(perm, perm)], rtol=1e-7, atol=1e-13)


def test_pairs_subgraphs_and_body_orders_match_the_walk_list(pot):
    atoms = molecule("CH3CH2OH")
    e = walks(pot, atoms)
    visited = [set(w) for w in e.walks.tolist()]
    pairs = pair_relevance(pot, atoms)
    n = len(atoms)
    for i in range(n):
        np.testing.assert_allclose(
            pairs[i, i], sum(r for s, r in zip(visited, e.relevance, strict=True) if s == {i}), atol=1e-13
        )
        for j in range(i + 1, n):
            exact = sum(r for s, r in zip(visited, e.relevance, strict=True) if s == {i, j})
            np.testing.assert_allclose(pairs[i, j] + pairs[j, i], exact, atol=1e-13)
    subset = [0, 1, 2, 6]
    inside = sum(r for s, r in zip(visited, e.relevance, strict=True) if s <= set(subset))
    np.testing.assert_allclose(subgraph_relevance(pot, atoms, subset), inside, rtol=1e-10, atol=1e-14)
    orders = body_order_relevance(pot, atoms)
    np.testing.assert_allclose(orders.sum(), e.relevance.sum(), rtol=1e-10)
    np.testing.assert_allclose(
        orders[0] + orders[1], np.trace(pairs) + (pairs.sum() - np.trace(pairs)), rtol=1e-9
    )
    for k in range(3):
        np.testing.assert_allclose(
            orders[k],
            sum(r for s, r in zip(visited, e.relevance, strict=True) if len(s) == k + 1),
            atol=1e-12,
        )


def test_far_pairs_carry_exactly_zero(pot):
    """Atoms farther apart than T cutoffs share no walk: their pair relevance is exactly 0."""
    a = molecule("H2O")
    b = molecule("H2O")
    b.positions += [0.0, 0.0, 10.0]  # 10 Å > 2 blocks × 2 Å
    pairs = pair_relevance(pot, a + b)
    assert (pairs[:3, 3:] == 0).all() and (pairs[3:, :3] == 0).all()
    assert np.abs(pairs[:3, :3]).max() > 0


def test_top_k_is_the_top_of_the_full_list(pot):
    atoms = molecule("CH3CH2OH")
    full = walks(pot, atoms)
    lookup = dict(zip(map(tuple, full.walks.tolist()), full.relevance, strict=True))
    expected = np.sort(np.abs(full.relevance))[::-1]
    for k in (1, 7, 40):
        top = walks(pot, atoms, top_k=k)
        assert len(top.relevance) == k and not top.complete
        np.testing.assert_allclose(np.abs(top.relevance), expected[:k], rtol=1e-10)
        for w, r in zip(top.walks.tolist(), top.relevance, strict=True):
            np.testing.assert_allclose(r, lookup[tuple(w)], rtol=1e-10)
    # deeper model: top-k with a tiny beam still finds the exact top (the second pass is exact)
    deep = make_potential("schnet", n_interactions=4)
    wm = transfer_matrices(
        deep.model, batch_from_atoms([atoms], cutoff=2.0, dtype=torch.float64), "lrp-gamma"
    )
    w_all, r_all = enumerate_walks(wm)
    _, r_top = top_walks(wm, 25, beam=3)
    np.testing.assert_allclose(np.abs(r_top.numpy()), np.sort(np.abs(r_all.numpy()))[::-1][:25], rtol=1e-10)


def test_bad_input(pot):
    atoms = molecule("CH3CH2OH")
    with pytest.raises(AtomNetError, match="walks need an LRP rule"):
        walks(pot, atoms, rule="gradient")
    with pytest.raises(AtomNetError, match="unknown explanation method"):
        walks(pot, atoms, rule="lrp-magic")
    with pytest.raises(AtomNetError, match=r"walks need about .* GB .*top_k"):
        walks(pot, atoms, max_memory_gb=1e-9)
    with pytest.raises(AtomNetError, match="one structure at a time"):
        walks(pot, [atoms, atoms])
    with pytest.raises(AtomNetError, match="top_k must be >= 1"):
        walks(pot, atoms, top_k=0)
    with pytest.raises(AtomNetError, match="atom_set must name atoms"):
        subgraph_relevance(pot, atoms, [0, 99])
    lone = Atoms("C")
    e = walks(pot, lone)
    assert e.walks.tolist() == [[0, 0, 0]]
