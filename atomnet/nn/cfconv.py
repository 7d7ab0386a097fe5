"""Continuous-filter convolution (Schütt et al., NeurIPS 2017).

m_i = Σ_j x_j ∘ W(r_ij), with the filter W(r_ij) = Dense(ssp(Dense(e(r_ij)))) · f_c(r_ij) generated from the
radial basis e(r_ij) and the cutoff f_c.
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet.nn.activations import ShiftedSoftplus
from atomnet.nn.ops import FilterProduct, GatherNeighbors, NeighborSum


class FilterNetwork(nn.Module):
    """W(r_ij) = Dense(ssp(Dense(e_ij))) · f_c(r_ij). Shapes: (n_pairs, n_rbf), (n_pairs,) → (n_pairs, F)."""

    def __init__(self, n_rbf: int, n_filters: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_rbf, n_filters), ShiftedSoftplus(), nn.Linear(n_filters, n_filters)
        )

    def forward(self, rbf: torch.Tensor, fcut: torch.Tensor) -> torch.Tensor:
        return self.net(rbf) * fcut[:, None]


class CFConv(nn.Module):
    """Continuous-filter convolution: gather x_j, multiply by the filter, sum over neighbours j of i.

    Shapes: x (n_atoms, F), filters (n_pairs, F), pair_i/pair_j (n_pairs,) → (n_atoms, F).
    """

    def __init__(self):
        super().__init__()
        self.gather = GatherNeighbors()
        self.product = FilterProduct()
        self.aggregate = NeighborSum()

    def forward(
        self, x: torch.Tensor, filters: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor
    ) -> torch.Tensor:
        messages = self.product(self.gather(x, pair_j), filters)
        return self.aggregate(messages, pair_i, x.shape[0])
