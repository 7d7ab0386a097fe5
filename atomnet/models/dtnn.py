"""Deep Tensor Neural Network (Schütt et al., Nat. Commun. 8, 13890, 2017).

c_i⁰ = c_{Z_i}; distances expanded in Gaussians d̂_ij,k = exp(−(d_ij − μ_k)² / (2σ²)) (μ_k every 0.2 Å up to
20 Å, σ = 0.2 Å); T passes of

    v_ij = tanh(W_fc ((W_cf c_j + b_f1) ∘ (W_df d̂_ij + b_f2))) · f_c(d_ij),   c_i ← c_i + Σ_{j≠i} v_ij

(weights shared across passes by default, as in the paper), then a two-layer tanh network per atom and
E = Σ_i E_i.

Difference from the paper: v_ij is multiplied by a smooth cutoff f_c(d_ij). Without it, v_ij tends to the
non-zero constant tanh(W_fc((W_cf c_j + b_f1) ∘ b_f2)) as d̂_ij → 0, so energies would jump when an atom
crosses the cutoff. With the default 20 Å cutoff every pair inside a small molecule is kept, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet.data.batch import AtomsBatch
from atomnet.models.base import AtomisticModel, constructor_arguments
from atomnet.nn.activations import Tanh
from atomnet.nn.basis import GaussianRBF, make_cutoff
from atomnet.nn.ops import FilterProduct, GatherNeighbors, NeighborSum, ResidualAdd
from atomnet.nn.output import AtomEmbedding


class DTNNInteraction(nn.Module):
    """One DTNN pass: c_i ← c_i + Σ_j tanh(W_fc((W_cf c_j + b) ∘ (W_df d̂_ij + b))) f_c(d_ij). Shapes (n_atoms, F)."""

    def __init__(self, n_atom_basis: int, n_factors: int, n_rbf: int):
        super().__init__()
        self.cf = nn.Linear(n_atom_basis, n_factors)
        self.df = nn.Linear(n_rbf, n_factors)
        self.fc = nn.Linear(n_factors, n_atom_basis, bias=False)
        self.gather = GatherNeighbors()
        self.product = FilterProduct()
        self.activation = Tanh()
        self.envelope = FilterProduct()
        self.aggregate = NeighborSum()
        self.residual = ResidualAdd()

    def forward(
        self,
        x: torch.Tensor,
        rbf: torch.Tensor,
        fcut: torch.Tensor,
        pair_i: torch.Tensor,
        pair_j: torch.Tensor,
    ) -> torch.Tensor:
        # one filter per unordered pair of a mirrored batch: FilterProduct applies it to both directions
        factors = self.product(self.gather(self.cf(x), pair_j), self.df(rbf))
        v = self.envelope(self.activation(self.fc(factors)), fcut[:, None])
        return self.residual(x, self.aggregate(v, pair_i, x.shape[0]))


class DTNN(AtomisticModel):
    """DTNN energy model.

    Args:
        n_atom_basis: size of the atom coefficient vectors c_i.
        n_factors: size of the factorised interaction (W_cf, W_df outputs).
        n_interactions: number of passes T (paper: 2–3).
        shared_interactions: share the interaction weights across passes (paper: yes).
        rbf_spacing: Å between Gaussian centres (paper 0.2); centres from 0 to ``cutoff``.
        rbf_width: σ in Å (paper 0.2).
        cutoff: Å (paper: no cutoff; 20 Å keeps every pair of a small molecule).
        n_hidden: hidden units of the per-atom tanh readout.
        max_z, reduce, cutoff_fn, guard_denormals, properties: as in :class:`~atomnet.models.schnet.SchNet`.

    Set ``model.return_hidden = True`` to also get ``"hidden_states"`` (T+1, n_atoms, F): c_i after each pass,
    used for chemical-potential probe maps.
    """

    name = "dtnn"

    def __init__(
        self,
        n_atom_basis: int = 64,
        n_factors: int = 64,
        n_interactions: int = 3,
        shared_interactions: bool = True,
        rbf_spacing: float = 0.2,
        rbf_width: float = 0.2,
        cutoff: float = 20.0,
        n_hidden: int = 32,
        cutoff_fn: str = "cosine",
        max_z: int = 100,
        reduce: str = "sum",
        guard_denormals: bool = True,
        properties: list[dict] | None = None,
    ):
        hparams = constructor_arguments(locals())
        super().__init__(cutoff, max_z, reduce, hparams)
        n_rbf = int(round(cutoff / rbf_spacing)) + 1
        self.embedding = AtomEmbedding(max_z, n_atom_basis)
        self.rbf = GaussianRBF(
            n_rbf, cutoff, gamma=1.0 / (2.0 * rbf_width**2), guard_denormals=guard_denormals
        )
        self.cutoff_fn = make_cutoff(cutoff_fn, cutoff)
        n_blocks = 1 if shared_interactions else n_interactions
        self.interactions = nn.ModuleList(
            DTNNInteraction(n_atom_basis, n_factors, n_rbf) for _ in range(n_blocks)
        )
        self.n_interactions = n_interactions

        def readout() -> nn.Sequential:  # the per-atom tanh readout (also of every property head)
            return nn.Sequential(nn.Linear(n_atom_basis, n_hidden), Tanh(), nn.Linear(n_hidden, 1))

        self.output = readout()
        self.build_heads(properties, readout)
        self.return_hidden = False

    def distance_filters(self) -> list[str]:
        """The distance factors W_df d̂_ij + b_f2 (one Linear layer of the radial basis per block)."""
        return [f"interactions.{k}.df" for k in range(len(self.interactions))]

    def atomic_outputs(self, batch: AtomsBatch, vectors: torch.Tensor) -> tuple[torch.Tensor, dict]:
        rbf, fcut = self.radial(batch, vectors)
        x = self.embedding(batch.numbers)
        hidden = [x]
        for t in range(self.n_interactions):
            block = self.interactions[t % len(self.interactions)]
            x = block(x, rbf, fcut, batch.pair_i, batch.pair_j)
            hidden.append(x)
        extra = {"hidden_states": torch.stack(hidden)} if self.return_hidden else {}
        if len(self.heads):
            extra["representation"] = x
        return self.output(x).squeeze(-1), extra
