"""Energies, per-atom energies, forces and stress: the one code path used by training, the ASE calculator
and the explainers.

Forces F_i = −∂E/∂R_i come from ``torch.autograd.grad`` (energy-conserving by construction); the graph is
kept (``create_graph=True``) only while training on forces. Stress is the strain derivative
σ = (1/V) ∂E/∂ε (ASE's convention, eV/Å³), for periodic structures.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from atomnet import keys
from atomnet.data.batch import AtomsBatch
from atomnet.errors import ModelInputError
from atomnet.models.base import AtomisticModel
from atomnet.nn import fused_filter
from atomnet.runtime import tune_allocator


def check_batch(batch: AtomsBatch, cutoff: float) -> None:
    """Clear errors for input a model cannot evaluate: empty batch, non-finite positions, short pair list."""
    if batch.numbers.numel() == 0 or batch.n_molecules == 0:
        raise ModelInputError("empty batch: no atoms to evaluate")
    if not bool(torch.isfinite(batch.positions).all()):
        bad = torch.nonzero(~torch.isfinite(batch.positions).all(dim=1)).flatten()
        mols = batch.molecule[bad].unique().tolist()
        raise ModelInputError(
            f"non-finite (NaN/inf) positions for atom(s) {bad.tolist()[:10]} in molecule(s) {mols}"
        )
    if batch.cutoff is not None and batch.cutoff < cutoff - 1e-6:
        raise ModelInputError(
            f"the batch's neighbour pairs were built with cutoff {batch.cutoff} Å, smaller than the model's "
            f"cutoff {cutoff} Å; rebuild the batch with cutoff >= {cutoff}"
        )


def energy_and_forces(
    model: AtomisticModel,
    batch: AtomsBatch,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Evaluate ``model`` on ``batch``.

    Returns:
        ``energy`` (n_molecules,) eV, ``atomic_energies`` (n_atoms,) eV, and if requested ``forces``
        (n_atoms, 3) eV/Å and ``stress`` (n_molecules, 3, 3) eV/Å³ (zero for non-periodic molecules).
        When forces/stress are computed without ``create_graph`` the outputs are detached.
    """
    check_batch(batch, model.cutoff)
    if stress and not batch.periodic:
        raise ModelInputError("stress requested for a batch without periodic cell")
    positions = batch.positions
    cell = batch.cell
    inputs = []
    if forces or stress:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    if stress:
        strain = torch.zeros(batch.n_molecules, 3, 3, dtype=positions.dtype, device=positions.device)
        strain.requires_grad_(True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        positions = positions + torch.einsum("ai,aij->aj", positions, sym[batch.molecule])
        cell = cell + torch.einsum("mki,mij->mkj", cell, sym)
        inputs.append(strain)
    with torch.enable_grad() if inputs else contextlib.nullcontext():
        # a graph differentiated once, for the geometry only: the fused filter network may take it (weights constant)
        promise = fused_filter.geometry_gradients_only() if inputs and not create_graph else contextlib.nullcontext()
        with promise:
            out = model(batch, positions=positions, cell=cell)
        if inputs:
            grads = torch.autograd.grad(
                out[keys.ENERGY].sum(), inputs, create_graph=create_graph, allow_unused=True
            )
    if inputs and not create_graph:  # graph consumed: hand back plain tensors
        out = {k: v.detach() for k, v in out.items()}
    if forces:
        g = grads[0]
        out[keys.FORCES] = -g if g is not None else torch.zeros_like(batch.positions)
    if stress:
        g = grads[-1]
        volume = torch.linalg.det(batch.cell).abs().clamp(min=1e-12)
        periodic = (
            batch.pbc.any(dim=1) if batch.pbc is not None else torch.ones_like(volume, dtype=torch.bool)
        )
        g = torch.zeros_like(strain) if g is None else g
        out[keys.STRESS] = torch.where(
            periodic[:, None, None], g / volume[:, None, None], torch.zeros_like(g)
        )
    return out


def hessian(model: AtomisticModel, batch: AtomsBatch, rows_per_pass: int = 64) -> torch.Tensor:
    """Exact Hessian H = ∂²E/∂R∂R of the total energy of ``batch`` by double backpropagation.

    Forces are computed once with their graph; each backward pass then differentiates a block of
    ``rows_per_pass`` force components at once (``is_grads_batched``: one vectorised pass per block, a loop
    over rows where an op has no batching rule). Returns (3 n_atoms, 3 n_atoms) in the model's energy unit
    per Å², rows and columns ordered atom by atom (x, y, z), symmetric up to round-off. Memory grows like
    rows_per_pass × the graph.
    """
    check_batch(batch, model.cutoff)
    positions = batch.positions.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = model(batch, positions=positions)[keys.ENERGY].sum()
        (grad,) = torch.autograd.grad(energy, [positions], create_graph=True)
        grad = grad.reshape(-1)
        n = grad.numel()
        rows = []
        for start in range(0, n, max(1, int(rows_per_pass))):
            k = min(rows_per_pass, n - start)
            seeds = torch.zeros(k, n, dtype=grad.dtype, device=grad.device)
            seeds[torch.arange(k), start + torch.arange(k)] = 1.0
            try:
                (block,) = torch.autograd.grad(
                    grad, [positions], grad_outputs=seeds, is_grads_batched=True, retain_graph=True
                )
            except RuntimeError:  # an op without a vmap rule: one row per pass
                block = torch.stack(
                    [torch.autograd.grad(grad, [positions], s, retain_graph=True)[0] for s in seeds]
                )
            rows.append(block.reshape(k, n))
    return torch.cat(rows).detach()


class Potential(nn.Module):
    """A model plus the forces/stress machinery: ``pot(batch, forces=True, stress=False)``.

    float32 by default; ``pot.double()`` converts the model and batches are cast to the model's dtype.
    ``create_graph`` defaults to ``self.training`` (keep the graph only when training on forces).
    """

    def __init__(self, model: AtomisticModel):
        super().__init__()
        self.model = model
        tune_allocator()  # once per process: keep freed tensors' pages (atomnet/runtime.py)

    @property
    def cutoff(self) -> float:
        return self.model.cutoff

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(
        self, batch: AtomsBatch, forces: bool = True, stress: bool = False, create_graph: bool | None = None
    ) -> dict[str, torch.Tensor]:
        if batch.positions.dtype != self.dtype or batch.positions.device != self.device:
            batch = batch.to(self.device, self.dtype)
        if create_graph is None:
            create_graph = self.training and forces
        return energy_and_forces(self.model, batch, forces=forces, stress=stress, create_graph=create_graph)
