"""A neural network on Coulomb matrices (Montavon et al., NIPS 2012, "Learning invariant representations of
molecules for atomization energy prediction").

The Coulomb matrix of each molecule is built from the batch in torch, with the definition and units of
:mod:`atomnet.baselines.coulomb` (M_ii = 0.5 Z_i^2.4, M_ij = Z_i Z_j / |R_i − R_j| with distances in Bohr),
zero-padded to ``max_atoms``. Rows and columns are sorted by row norm at evaluation and **randomly sorted**
during training (row norms + N(0, σ²) noise, a fresh draw per forward pass, as in the paper); the upper
triangle (with diagonal) is expanded and fed to a multilayer perceptron that predicts the molecular energy.

Input expansion (``expansion``): ``"binarize"`` — the paper's smooth binarisation, each entry x becomes
tanh((x − θk)/θ) for k = −K … K (``n_steps`` = 2K+1 values per entry, step ``theta``); ``"none"`` — the raw
entries. In both cases a per-entry affine standardisation (buffers ``input_mean`` / ``input_std``, set from
training data with :meth:`CMNet.set_input_statistics`, identity by default) comes first.

Energies are differentiable in the positions, so forces come from the same
:func:`~atomnet.potential.energy_and_forces` path (within one sorting order: the sort is piecewise constant,
and the energy jumps where two row norms cross — such ties are rare in real geometries). Permutation
invariance holds exactly where row norms are distinct (sorting removes the atom order).

Per-atom energies: the network predicts one value y per molecule, given to each of its N atoms as the raw
per-atom output (y_i = y), so the standardisation E = Σ_i (y_i·std + mean + atomref[Z_i]) = N·std·y + Σ_i (mean +
atomref[Z_i]) works as for SchNet and y stays of order one (a molecular residual is about N times the per-atom
std). The resulting per-atom energies are equal shares, not an atom-wise decomposition: explanations map the
relevance of the Coulomb-matrix entries to atoms instead (:mod:`atomnet.explain`).
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet.data.batch import AtomsBatch
from atomnet.models.base import AtomisticModel, constructor_arguments
from atomnet.nn.activations import ShiftedSoftplus, Tanh
from atomnet.units import BOHR

ACTIVATIONS = {"tanh": Tanh, "ssp": ShiftedSoftplus}


def padded(batch: AtomsBatch, values: torch.Tensor, size: int) -> torch.Tensor:
    """Per-atom ``values`` (n_atoms, ...) as (n_molecules, size, ...), zero-padded."""
    start = torch.cumsum(batch.n_atoms, 0) - batch.n_atoms
    slot = torch.arange(batch.numbers.shape[0], device=values.device) - start[batch.molecule]
    out = values.new_zeros((batch.n_molecules, size) + values.shape[1:])
    return out.index_put((batch.molecule, slot), values)


def coulomb_matrix(numbers: torch.Tensor, positions_bohr: torch.Tensor) -> torch.Tensor:
    """(n_mol, size, size) Coulomb matrices from padded Z (n_mol, size) and positions (n_mol, size, 3) Bohr;
    padding rows and columns are zero. Differentiable in the positions (no square root at zero distance)."""
    z = numbers.to(positions_bohr.dtype)
    diff = positions_bohr[:, :, None, :] - positions_bohr[:, None, :, :]
    size = numbers.shape[1]
    eye = torch.eye(size, dtype=torch.bool, device=numbers.device)
    real = (numbers[:, :, None] > 0) & (numbers[:, None, :] > 0) & ~eye
    d2 = torch.where(real, (diff * diff).sum(-1), torch.ones_like(diff[..., 0]))
    off = torch.where(real, z[:, :, None] * z[:, None, :] / d2.sqrt(), torch.zeros_like(d2))
    return off + torch.diag_embed(0.5 * z**2.4)


def sort_rows(m: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Permute rows and columns by descending row norm (+ ``noise`` per row); padding rows (norm 0) last."""
    key = torch.linalg.vector_norm(m, dim=2)
    pad = key == 0
    if noise is not None:
        key = key + noise
    key = key.masked_fill(pad, float("-inf"))
    order = torch.argsort(key, dim=1, descending=True, stable=True)
    m = torch.take_along_dim(m, order[:, :, None], dim=1)
    return torch.take_along_dim(m, order[:, None, :], dim=2)


class CMNet(AtomisticModel):
    """MLP on (randomly) sorted Coulomb matrices.

    Args:
        max_atoms: padding size (QM7: 23; QM9: 29).
        hidden: widths of the hidden layers (paper: 400, 100).
        activation: ``"tanh"`` (paper: sigmoid-like) or ``"ssp"``.
        expansion: ``"binarize"`` or ``"none"``; n_steps, theta: binarisation (values per entry, step).
        sigma: noise of the random sorting during training (paper: 1).
        test_sortings: at evaluation, average over this many random sortings (1: the sorted matrix only).
        max_z, reduce: as for SchNet.
    """

    name = "cmnet"

    def __init__(
        self,
        max_atoms: int = 23,
        hidden: tuple[int, ...] | list[int] = (400, 100),
        activation: str = "tanh",
        expansion: str = "binarize",
        n_steps: int = 9,
        theta: float = 1.0,
        sigma: float = 1.0,
        test_sortings: int = 1,
        max_z: int = 100,
        reduce: str = "sum",
    ):
        hparams = constructor_arguments(locals())
        hparams["hidden"] = list(hidden)
        super().__init__(0.0, max_z, reduce, hparams)  # no neighbour pairs needed
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if expansion not in ("binarize", "none"):
            raise ValueError(f"expansion must be 'binarize' or 'none', got {expansion!r}")
        self.max_atoms, self.sigma, self.test_sortings = int(max_atoms), float(sigma), int(test_sortings)
        self.expansion, self.theta = expansion, float(theta)
        d = self.max_atoms * (self.max_atoms + 1) // 2
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_std", torch.ones(d))
        k = (int(n_steps) - 1) // 2
        self.register_buffer("steps", torch.arange(-k, k + 1, dtype=torch.get_default_dtype()))
        width = d * (len(self.steps) if expansion == "binarize" else 1)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.output = nn.Sequential(*layers)
        self.register_buffer("triu", torch.triu_indices(self.max_atoms, self.max_atoms))

    def features(
        self, batch: AtomsBatch, positions: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Standardised upper triangles of the (randomly) sorted matrices, (n_molecules, d)."""
        if int(batch.n_atoms.max()) > self.max_atoms:
            from atomnet.errors import ModelInputError

            raise ModelInputError(
                f"a molecule has {int(batch.n_atoms.max())} atoms, more than max_atoms={self.max_atoms}"
            )
        z = padded(batch, batch.numbers, self.max_atoms)
        r = padded(batch, positions / BOHR, self.max_atoms)
        m = sort_rows(coulomb_matrix(z, r), noise)
        flat = m[:, self.triu[0], self.triu[1]]
        return (flat - self.input_mean) / self.input_std

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        if self.expansion == "none":
            return x
        return torch.tanh((x[:, :, None] - self.theta * self.steps) / self.theta).flatten(1)

    def molecular_output(self, batch: AtomsBatch, positions: torch.Tensor) -> torch.Tensor:
        """Network output per molecule (n_molecules,), averaged over random sortings where asked."""
        draws = 1 if self.training else max(1, self.test_sortings)
        outs = []
        for _ in range(draws):
            noise = None
            if self.training or draws > 1:
                noise = self.sigma * torch.randn(
                    batch.n_molecules, self.max_atoms, dtype=positions.dtype, device=positions.device
                )
            outs.append(self.output(self.expand(self.features(batch, positions, noise))).squeeze(-1))
        return torch.stack(outs).mean(0)

    def forward(
        self, batch: AtomsBatch, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None
    ):
        from atomnet import keys

        pos = batch.positions if positions is None else positions
        y = self.molecular_output(batch, pos)
        atomic = self.standardize(y[batch.molecule], batch.numbers)
        energy = self.aggregate(atomic, batch.molecule, batch.n_molecules)
        return {keys.ATOMIC_ENERGIES: atomic, keys.ENERGY: energy}

    @torch.no_grad()
    def set_input_statistics(self, batch: AtomsBatch) -> None:
        """Per-entry mean and std of the sorted upper triangles over ``batch`` (training molecules)."""
        self.input_mean.zero_()
        self.input_std.fill_(1.0)
        x = self.features(batch, batch.positions, None)
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(x.std(0).clamp(min=1e-3))
