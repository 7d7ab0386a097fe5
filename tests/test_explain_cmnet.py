"""Explanations of a network on Coulomb matrices (CMNet): entry relevance mapped to atoms, conservation,
PatternNet / PatternAttribution, and input invariance (Kindermans et al. 2017) — against independent
expectations (a hand-written mapping, numpy patterns, a toy with known signal and distractor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from torch import nn

from atomnet import keys
from atomnet.baselines.coulomb import coulomb_matrices
from atomnet.data import batch_from_atoms
from atomnet.errors import ExplanationError
from atomnet.explain import create_analyzer, list_methods
from atomnet.explain.evaluate import input_invariance, input_shift_copy, model_randomisation
from atomnet.explain.patterns import fit_patterns
from atomnet.models import build_model
from atomnet.potential import Potential
from atomnet.units import BOHR

NAMES = ["CH3CH2OH", "CH4", "C6H6", "H2O", "NH3", "CH3OH", "C2H6", "C2H4", "HCOOH", "CH3CHO"]


def rattled(names, seed=0, scale=0.05):
    out = []
    for k, name in enumerate(names):
        a = molecule(name)
        a.rattle(scale, seed=seed + k)  # distinct row norms: a unique sorting
        out.append(a)
    return out


MOLS = rattled(NAMES[:3])
TRAIN = rattled(NAMES * 4, seed=100, scale=0.1)


def make_potential(**kw) -> Potential:
    torch.manual_seed(0)
    args = dict(max_atoms=12, hidden=[32, 16], n_steps=5, theta=5.0, max_z=20)
    args.update(kw)
    model = build_model("cmnet", **args)
    model.set_statistics(-0.3, 0.2, atomref=np.linspace(0, -1.9, 20))
    return Potential(model).double().eval()


def fitted(name, pot, **params):
    analyzer = create_analyzer(name, pot, **params)
    return analyzer.fit(TRAIN) if analyzer.method.needs_fit else analyzer


def test_every_method_runs_and_conserving_methods_conserve():
    pot = make_potential()
    energies = pot(batch_from_atoms(MOLS, cutoff=0.0, dtype=torch.float64), forces=False)[keys.ENERGY]
    for name in list_methods():
        analyzer = fitted(name, pot)
        for e, energy in zip(analyzer.analyze(MOLS), energies.tolist(), strict=True):
            assert e.relevance.shape == (len(e.numbers),) and np.isfinite(e.relevance).all(), name
            assert e.energy == pytest.approx(energy, abs=1e-12)
            if analyzer.method.conserving:
                assert e.relevance.sum() + e.unexplained == pytest.approx(e.energy, abs=1e-9), name


def test_entry_relevance_maps_to_atoms_as_written():
    """LRP-0 on a bias-free linear CMNet is w_e x_e per entry (scaled by std·N): map it by hand."""
    pot = make_potential(hidden=[], expansion="none")
    model = pot.model
    with torch.no_grad():
        model.output[0].bias.zero_()
        model.features.input_mean.copy_(torch.linspace(0, 3, model.features.input_mean.shape[0]))
    model.set_statistics(0.0, 0.2, atomref=None)  # no reference energies: the energy is all relevance
    w = model.output[0].weight.detach().numpy()[0]
    size = 12
    for atoms in MOLS:
        n = len(atoms)
        z = np.zeros((1, size), dtype=int)
        z[0, :n] = atoms.numbers
        r = np.zeros((1, size, 3))
        r[0, :n] = atoms.positions / BOHR
        m = coulomb_matrices(z, r)[0]
        order = np.argsort(-np.linalg.norm(m, axis=1), kind="stable")
        ms = m[order][:, order]
        iu = np.triu_indices(size)
        x = (ms[iu] - model.features.input_mean.numpy()) / model.features.input_std.numpy()
        entry = w * x * 0.2 * n  # E = N·std·y, y = wᵀx
        expect, pad = np.zeros(n), 0.0
        for e, (p, q) in enumerate(zip(*iu, strict=True)):
            i, j = order[p], order[q]
            if i >= n or j >= n:
                pad += entry[e]
            elif i == j:
                expect[i] += entry[e]
            else:
                expect[i] += entry[e] / 2
                expect[j] += entry[e] / 2
        (ex,) = create_analyzer("lrp-0", pot).analyze(atoms)
        np.testing.assert_allclose(ex.relevance, expect, rtol=1e-10, atol=1e-12)
        assert ex.absorbed["padding"] == pytest.approx(pad, abs=1e-10)
        (gx,) = create_analyzer("gradient-x-input", pot).analyze(atoms)
        np.testing.assert_allclose(gx.relevance, expect, rtol=1e-10, atol=1e-12)


def test_batch_equals_single_and_padding_is_no_atom():
    pot = make_potential()
    for name in ("lrp-epsilon", "integrated-gradients", "gradient"):
        together = create_analyzer(name, pot).analyze(MOLS)
        for atoms, e in zip(MOLS, together, strict=True):
            (alone,) = create_analyzer(name, pot).analyze(atoms)
            np.testing.assert_allclose(e.relevance, alone.relevance, rtol=1e-9, atol=1e-12)


def test_pattern_toy_recovers_the_signal_direction():
    """Kindermans et al.'s toy: x = a_s y + a_d ε; the filter w = (1, −1) cancels the distractor, so w differs
    from a_s = (1, 0), but the pattern (linear and two-component) is a_s."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(200_000, 1, generator=gen, dtype=torch.float64)
    eps = torch.randn(200_000, 1, generator=gen, dtype=torch.float64)
    x = y * torch.tensor([[1.0, 0.0]], dtype=torch.float64) + eps * torch.tensor(
        [[1.0, 1.0]], dtype=torch.float64
    )
    layer = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
    model = nn.Sequential(layer)
    torch.testing.assert_close(model(x), y)
    for estimator in ("linear", "two-component"):
        a_pos, a_neg = fit_patterns(model, [x[:100_000], x[100_000:]], estimator)["0"]
        np.testing.assert_allclose(a_pos[:, 0].numpy(), [1.0, 0.0], atol=0.01)
        np.testing.assert_allclose(a_neg[:, 0].numpy(), [1.0, 0.0], atol=0.01)
    # the attribution w ⊙ a puts everything on the signal dimension; the weights alone do not
    a = fit_patterns(model, [x])["0"][0][:, 0]
    np.testing.assert_allclose((layer.weight[0].detach() * a).numpy(), [1.0, 0.0], atol=0.01)


def test_patternattribution_equals_numpy_on_a_linear_network():
    pot = make_potential(hidden=[], expansion="none")
    model = pot.model
    batch = batch_from_atoms(TRAIN, cutoff=0.0, dtype=torch.float64)
    x = model.entries(batch, batch.positions, None).detach().numpy()
    w = model.output[0].weight.detach().numpy()[0]
    y = x @ w
    cov = ((x - x.mean(0)) * (y - y.mean())[:, None]).mean(0)
    a = cov / (w @ cov)
    analyzer = create_analyzer("patternattribution", pot).fit(TRAIN, batch_size=7)
    (ex,) = analyzer.analyze(MOLS[:1])
    r_entries = 0.2 * len(MOLS[0]) * w * a  # from 1 through std and the copy to N atoms
    owners = model.features.owners[0].numpy()
    expect = np.zeros(len(MOLS[0]))
    for e, (i, j) in enumerate(owners):
        if i >= 0 and j >= 0:
            expect[i] += r_entries[e] / 2
            expect[j] += r_entries[e] / 2
        elif i >= 0:
            expect[i] += r_entries[e]
    np.testing.assert_allclose(ex.relevance, expect, rtol=1e-6, atol=1e-12)  # E[xy] − E[x]E[y] cancels digits


def test_pattern_methods_need_a_fit_and_work_for_schnet():
    pot = make_potential()
    with pytest.raises(ExplanationError, match="analyzer.fit"):
        create_analyzer("patternattribution", pot).analyze(MOLS)
    with pytest.raises(ExplanationError, match="estimator"):
        create_analyzer("patternnet", pot, estimator="cubic")
    torch.manual_seed(0)
    schnet = Potential(
        build_model("schnet", n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=10)
    ).double()
    ex = create_analyzer("patternattribution", schnet, estimator="two-component").fit(TRAIN).analyze(MOLS)
    assert all(np.isfinite(e.relevance).all() and np.abs(e.relevance).max() > 0 for e in ex)


def test_input_shift_copy_and_the_invariance_table():
    pot = make_potential()
    shifted = input_shift_copy(pot, 1.5)
    batch = batch_from_atoms(MOLS, cutoff=0.0, dtype=torch.float64)
    a, b = pot(batch, forces=False)[keys.ENERGY], shifted(batch, forces=False)[keys.ENERGY]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    methods = [
        "gradient",
        "gradient-x-input",
        "integrated-gradients",
        ("integrated-gradients", {"baseline": "offset"}),
        "lrp-epsilon",
        "deep-taylor",
        "patternattribution",
    ]
    rows = {r["label"]: r["invariant"] for r in input_invariance(pot, MOLS, methods, shift=1.5, fit=TRAIN)}
    # Kindermans et al. 2017: gradient, PatternAttribution and IG with the shifted baseline are invariant
    assert rows == {
        "gradient": True,
        "gradient-x-input": False,
        "integrated-gradients": False,
        "integrated-gradients baseline=offset": True,
        "lrp-epsilon": False,
        "deep-taylor": False,
        "patternattribution": True,
    }


def test_model_randomisation_cascades_over_the_dense_layers():
    pot = make_potential()
    rows = model_randomisation(pot, MOLS, "lrp-epsilon")
    assert [r["step"] for r in rows] == ["trained", "output.4", "output.2", "output.0"]
    assert rows[-1]["spearman"] < 0.9


def test_walks_refuse_a_network_without_message_passing():
    from atomnet.explain.walks import walks

    with pytest.raises(ExplanationError, match="interaction"):
        walks(make_potential(), MOLS[0])


def test_masking_an_atom_zeroes_its_entries():
    """The ``mask`` perturbation on a feature input: entries of a ghost atom become 0, the others stay."""
    from atomnet.explain.propagation import embedding_leaf

    pot = make_potential(expansion="none")
    batch = batch_from_atoms(MOLS[:1], cutoff=0.0, dtype=torch.float64)
    mask = torch.ones(len(MOLS[0]), 1, dtype=torch.float64)
    mask[2] = 0
    with embedding_leaf(pot.model, batch, scale=mask) as state:
        pot.model(batch)
    leaf = state.leaves[0][0].detach().numpy()
    owners = pot.model.features.owners[0].numpy()
    ghost = (owners == 2).any(axis=1)
    full = pot.model.entries(batch, batch.positions, None)[0].detach().numpy()
    np.testing.assert_array_equal(leaf[ghost], 0.0)
    np.testing.assert_allclose(leaf[~ghost], full[~ghost])


def test_entry_relevance_is_reported_and_maps_to_the_atoms():
    """Explanation.features holds the relevance of every Coulomb-matrix entry; mapped by feature_atoms it
    gives the atom relevance, padding entries give the ``padding`` ledger entry; JSON keeps both."""
    from atomnet.explain import Explanation

    pot = make_potential()
    for name in ("lrp-gamma", "integrated-gradients", "gradient-x-input"):
        for e in create_analyzer(name, pot).analyze(MOLS):
            f, owners = e.features, e.feature_atoms
            assert f.shape == (78,) and owners.shape == (78, 2)
            atoms = np.zeros(len(e.numbers))
            for value, (i, j) in zip(f, owners, strict=True):
                if i >= 0:
                    atoms[i] += value if j < 0 else value / 2
                if j >= 0:
                    atoms[j] += value / 2
            np.testing.assert_allclose(atoms, e.relevance, rtol=1e-10, atol=1e-12)
            pad = f[owners[:, 0] < 0].sum()
            if "padding" in e.absorbed:
                assert e.absorbed["padding"] == pytest.approx(pad, abs=1e-10)
            back = Explanation.from_dict(json.loads(e.to_json()))
            np.testing.assert_array_equal(back.features, f)
            np.testing.assert_array_equal(back.feature_atoms, owners)
    # the diagonal entries of one molecule are its atoms, once each
    e = create_analyzer("lrp-0", pot).analyze(MOLS[0])[0]
    diagonal = e.feature_atoms[(e.feature_atoms[:, 0] >= 0) & (e.feature_atoms[:, 1] < 0), 0]
    assert sorted(diagonal.tolist()) == list(range(len(MOLS[0])))


def test_entry_picture(tmp_path):
    from atomnet.explain.plots import entry_matrix, plot_entries

    pot = make_potential()
    e = create_analyzer("lrp-epsilon", pot).analyze(MOLS[0])[0]
    matrix, labels = entry_matrix(e)
    n = len(MOLS[0])
    assert matrix.shape == (n, n) and np.allclose(matrix, matrix.T) and len(labels) == n
    # the matrix holds every real entry once above the diagonal: its sum counts off-diagonals twice
    real = e.features[e.feature_atoms[:, 0] >= 0]
    assert np.triu(matrix).sum() == pytest.approx(real.sum(), abs=1e-12)
    out = plot_entries([e], tmp_path / "entries.png")
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no entry relevance"):
        entry_matrix(create_analyzer("force-norm", pot).analyze(MOLS[0])[0])
