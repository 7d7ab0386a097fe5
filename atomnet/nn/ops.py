"""Explicit modules for every operation relevance must flow through (STYLE principle 3).

Residual addition, the filter × feature product, gathering neighbour features, the neighbour sum and the
atom → molecule sum are modules, not inline ``+``/``index_add_``, so LRP rules can attach from outside by
module type (as in zennit) and a model can be checked for unsupported operations.
"""

from __future__ import annotations

import torch
from torch import nn


class GatherNeighbors(nn.Module):
    """x_j for every pair: (n_atoms, F), (n_pairs,) → (n_pairs, F)."""

    def forward(self, x: torch.Tensor, pair_j: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, pair_j)


class FilterProduct(nn.Module):
    """Element-wise product of neighbour features and a distance filter: (n_pairs, F) ∘ (n_pairs, F).

    A mirrored batch (:class:`~atomnet.data.batch.AtomsBatch`, pairs[h:] = reversed pairs[:h]) may pass one
    filter per unordered pair, (n_pairs / 2, F) or (n_pairs / 2, 1): it multiplies both directions, without
    materialising a copy. For LRP the filter is usually treated as a constant weight, so relevance flows to
    the features.
    """

    def forward(self, features: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        n = filters.shape[0]
        if features.shape[0] == 2 * n and n > 0:
            return (features.view(2, n, -1) * filters).view(2 * n, -1)
        return features * filters


class NeighborSum(nn.Module):
    """Σ_j m_ij onto the centre atom i: (n_pairs, F), (n_pairs,), n_atoms → (n_atoms, F)."""

    def forward(self, messages: torch.Tensor, pair_i: torch.Tensor, n_atoms: int) -> torch.Tensor:
        out = messages.new_zeros((n_atoms, messages.shape[1]))
        return out.index_add(0, pair_i, messages)


class ResidualAdd(nn.Module):
    """x + v (the residual update of an interaction block)."""

    def forward(self, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return x + update


class AtomToMolecule(nn.Module):
    """Sum (extensive targets) or mean (intensive targets) of per-atom values over each molecule.

    Shapes: (n_atoms,), (n_atoms,) molecule index, n_molecules → (n_molecules,).
    """

    def __init__(self, reduce: str = "sum"):
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        self.reduce = reduce

    def forward(self, values: torch.Tensor, molecule: torch.Tensor, n_molecules: int) -> torch.Tensor:
        out = values.new_zeros(n_molecules).index_add(0, molecule, values)
        if self.reduce == "mean":
            counts = torch.bincount(molecule, minlength=n_molecules).clamp(min=1).to(values.dtype)
            out = out / counts
        return out


class MoleculeToAtoms(nn.Module):
    """Every atom receives its molecule's value: (n_molecules, ...), (n_atoms,) molecule index → (n_atoms, ...).

    For LRP this is a copy, like :class:`GatherNeighbors`: a molecule's relevance is the sum over its atoms."""

    def forward(self, values: torch.Tensor, molecule: torch.Tensor) -> torch.Tensor:
        return values.index_select(0, molecule)
