"""The explanation interface: every method on SchNet and DTNN, checked against independent expectations
(conservation, a linear toy network, a slow second implementation of each dense-layer rule, symmetry,
additivity, batch = single)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from torch import nn

from atomnet import keys
from atomnet.data import batch_from_atoms
from atomnet.errors import AtomNetError, ExplanationError, ModelInputError
from atomnet.explain import create_analyzer, explain, list_methods, method_info
from atomnet.explain.rules import AlphaBeta, Epsilon, Gamma, ZPlus
from atomnet.models import build_model
from atomnet.models.base import AtomisticModel
from atomnet.nn.basis import GaussianRBF, make_cutoff
from atomnet.nn.cfconv import CFConv, FilterNetwork
from atomnet.nn.ops import ResidualAdd
from atomnet.nn.output import AtomEmbedding
from atomnet.potential import Potential

SMALL = {
    "schnet": dict(n_atom_basis=16, n_filters=16, n_interactions=2, n_rbf=20, cutoff=4.0, max_z=20),
    "dtnn": dict(
        n_atom_basis=16, n_factors=16, n_interactions=2, cutoff=4.0, rbf_spacing=0.25, n_hidden=8, max_z=20
    ),
}
CONSERVING = [m for m in list_methods() if method_info(m)["conserving"]]
#: SmoothGrad draws noise per atom slot: it is tested on its own below
DETERMINISTIC = [m for m in list_methods() if m != "smoothgrad"]


def make_potential(name: str, seed: int = 0, reduce: str = "sum") -> Potential:
    torch.manual_seed(seed)
    model = build_model(name, **SMALL[name], reduce=reduce)
    with torch.no_grad():  # biases of either sign, so every rule has something to absorb
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.3)
    model.set_statistics(mean=-0.3, std=2.0, atomref=np.linspace(0, -1.9, 20))
    return Potential(model).double().eval()


@pytest.fixture(params=sorted(SMALL))
def pot(request) -> Potential:
    return make_potential(request.param)


#: training structures for the methods that learn from data (PatternNet's patterns)
FIT = [molecule(n) for n in ("CH3CH2OH", "H2O", "C6H6", "CH4", "NH3", "CH3OH", "HCOOH", "C2H4")]
for _k, _a in enumerate(FIT):
    _a.rattle(0.1, seed=_k)


def analyzer_for(method, pot, **params):
    """``create_analyzer``, fitted on :data:`FIT` when the method learns from data."""
    analyzer = create_analyzer(method, pot, **params)
    return analyzer.fit(FIT * 2) if analyzer.method.needs_fit else analyzer


def relevance(pot, structures, method, **params):
    return [e.relevance for e in analyzer_for(method, pot, **params).analyze(structures)]


# --- conservation -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", CONSERVING)
def test_conservation(pot, method):
    """Σ relevance + unexplained = predicted energy, for every conserving method (float64)."""
    params = {"steps": 24} if method == "integrated-gradients" else {}
    for e in analyzer_for(method, pot, **params).analyze([molecule("CH3CH2OH"), molecule("H2O")]):
        total = e.relevance.sum() + e.unexplained
        tol = 1e-7 if method == "integrated-gradients" else 1e-9  # IG: quadrature error
        assert abs(total - e.energy) <= tol * max(1.0, abs(e.energy)), (method, total, e.energy)
        np.testing.assert_allclose(np.abs(e.relevance).sum() > 0, True)


def test_lrp0_absorbs_only_at_biases_and_references(pot):
    """LRP-0: the sums, gathers, products and activations pass relevance on exactly; what is absorbed sits
    at dense layers with a bias and at the standardisation, whose share is the reference energies."""
    model = pot.model
    biased = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.bias is not None}
    [e] = create_analyzer("lrp-0", pot).analyze(molecule("CH3CH2OH"))
    for name, value in e.absorbed.items():
        if name not in biased and name != "standardize":
            assert abs(value) < 1e-12, (name, value)
    np.testing.assert_allclose(e.absorbed["standardize"], e.reference.sum(), rtol=1e-12)
    assert sum(abs(e.absorbed[n]) for n in biased if n in e.absorbed) > 1e-3  # the biases did absorb


def test_lrp0_without_biases_puts_everything_on_atoms(pot):
    model = pot.model
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.zero_()
    model.set_statistics(mean=0.0, std=2.0, atomref=np.zeros(21))
    for method in ("lrp-0", "lrp-alphabeta", "deep-taylor", "lrp-gamma"):
        [e] = analyzer_for(method, pot).analyze(molecule("CH3CH2OH"))
        assert abs(e.unexplained) < 1e-9 * max(1, abs(e.energy)), (method, e.unexplained)
        np.testing.assert_allclose(e.relevance.sum(), e.energy, rtol=1e-9)


def test_intensive_target_conserves():
    pot = make_potential("schnet", reduce="mean")
    for method in ("contributions", "lrp-0", "lrp-gamma"):
        [e] = analyzer_for(method, pot).analyze(molecule("CH3CH2OH"))
        np.testing.assert_allclose(e.relevance.sum() + e.unexplained, e.energy, rtol=1e-10)


def test_contributions_are_the_atomic_energies(pot):
    atoms = molecule("CH3CH2OH")
    batch = batch_from_atoms([atoms], cutoff=pot.cutoff, dtype=torch.float64)
    atomic = pot(batch, forces=False)[keys.ATOMIC_ENERGIES].detach().numpy()
    [e] = create_analyzer("contributions", pot).analyze(atoms)
    np.testing.assert_allclose(e.relevance + e.reference, atomic, rtol=1e-12)
    std = pot.model.standardize
    np.testing.assert_allclose(
        e.reference, (std.mean + std.atomref[torch.as_tensor(atoms.numbers)]).numpy(), rtol=1e-12
    )


def test_integrated_gradients_completeness_riemann(pot):
    """The paper's midpoint sum converges to E(x) − E(0) too (slower than Gauss–Legendre)."""
    [e] = create_analyzer("integrated-gradients", pot, steps=256, quadrature="riemann").analyze(
        molecule("CH3CH2OH")
    )
    assert abs(e.relevance.sum() + e.unexplained - e.energy) < 1e-4
    # the baseline energy is the energy with every embedding zero, computed independently
    model = pot.model
    batch = batch_from_atoms([molecule("CH3CH2OH")], cutoff=pot.cutoff, dtype=torch.float64)
    saved = model.embedding.weight.detach().clone()
    with torch.no_grad():
        model.embedding.weight.zero_()
        e0 = pot(batch, forces=False)[keys.ENERGY].item()
        model.embedding.weight.copy_(saved)
    np.testing.assert_allclose(e.unexplained, e0, rtol=1e-12)


# --- a linear toy network: LRP-0 = gradient × input = the share of each atom ---------------------------


class LinearToy(AtomisticModel):
    """Embedding → Dense → cfconv → Dense → residual → Dense, no biases, no activations on the feature
    path (the filters are nonlinear in r, but constant for relevance): E is linear in the embeddings."""

    name = "linear-toy"

    def __init__(self, f: int = 8, cutoff: float = 4.0):
        super().__init__(cutoff, 20, "sum", {})
        self.embedding = AtomEmbedding(20, f)
        self.rbf = GaussianRBF(10, cutoff)
        self.cutoff_fn = make_cutoff("cosine", cutoff)
        self.filter_network = FilterNetwork(10, f)
        self.in2f = nn.Linear(f, f, bias=False)
        self.cfconv = CFConv()
        self.f2out = nn.Linear(f, f, bias=False)
        self.residual = ResidualAdd()
        self.out = nn.Linear(f, 1, bias=False)
        self.mask = None  # (n_atoms,) multiplies the embeddings (test only)

    def atomic_outputs(self, batch, vectors):
        rbf, fcut = self.radial(batch, vectors)
        x = self.embedding(batch.numbers)
        if self.mask is not None:
            x = x * self.mask[:, None]
        v = self.f2out(self.cfconv(self.in2f(x), self.filter_network(rbf, fcut), batch.pair_i, batch.pair_j))
        return self.out(self.residual(x, v)).squeeze(-1), {}


def test_linear_toy_lrp0_equals_gradient_times_input():
    torch.manual_seed(1)
    model = LinearToy().double()
    model.set_statistics(0.0, 1.7)
    pot = Potential(model).eval()
    atoms = molecule("CH3CH2OH")
    batch = batch_from_atoms([atoms], cutoff=4.0, dtype=torch.float64)
    # independent expectation: E is linear in the embeddings, so atom i's share is E with only i embedded
    shares = []
    for i in range(len(atoms)):
        model.mask = torch.zeros(len(atoms), dtype=torch.float64)
        model.mask[i] = 1.0
        shares.append(pot(batch, forces=False)[keys.ENERGY].item())
    model.mask = None
    for method in ("lrp-0", "gradient-x-input", "integrated-gradients", "contributions"):
        [e] = analyzer_for(method, pot).analyze(atoms)
        if method == "contributions":
            continue  # atom-wise energies are not the embedding shares (messages cross atoms)
        np.testing.assert_allclose(e.relevance, shares, rtol=1e-9, atol=1e-12, err_msg=method)
    assert np.ptp(shares) > 1e-3


# --- dense-layer rules against a slow implementation over explicit contributions c_jk ----------------


def slow_rule(rule, x, w, b, r_out):
    """R_j by the formulas, from the (n, in, out) contributions, one neuron sign at a time."""
    c = x[:, :, None] * w.T[None]  # (n, in, out)
    cb = b[None, None, :].expand(x.shape[0], 1, -1)  # the bias as one more contribution
    z = c.sum(1) + b
    cp, cn = c.clamp(min=0), c.clamp(max=0)
    zp, zn = cp.sum(1) + cb.clamp(min=0)[:, 0], cn.sum(1) + cb.clamp(max=0)[:, 0]
    if isinstance(rule, Epsilon):
        den = z + rule.epsilon * (2.0 * (z >= 0).double() - 1.0)
        share = c / den[:, None]
    elif isinstance(rule, Gamma):
        g = rule.gamma
        pos = (z >= 0)[:, None, :]
        num = torch.where(pos, c + g * cp, c + g * cn)
        den = torch.where(pos[:, 0], z + g * zp, z + g * zn)
        share = num / den[:, None]
    elif isinstance(rule, AlphaBeta):
        share = rule.alpha * cp / zp[:, None] - rule.beta * cn / zn[:, None]
    elif isinstance(rule, ZPlus):
        share = cp / cp.sum(1)[:, None]
    return (share * r_out[:, None, :]).sum(2)


@pytest.mark.parametrize(
    "rule", [Epsilon(0.0), Epsilon(0.3), Gamma(0.25), Gamma(2.0), AlphaBeta(1, 0), AlphaBeta(2, 1), ZPlus()]
)
def test_dense_rule_matches_slow_formula(rule):
    torch.manual_seed(3)
    layer = nn.Linear(7, 5).double()
    x = torch.randn(11, 7, dtype=torch.float64)  # inputs of either sign
    r_out = torch.randn(11, 5, dtype=torch.float64)
    with torch.no_grad():
        z = layer(x)
        (fast,) = rule.relevance(layer, (x,), z, r_out)
        slow = slow_rule(rule, x, layer.weight, layer.bias, r_out)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_gamma_zero_is_lrp0(pot):
    atoms = molecule("CH3CH2OH")
    np.testing.assert_allclose(
        relevance(pot, atoms, "lrp-gamma", gamma=0.0)[0], relevance(pot, atoms, "lrp-0")[0], rtol=1e-10
    )
    assert not np.allclose(
        relevance(pot, atoms, "lrp-gamma", gamma=1.0)[0], relevance(pot, atoms, "lrp-0")[0]
    )


# --- symmetry, locality, batching --------------------------------------------------------------------


def rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_invariance(pot, method):
    atoms = molecule("CH3CH2OH")
    ref = relevance(pot, atoms, method)[0]
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation(0).T + [1.5, -2.0, 0.7]
    np.testing.assert_allclose(relevance(pot, moved, method)[0], ref, rtol=1e-7, atol=1e-10)
    perm = np.random.default_rng(1).permutation(len(atoms))
    np.testing.assert_allclose(relevance(pot, atoms[perm], method)[0], ref[perm], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_far_atom_and_far_molecules_are_additive(pot, method):
    """An atom beyond the cutoff of every other atom gets its isolated-atom explanation and changes nobody
    else's; two molecules 100 Å apart explain like each one alone."""
    mol, other = molecule("CH3CH2OH"), molecule("H2O")
    lone = Atoms("N", positions=[[100.0, 0.0, 0.0]])
    far = other.copy()
    far.positions += [0.0, 100.0, 0.0]
    analyzer = analyzer_for(method, pot)
    [with_atom, with_mol] = analyzer.analyze([mol + lone, mol + far])
    [alone, atom_alone, other_alone] = analyzer.analyze([mol, lone, other])
    n = len(mol)
    np.testing.assert_allclose(with_atom.relevance, np.r_[alone.relevance, atom_alone.relevance], atol=1e-10)
    np.testing.assert_allclose(with_mol.relevance, np.r_[alone.relevance, other_alone.relevance], atol=1e-10)
    if with_atom.unexplained is not None:
        np.testing.assert_allclose(
            with_atom.unexplained, alone.unexplained + atom_alone.unexplained, atol=1e-9
        )
    if method == "contributions":  # the isolated atom's contribution is exactly its own energy
        isolated = create_analyzer("contributions", pot).analyze(lone)[0].energy
        np.testing.assert_allclose(with_atom.relevance[n] + with_atom.reference[n], isolated, atol=1e-12)


@pytest.mark.parametrize("method", list_methods())
def test_batch_equals_one_at_a_time(pot, method):
    structures = [molecule("CH3CH2OH"), molecule("H2O"), molecule("C6H6")]
    batched = analyzer_for(method, pot).analyze(structures)
    for atoms, e in zip(structures, batched, strict=True):
        [single] = analyzer_for(method, pot).analyze(atoms)
        if method == "smoothgrad":  # noise is drawn for the whole batch: compare statistics only
            assert single.relevance.shape == e.relevance.shape
            continue
        np.testing.assert_allclose(e.relevance, single.relevance, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(e.energy, single.energy, rtol=1e-12)


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_mirrored_and_unmirrored_batches_agree(pot, method):
    batch = batch_from_atoms([molecule("CH3CH2OH"), molecule("H2O")], cutoff=pot.cutoff, dtype=torch.float64)
    assert batch.mirrored
    perm = torch.from_numpy(np.random.default_rng(0).permutation(batch.pair_i.numel()))
    shuffled = replace(batch, pair_i=batch.pair_i[perm], pair_j=batch.pair_j[perm], mirrored=False)
    a = analyzer_for(method, pot).analyze(batch)
    b = analyzer_for(method, pot).analyze(shuffled)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.relevance, y.relevance, rtol=1e-9, atol=1e-12)


def test_smoothgrad_seeded_and_zero_noise_is_its_base(pot):
    atoms = molecule("CH3CH2OH")
    np.testing.assert_allclose(
        relevance(pot, atoms, "smoothgrad", sigma=0.0, samples=2)[0],
        relevance(pot, atoms, "gradient-x-input")[0],
        rtol=1e-12,
    )
    a = relevance(pot, atoms, "smoothgrad", sigma=0.1, samples=4, seed=3)[0]
    np.testing.assert_array_equal(a, relevance(pot, atoms, "smoothgrad", sigma=0.1, samples=4, seed=3)[0])
    assert not np.allclose(a, relevance(pot, atoms, "smoothgrad", sigma=0.1, samples=4, seed=4)[0])
    e = explain(pot, atoms, "smoothgrad", base="force-norm", samples=2)
    assert e.units == "eV/Å" and (e.relevance >= 0).all()


def test_force_norm_is_the_force_norm(pot):
    atoms = molecule("CH3CH2OH")
    batch = batch_from_atoms([atoms], cutoff=pot.cutoff, dtype=torch.float64)
    forces = pot(batch)[keys.FORCES].numpy()
    np.testing.assert_allclose(relevance(pot, atoms, "force-norm")[0], np.linalg.norm(forces, axis=1))


def test_gradient_matches_finite_differences_of_the_embedding(pot):
    """‖∂E/∂x_i⁰‖ against central differences: shift atom i's embedding row (a lone element, so its row
    is used by that atom only) along each feature."""
    atoms = Atoms("NCO", positions=[[0, 0, 0], [1.2, 0, 0], [1.9, 0.9, 0]])
    batch = batch_from_atoms([atoms], cutoff=pot.cutoff, dtype=torch.float64)
    weight = pot.model.embedding.weight
    g = relevance(pot, atoms, "gradient")[0]
    h = 1e-6
    for i, z in enumerate(atoms.numbers):
        fd = []
        for f in range(weight.shape[1]):
            vals = []
            for s in (h, -h):
                with torch.no_grad():
                    weight[z, f] += s
                    vals.append(pot(batch, forces=False)[keys.ENERGY].item())
                    weight[z, f] -= s
            fd.append((vals[0] - vals[1]) / (2 * h))
        np.testing.assert_allclose(g[i], np.linalg.norm(fd), rtol=1e-6)


def test_float32_close_to_float64():
    pot = make_potential("schnet")
    atoms = molecule("CH3CH2OH")
    for method in ("lrp-gamma", "integrated-gradients", "contributions"):
        r64 = relevance(pot, atoms, method)[0]
        r32 = analyzer_for(method, pot, dtype=torch.float32).analyze(atoms)[0].relevance
        np.testing.assert_allclose(r32, r64, rtol=1e-3, atol=1e-4 * np.abs(r64).max())
    assert pot.dtype == torch.float64  # the float32 analysis worked on a copy


# --- the model is left as it was; bad input ---------------------------------------------------------


@pytest.mark.parametrize("method", list_methods())
def test_model_untouched(pot, method):
    atoms = molecule("CH3CH2OH")
    batch = batch_from_atoms([atoms], cutoff=pot.cutoff, dtype=torch.float64)
    before = pot(batch)
    state = {k: v.clone() for k, v in pot.model.state_dict().items()}
    analyzer_for(method, pot).analyze(atoms)
    after = pot(batch)
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    for k, v in pot.model.state_dict().items():
        assert torch.equal(v, state[k])
    for mod in pot.model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and not mod._backward_hooks
    assert all(p.requires_grad for p in pot.model.parameters())


def test_unknown_module_on_the_relevance_path_is_named():
    pot = make_potential("schnet")
    pot.model.output[1] = nn.ReLU()  # a type no rule knows
    with pytest.raises(ExplanationError, match=r"'output\.1' \(ReLU\)"):
        create_analyzer("lrp-0", pot).analyze(molecule("H2O"))
    # gradient methods need no rules
    create_analyzer("gradient", pot).analyze(molecule("H2O"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: create_analyzer("lrp-magic", p), "unknown explanation method 'lrp-magic'"),
        (lambda p: create_analyzer("lrp-epsilon", p, gama=1), "has no parameter 'gama'"),
        (lambda p: create_analyzer("lrp-epsilon", p, epsilon=-1), "epsilon must be >= 0"),
        (lambda p: create_analyzer("lrp-epsilon", p, epsilon="abc"), "not a valid float"),
        (lambda p: create_analyzer("lrp-alphabeta", p, alpha=2, beta=0), "alpha - beta must be 1"),
        (lambda p: create_analyzer("integrated-gradients", p, steps=0), "steps must be >= 1"),
        (lambda p: create_analyzer("integrated-gradients", p, steps=2.5), "not a valid int"),
        (lambda p: create_analyzer("smoothgrad", p, base="lrp-0"), "base must be one of"),
        (lambda p: create_analyzer("lrp-0", p).analyze([]), "nothing to explain"),
        (lambda p: create_analyzer("lrp-0", object()), "cannot explain a object"),
        (lambda p: create_analyzer("lrp-0", "no-such-model"), "neither a file nor a pretrained model"),
    ],
)
def test_bad_input_is_one_line_error(pot, call, message):
    with pytest.raises(AtomNetError, match=message) as info:
        call(pot)
    assert "\n" not in str(info.value)


def test_nan_position_is_a_model_input_error(pot):
    atoms = molecule("H2O")
    atoms.positions[1, 0] = np.nan
    with pytest.raises(ModelInputError, match="non-finite"):
        create_analyzer("lrp-gamma", pot).analyze(atoms)


def test_explanation_json_round_trip(pot):
    from atomnet.explain import Explanation

    e = explain(pot, molecule("CH3CH2OH"), "lrp-epsilon", epsilon=0.1)
    back = Explanation.from_dict(__import__("json").loads(e.to_json()))
    np.testing.assert_allclose(back.relevance, e.relevance)
    assert back.params == {"epsilon": 0.1} and back.method == "lrp-epsilon" and back.units == "eV"
    assert abs(back.unexplained - e.unexplained) < 1e-15


def test_shipped_model_explains_and_conserves():
    atoms = molecule("CH3CH2OH")
    for method in ("lrp-gamma", "lrp-composite", "contributions"):
        [e] = create_analyzer(method, "schnet-md17-ethanol", dtype=torch.float64).analyze(atoms)
        np.testing.assert_allclose(e.relevance.sum() + e.unexplained, e.energy, rtol=1e-10)


def test_rules_follow_weights_changed_in_place(pot):
    """The cached W⁺/W⁻ splits of the γ/αβ/z⁺ rules are recomputed when a weight changes in place."""
    atoms = molecule("CH3CH2OH")
    before = relevance(pot, atoms, "lrp-gamma")[0]
    with torch.no_grad():
        pot.model.output[0].weight.mul_(-0.5)
    after = relevance(pot, atoms, "lrp-gamma")[0]
    fresh = create_analyzer("lrp-gamma", __import__("copy").deepcopy(pot)).analyze(atoms)[0].relevance
    np.testing.assert_allclose(after, fresh, rtol=1e-12)
    assert not np.allclose(after, before)


@pytest.mark.parametrize("rule", [Epsilon(0.0), Epsilon(0.3), Gamma(0.25), AlphaBeta(2, 1), ZPlus()])
def test_rule_jacobian_equals_the_rule_on_a_basis(rule):
    """The closed-form per-row Jacobians (used by walks) against the rule applied to every basis vector."""
    from atomnet.explain.walks import basis_jacobian

    torch.manual_seed(4)
    layer = nn.Linear(6, 5).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    with torch.no_grad():
        z = layer(x)
        torch.testing.assert_close(
            rule.jacobian(layer, (x,), z), basis_jacobian(rule, layer, (x,), z), rtol=1e-12, atol=1e-14
        )
