"""SchNet (Schütt et al., NeurIPS 2017; J. Chem. Phys. 148, 241722, 2018).

x_i⁰ = a_{Z_i}; T interaction blocks x ← x + Dense(ssp(Dense(cfconv(Dense(x))))); per-atom output network
Dense(F → F/2) → ssp → Dense(F/2 → 1); E = Σ_i E_i (or the mean, for intensive targets).
As in schnetpack, each interaction block has its own filter network; the radial basis and cutoff are shared.
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet.data.batch import AtomsBatch
from atomnet.models.base import AtomisticModel, constructor_arguments
from atomnet.nn.activations import ShiftedSoftplus
from atomnet.nn.basis import GaussianRBF, make_cutoff
from atomnet.nn.cfconv import CFConv, FilterNetwork, filter_and_convolve
from atomnet.nn.ops import ResidualAdd
from atomnet.nn.output import AtomEmbedding


class SchNetInteraction(nn.Module):
    """One interaction block: v = Dense(ssp(Dense(cfconv(Dense(x))))); x ← x + v. Shapes (n_atoms, F)."""

    def __init__(self, n_atom_basis: int, n_filters: int, n_rbf: int):
        super().__init__()
        self.in2f = nn.Linear(n_atom_basis, n_filters, bias=False)
        self.filter_network = FilterNetwork(n_rbf, n_filters)
        self.cfconv = CFConv()
        self.f2out = nn.Sequential(
            nn.Linear(n_filters, n_atom_basis), ShiftedSoftplus(), nn.Linear(n_atom_basis, n_atom_basis)
        )
        self.residual = ResidualAdd()

    def forward(
        self,
        x: torch.Tensor,
        rbf: torch.Tensor,
        fcut: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
    ) -> torch.Tensor:
        # filters: one per unordered pair of a mirrored batch; the cutoff is folded into the kernel where it may be
        v = self.f2out(
            filter_and_convolve(self.filter_network, self.cfconv, self.in2f(x), rbf, fcut, pair_i, pair_j)
        )
        return self.residual(x, v)


class SchNet(AtomisticModel):
    """SchNet energy model.

    Args:
        n_atom_basis: feature size F of the atom representations.
        n_filters: size of the continuous filters.
        n_interactions: number of interaction blocks T.
        n_rbf: Gaussians in the distance expansion (centres evenly spaced on [0, cutoff]).
        cutoff: Å.
        cutoff_fn: ``"cosine"`` (paper) or ``"polynomial"``.
        max_z: largest atomic number the embedding accepts.
        reduce: ``"sum"`` (energies) or ``"mean"`` (intensive targets).
        properties: extra targets ``[{"name": ..., "reduce": "sum" | "mean"}]``, each with its own output
            network on the final atom features (multitask; :class:`~atomnet.models.base.PropertyHead`).
        guard_denormals: clamp the Gaussian exponent (see :mod:`atomnet.nn.basis`).
    """

    name = "schnet"

    def __init__(
        self,
        n_atom_basis: int = 128,
        n_filters: int = 128,
        n_interactions: int = 3,
        n_rbf: int = 50,
        cutoff: float = 5.0,
        cutoff_fn: str = "cosine",
        max_z: int = 100,
        reduce: str = "sum",
        guard_denormals: bool = True,
        properties: list[dict] | None = None,
    ):
        hparams = constructor_arguments(locals())
        super().__init__(cutoff, max_z, reduce, hparams)
        self.embedding = AtomEmbedding(max_z, n_atom_basis)
        self.rbf = GaussianRBF(n_rbf, cutoff, guard_denormals=guard_denormals)
        self.cutoff_fn = make_cutoff(cutoff_fn, cutoff)
        self.interactions = nn.ModuleList(
            SchNetInteraction(n_atom_basis, n_filters, n_rbf) for _ in range(n_interactions)
        )

        def readout() -> nn.Sequential:  # the per-atom output network (also of every property head)
            h = n_atom_basis // 2
            return nn.Sequential(nn.Linear(n_atom_basis, h), ShiftedSoftplus(), nn.Linear(h, 1))

        self.output = readout()
        self.build_heads(properties, readout)

    def distance_filters(self) -> list[str]:
        """The filter networks W(r_ij), one per interaction block."""
        return [f"interactions.{k}.filter_network" for k in range(len(self.interactions))]

    def atomic_outputs(self, batch: AtomsBatch, vectors: torch.Tensor) -> tuple[torch.Tensor, dict]:
        rbf, fcut = self.radial(batch, vectors)
        x = self.embedding(batch.numbers)
        for interaction in self.interactions:
            x = interaction(x, rbf, fcut, batch.pair_i, batch.pair_j)
        return self.output(x).squeeze(-1), ({"representation": x} if len(self.heads) else {})
