"""``contributions``: the model's own atom-wise energies (SchNet, DTNN: E = Σ_i E_i).

E_i = relevance_i + reference_i with reference_i = mean + atomref[Z_i] (the constants of the output
standardisation) and relevance_i = y_i · std (the learned part). Conserving by construction:
Σ relevance + Σ reference = E, and ``unexplained`` = Σ_i reference_i. For intensive targets
(E = mean_i E_i) atom i carries E_i / N, split the same way.
"""

from __future__ import annotations

import torch

from atomnet import keys
from atomnet.data.batch import AtomsBatch
from atomnet.explain.methods import Attribution, Method, register


def atom_shares(model, batch: AtomsBatch) -> torch.Tensor:
    """What one atom's value counts in its molecule's energy: 1, or 1/N for a mean readout. (n_atoms,)"""
    ones = torch.ones_like(batch.positions[:, 0])
    if model.aggregate.reduce == "mean":
        return ones / batch.n_atoms[batch.molecule].to(ones.dtype)
    return ones


def reference_energies(model, batch: AtomsBatch) -> torch.Tensor:
    """(mean + atomref[Z_i]) × share of the model's output standardisation, (n_atoms,) eV."""
    std = model.standardize
    return (std.mean + std.atomref[batch.numbers]).to(batch.positions.dtype) * atom_shares(model, batch)


def per_molecule(values: torch.Tensor, batch: AtomsBatch) -> torch.Tensor:
    """Σ over the atoms of each molecule: (n_atoms,) → (n_molecules,)."""
    return values.new_zeros(batch.n_molecules).index_add(0, batch.molecule, values)


@register
class Contributions(Method):
    name = "contributions"
    defaults: dict = {}

    @torch.no_grad()
    def attribute(self, model, batch, params):
        out = model(batch)
        reference = reference_energies(model, batch)
        atomic = out[keys.ATOMIC_ENERGIES] * atom_shares(model, batch)
        return Attribution(out[keys.ENERGY], atomic - reference, per_molecule(reference, batch))
