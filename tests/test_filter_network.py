"""The filter network's short route (``FilterNetwork.raw``) and atomnet's softplus against torch's module path.

``raw`` folds ssp's shift into the second bias, runs softplus as :class:`atomnet.nn.activations._Softplus` and,
where the basis needs no gradient, carries the first bias as a column of ones; each is the same function, so
energies, forces and every gradient must equal the layer-by-layer ``nn.Sequential`` (float64).
"""

from __future__ import annotations

import pytest
import torch
from ase.build import molecule
from torch.nn import functional as F

from atomnet.data import batch_from_atoms
from atomnet.models import build_model
from atomnet.nn import activations
from atomnet.nn.activations import ShiftedSoftplus, _Softplus, softplus
from atomnet.nn.cfconv import FilterNetwork
from atomnet.potential import Potential


def test_softplus_gradients_and_second_derivatives():
    """gradcheck / gradgradcheck (finite differences), and the values, slopes and curvatures of F.softplus."""
    x = torch.linspace(-8, 8, 61, dtype=torch.float64).reshape(61, 1).repeat(1, 3).requires_grad_()
    assert torch.autograd.gradcheck(_Softplus.apply, (x,))
    assert torch.autograd.gradgradcheck(_Softplus.apply, (x,))
    g = torch.randn_like(x)
    ours, theirs = softplus(x), F.softplus(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    (d1,) = torch.autograd.grad(ours, x, g, create_graph=True)
    (t1,) = torch.autograd.grad(theirs, x, g, create_graph=True)
    torch.testing.assert_close(d1, t1, rtol=1e-14, atol=1e-14)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    (t2,) = torch.autograd.grad(t1.sum(), x)
    torch.testing.assert_close(d2, t2, rtol=1e-13, atol=1e-14)
    # no graph: torch's one-pass backward, the same bits
    (d0,) = torch.autograd.grad(softplus(x), x, g)
    (t0,) = torch.autograd.grad(F.softplus(x), x, g)
    torch.testing.assert_close(d0, t0, rtol=0, atol=0)


def test_softplus_under_transforms_takes_torchs_op():
    """vmap and jvp (used by the filter tables) see F.softplus, which has their rules."""
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(torch.vmap(softplus)(x), F.softplus(x))
    _, tangent = torch.func.jvp(softplus, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, torch.sigmoid(x))


@pytest.mark.parametrize("basis_grad", [False, True])
def test_raw_filters_equal_the_module_path(basis_grad):
    torch.manual_seed(0)
    net = FilterNetwork(20, 16).double()
    rbf = torch.rand(37, 20, dtype=torch.float64, requires_grad=basis_grad)
    ours, theirs = net.raw(rbf), net.net(rbf)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)
    g = torch.randn_like(ours)
    inputs = list(net.parameters()) + ([rbf] if basis_grad else [])
    for a, b in zip(
        torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def _schnet() -> Potential:
    torch.manual_seed(0)
    model = build_model(
        "schnet", n_atom_basis=16, n_filters=16, n_interactions=2, n_rbf=20, cutoff=4.0, max_z=20
    )
    return Potential(model).double().train()


def _steps(pot: Potential, batch) -> dict:
    """Energy training, inference forces and force training: values and every parameter gradient."""
    out = {}
    pot.zero_grad()
    energy = pot(batch, forces=False)["energy"]
    (energy**2).sum().backward()
    out["energy"] = energy.detach()
    out["energy_grads"] = [p.grad.clone() for p in pot.parameters() if p.grad is not None]
    out["forces"] = pot(batch, forces=True)["forces"].detach()
    pot.zero_grad()
    res = pot(batch, forces=True, create_graph=True)
    ((res["energy"] ** 2).sum() + (res["forces"] ** 2).sum()).backward()
    out["force_grads"] = [p.grad.clone() for p in pot.parameters() if p.grad is not None]
    return out


def test_schnet_with_the_short_route_equals_the_module_path(monkeypatch):
    monkeypatch.setenv("ATOMNET_FUSED_FILTER", "0")  # energy steps would take the fused filter network instead
    pot = _schnet()
    batch = batch_from_atoms([molecule("CH3CH2OH"), molecule("C6H6")], cutoff=4.0, dtype=torch.float64)
    calls = []
    original = FilterNetwork.raw
    monkeypatch.setattr(FilterNetwork, "raw", lambda self, rbf, *a: calls.append(1) or original(self, rbf, *a))
    ours = _steps(pot, batch)
    assert len(calls) == 3 * len(pot.model.interactions), "the short route was not taken in every step"
    monkeypatch.setattr(FilterNetwork, "raw", lambda self, rbf, *a: self.net(rbf))
    monkeypatch.setattr(ShiftedSoftplus, "forward", lambda self, x: F.softplus(x) - activations.LN2)
    theirs = _steps(pot, batch)
    for key in ("energy", "forces"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-12, atol=1e-12)
    for key in ("energy_grads", "force_grads"):
        assert len(ours[key]) == len(theirs[key]) > 0
        for a, b in zip(ours[key], theirs[key], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_hook_on_a_layer_keeps_the_module_path():
    """Explanation rules attach to the layers: a hook on ssp must see its input and output."""
    torch.manual_seed(0)
    net = FilterNetwork(20, 16).double()
    rbf = torch.rand(9, 20, dtype=torch.float64)
    seen = []
    handle = net.net[1].register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        out = net.raw(rbf)
    finally:
        handle.remove()
    assert len(seen) == 1
    pre, post = seen[0]
    torch.testing.assert_close(pre, net.net[0](rbf))
    torch.testing.assert_close(post, F.softplus(pre) - activations.LN2)
    torch.testing.assert_close(out, net.net(rbf), rtol=0, atol=0)
