"""The fused filter-network kernel (atomnet.nn.fused_filter) against a pair-by-pair reference, gradcheck and the
plain module path of SchNet."""

from __future__ import annotations

import contextlib

import pytest
import torch
from ase.build import molecule
from kernel_checks import assert_same_energy_and_gradients, energy_training_step, schnet_potential

from atomnet.data import batch_from_atoms
from atomnet.nn import fused, fused_filter


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """The kernel must build where atomnet's other kernels build (g++, ninja, torch's BLAS); a failure is real."""
    if not (fused.enabled() and fused_filter.EXTENSION.enabled()):
        pytest.skip("ATOMNET_FUSED=0 or ATOMNET_FUSED_FILTER=0 is set")
    assert fused_filter.EXTENSION.load() is not None, "the fused filter-network kernel did not build"


def reference(x, rbf, w1, b1, w2, b2, scale, pair_i, pair_j):
    """m_i = Σ_j x_j ∘ W(e_ij) f_c(r_ij), one pair at a time, W(e) = softplus(W₁ e + b₁) W₂ᵀ + b₂ by libm."""
    h = rbf.shape[0]
    out = torch.zeros_like(x)
    for p in range(pair_i.numel()):
        q = p % h
        w = w2 @ torch.log1p(torch.exp(w1 @ rbf[q] + b1)) + b2
        out[pair_i[p]] += x[pair_j[p]] * w * scale[q]
    return out


def inputs(n_atoms, f, k, hidden, h, mirrored, dtype=torch.float64, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_pairs = 2 * h if mirrored else h
    return dict(
        x=torch.randn(n_atoms, f, generator=g, dtype=dtype),
        rbf=torch.rand(h, k, generator=g, dtype=dtype),
        w1=spread * torch.randn(hidden, k, generator=g, dtype=dtype),
        b1=spread * torch.randn(hidden, generator=g, dtype=dtype),
        w2=torch.randn(f, hidden, generator=g, dtype=dtype) / hidden**0.5,
        b2=torch.randn(f, generator=g, dtype=dtype),
        scale=torch.rand(h, generator=g, dtype=dtype),
        pair_i=torch.randint(0, n_atoms, (n_pairs,), generator=g),
        pair_j=torch.randint(0, n_atoms, (n_pairs,), generator=g),
    )


def run(a):
    return fused_filter.fused_filter_cfconv(
        a["x"], a["rbf"], (a["w1"], a["b1"]), (a["w2"], a["b2"]), a["scale"], a["pair_i"], a["pair_j"]
    )


@pytest.mark.parametrize("mirrored", [True, False])
def test_forward_equals_the_pair_by_pair_reference(mirrored):
    a = inputs(n_atoms=7, f=5, k=4, hidden=6, h=40, mirrored=mirrored)
    torch.testing.assert_close(run(a), reference(**a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_gradients_equal_the_plain_ops(mirrored, threads):
    """x, W₁, b₁, W₂, b₂ gradients (the kernel's backward) against autograd of the same function as torch ops, on
    enough rows for several blocks per thread; the first layer spread wide so softplus sees both of its tails."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = inputs(n_atoms=60, f=16, k=7, hidden=12, h=1500, mirrored=mirrored, spread=12.0)
        names = ("x", "w1", "b1", "w2", "b2")
        leaves = {n: a[n].clone().requires_grad_() for n in names}
        mine = run({**a, **leaves})
        expected = fused_filter._plain(**{**a, **{n: t.clone().requires_grad_() for n, t in leaves.items()}})
        upstream = torch.randn_like(mine)
        torch.testing.assert_close(mine, expected, rtol=1e-12, atol=1e-12)
        ours = torch.autograd.grad(mine, [leaves[n] for n in names], upstream)
        plain_leaves = {n: a[n].clone().requires_grad_() for n in names}
        plain = fused_filter._plain(**{**a, **plain_leaves})
        theirs = torch.autograd.grad(plain, [plain_leaves[n] for n in names], upstream)
        for name, u, v in zip(names, ours, theirs, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-11, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")
    finally:
        torch.set_num_threads(n_threads)


def test_gradcheck_and_second_derivatives():
    """Finite differences for the kernel's backward; the create_graph backward (recomputed with torch ops) for the
    second derivatives."""
    a = inputs(n_atoms=6, f=3, k=4, hidden=5, h=25, mirrored=True, seed=3)
    names = ("x", "w1", "b1", "w2", "b2")

    def f(*leaves):
        return run({**a, **dict(zip(names, leaves, strict=True))})

    leaves = tuple(a[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradgradcheck(f, leaves)


@pytest.mark.parametrize("geometry", [False, True])
def test_float32_agrees_with_float64_to_round_off(geometry):
    """The float32 path (polynomial exp and log1p inside the kernel) against float64 at SchNet's sizes, with first-layer outputs from -60 to 60 and blocks of every length; the gradients of energy
    training (x and the weights) or, inside ``geometry_gradients_only``, of forces (x, the basis, the cutoff)."""
    a64 = inputs(n_atoms=300, f=128, k=50, hidden=128, h=3001, mirrored=True, spread=4.0)
    a32 = {k: v.float() if v.is_floating_point() else v for k, v in a64.items()}
    names = ("x", "rbf", "scale") if geometry else ("x", "w1", "b1", "w2", "b2")
    hidden = torch.nn.functional.linear(a64["rbf"], a64["w1"], a64["b1"])
    assert hidden.min() < -20 and hidden.max() > 20
    outs = []
    for a in (a64, a32):
        leaves = {n: a[n].clone().requires_grad_() for n in names}
        with fused_filter.geometry_gradients_only() if geometry else contextlib.nullcontext():
            out = run({**a, **leaves})
        grads = torch.autograd.grad(out, list(leaves.values()), torch.ones_like(out))
        outs.append((out, *grads))
    for u, v in zip(*outs, strict=True):
        error = (u.double() - v).abs().max() / v.abs().max()
        assert error < 5e-6, error


def test_empty_pair_list():
    a = inputs(n_atoms=3, f=4, k=2, hidden=3, h=0, mirrored=True)
    x = a["x"].requires_grad_()
    out = run(a)
    assert torch.equal(out, torch.zeros(3, 4, dtype=out.dtype))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def counted(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = fused_filter._FilterConv.forward
    monkeypatch.setattr(
        fused_filter._FilterConv, "forward", staticmethod(lambda *a: calls.append(1) or original(*a))
    )
    return calls


def test_schnet_energy_training_takes_the_kernel_and_equals_the_plain_path(monkeypatch):
    """Energy training of the whole model: energies and every parameter gradient equal the module path (float64);
    force training (forces with create_graph, the default in training mode) does not take it."""
    pot = schnet_potential()
    batch = batch_from_atoms([molecule("CH3CH2OH"), molecule("C6H6")], cutoff=4.0, dtype=torch.float64)
    calls = counted(monkeypatch)

    e_fused, g_fused = energy_training_step(pot, batch)
    assert len(calls) == len(pot.model.interactions)
    pot(batch, forces=True)
    assert len(calls) == len(pot.model.interactions), "taken for force training"
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    e_plain, g_plain = energy_training_step(pot, batch)
    assert len(calls) == len(pot.model.interactions)
    assert_same_energy_and_gradients((e_fused, g_fused), (e_plain, g_plain))


def test_hooked_filter_network_or_cfconv_is_not_fused(monkeypatch):
    """Explanation rules attach hooks to the layers: then each layer must run as a module."""
    pot = schnet_potential().eval()
    batch = batch_from_atoms([molecule("CH3CH2OH")], cutoff=4.0, dtype=torch.float64)
    calls = counted(monkeypatch)
    block = pot.model.interactions[0]
    for module in (block.filter_network.net[1], block.cfconv.product):
        seen = []
        handle = module.register_forward_hook(lambda m, args, out, seen=seen: seen.append(out))
        try:
            with torch.no_grad():
                pot(batch, forces=False)
        finally:
            handle.remove()
        assert len(seen) == 1
    assert len(calls) == 2 * (len(pot.model.interactions) - 1)  # only the unhooked blocks


def test_energy_only_inference_under_no_grad_keeps_no_filters(monkeypatch):
    pot = schnet_potential().eval()
    batch = batch_from_atoms([molecule("C6H6")], cutoff=4.0, dtype=torch.float64)
    kept = []
    module = fused_filter.EXTENSION.load()

    class Spy:
        def filter_conv(self, *a):
            out, filters = module.filter_conv(*a)
            kept.append(filters.numel())
            return out, filters

    monkeypatch.setitem(fused_filter.EXTENSION.state, "module", Spy())
    with torch.no_grad():
        energy = pot(batch, forces=False)["energy"]
    assert kept == [0] * len(pot.model.interactions)
    monkeypatch.setitem(fused_filter.EXTENSION.state, "module", module)
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    with torch.no_grad():
        torch.testing.assert_close(energy, pot(batch, forces=False)["energy"], rtol=1e-12, atol=1e-12)


def test_failed_build_leaves_the_cfconv_kernel(monkeypatch):
    """Without this kernel (a BLAS without sgemm_, a failed build) energy training takes atomnet.nn.fused's
    convolution kernel and computes the same."""
    pot = schnet_potential()
    batch = batch_from_atoms([molecule("CH3CH2OH")], cutoff=4.0, dtype=torch.float64)
    calls = counted(monkeypatch)
    convs = []
    original = fused._Conv.forward
    monkeypatch.setattr(fused._Conv, "forward", staticmethod(lambda *a: convs.append(1) or original(*a)))
    grads = []
    for module in (fused_filter.EXTENSION.load(), None):
        monkeypatch.setitem(fused_filter.EXTENSION.state, "module", module)
        pot.zero_grad()
        pot(batch, forces=False)["energy"].sum().backward()
        grads.append([p.grad.clone() for p in pot.parameters() if p.grad is not None])
    assert len(calls) == len(pot.model.interactions) and len(convs) >= len(pot.model.interactions)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_geometry_gradients_equal_the_plain_ops(mirrored, threads):
    """Inside ``geometry_gradients_only`` (forces without create_graph): ∂L/∂x, ∂L/∂e and ∂L/∂f_c from the kernel
    against autograd of the torch ops; the weights are constants there."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = inputs(n_atoms=60, f=16, k=7, hidden=12, h=1500, mirrored=mirrored, spread=12.0)
        names = ("x", "rbf", "scale")
        weights = {n: torch.nn.Parameter(a[n]) for n in ("w1", "b1", "w2", "b2")}
        leaves = {n: a[n].clone().requires_grad_() for n in names}
        with fused_filter.geometry_gradients_only():
            assert fused_filter.usable(leaves["x"], leaves["rbf"], leaves["scale"], *weights.values())
            mine = run({**a, **weights, **leaves})
        upstream = torch.randn_like(mine)
        ours = torch.autograd.grad(mine, list(leaves.values()), upstream)
        assert all(w.grad is None for w in weights.values())
        plain_leaves = {n: a[n].clone().requires_grad_() for n in names}
        plain = fused_filter._plain(**{**a, **plain_leaves})
        theirs = torch.autograd.grad(plain, list(plain_leaves.values()), upstream)
        torch.testing.assert_close(mine, plain, rtol=1e-12, atol=1e-12)
        for name, u, v in zip(names, ours, theirs, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-11, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")
    finally:
        torch.set_num_threads(n_threads)


def test_geometry_gradcheck():
    a = inputs(n_atoms=6, f=3, k=4, hidden=5, h=25, mirrored=True, seed=4)
    names = ("x", "rbf", "scale")

    def f(*leaves):
        with fused_filter.geometry_gradients_only():
            return run({**a, **dict(zip(names, leaves, strict=True))})

    assert torch.autograd.gradcheck(f, tuple(a[n].clone().requires_grad_() for n in names))


def test_switched_off_alone(monkeypatch):
    a = inputs(n_atoms=6, f=3, k=4, hidden=5, h=25, mirrored=True)
    args = (a["x"], a["rbf"], a["scale"], a["w1"], a["b1"], a["w2"], a["b2"])
    assert fused_filter.usable(*args)
    monkeypatch.setenv("ATOMNET_FUSED_FILTER", "0")
    assert not fused_filter.usable(*args) and fused.usable(a["x"], a["rbf"])


def test_outside_the_promise_a_basis_with_gradient_is_not_taken():
    a = inputs(n_atoms=6, f=3, k=4, hidden=5, h=25, mirrored=True)
    rbf = a["rbf"].requires_grad_()
    assert not fused_filter.usable(a["x"], rbf, a["scale"], a["w1"], a["b1"], a["w2"], a["b2"])
    with fused_filter.geometry_gradients_only():
        assert fused_filter.usable(a["x"], rbf, a["scale"], a["w1"], a["b1"], a["w2"], a["b2"])
    assert not fused_filter.usable(a["x"], rbf, a["scale"], a["w1"], a["b1"], a["w2"], a["b2"])


def test_schnet_forces_and_stress_take_the_kernel_and_equal_the_plain_path(monkeypatch):
    """Inference forces and stress (no create_graph) run through the kernel and equal the module path (float64);
    force training (create_graph) does not take it."""
    from ase.build import bulk

    pot = schnet_potential().eval()
    molecules = batch_from_atoms([molecule("CH3CH2OH"), molecule("C6H6")], cutoff=4.0, dtype=torch.float64)
    crystal = bulk("Si", "diamond", a=5.43, cubic=True)
    crystal.rattle(0.05, seed=1)
    periodic = batch_from_atoms([crystal], cutoff=4.0, dtype=torch.float64)
    calls = counted(monkeypatch)
    fused_out = [pot(molecules, forces=True), pot(periodic, forces=True, stress=True)]
    assert len(calls) == 2 * len(pot.model.interactions)
    pot.train()
    pot(molecules, forces=True, create_graph=True)
    assert len(calls) == 2 * len(pot.model.interactions), "taken for force training"
    pot.eval()
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    plain_out = [pot(molecules, forces=True), pot(periodic, forces=True, stress=True)]
    for got, want in zip(fused_out, plain_out, strict=True):
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12, msg=key)
    assert fused_out[1]["stress"].abs().max() > 0
