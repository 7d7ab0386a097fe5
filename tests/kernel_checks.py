"""Shared pieces of the fused-kernel tests (test_fused_cfconv.py, test_fused_filter.py)."""

from __future__ import annotations

import torch

from atomnet.models import build_model
from atomnet.potential import Potential


def schnet_potential() -> Potential:
    """A small float64 SchNet (16 features, 2 interactions, 4 Å) in training mode."""
    torch.manual_seed(0)
    model = build_model(
        "schnet", n_atom_basis=16, n_filters=16, n_interactions=2, n_rbf=20, cutoff=4.0, max_z=20
    )
    return Potential(model).double().train()


def assert_same_energy_and_gradients(fused: tuple, plain: tuple) -> None:
    """(energies, parameter gradients) of the kernel path against the plain path, float64 round-off."""
    (e_fused, g_fused), (e_plain, g_plain) = fused, plain
    torch.testing.assert_close(e_fused, e_plain, rtol=1e-12, atol=1e-12)
    assert len(g_fused) == len(g_plain) > 0
    for a, b in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def energy_training_step(pot: Potential, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Energies and the parameter gradients of an energy-only loss."""
    pot.zero_grad()
    energy = pot(batch, forces=False)["energy"]
    (energy**2).sum().backward()
    return energy.detach(), [p.grad.clone() for p in pot.parameters() if p.grad is not None]
