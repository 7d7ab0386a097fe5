"""The Coulomb-matrix input layer of a fixed-size network (Montavon et al., NIPS 2012), in torch.

The Coulomb matrix of each molecule has the definition and units of :mod:`atomnet.baselines.coulomb`
(M_ii = 0.5 Z_i^2.4, M_ij = Z_i Z_j / |R_i − R_j|, distances in Bohr), zero-padded to ``max_atoms``. Rows and
columns are sorted by row norm (plus optional Gaussian noise per row: a random sorting), the upper triangle
(with diagonal) is flattened, standardised per entry and expanded; the result is the network's input vector.

For explanations this layer is the *input*: its output (the "pixels") is where relevance ends, and
:attr:`FeatureInput.owners` tells which atoms each entry belongs to, so entry relevance can be mapped to atoms.
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet.data.batch import AtomsBatch
from atomnet.errors import ModelInputError
from atomnet.units import BOHR


def padded(batch: AtomsBatch, values: torch.Tensor, size: int) -> torch.Tensor:
    """Per-atom ``values`` (n_atoms, ...) as (n_molecules, size, ...), zero-padded."""
    out = values.new_zeros((batch.n_molecules, size) + values.shape[1:])
    return out.index_put((batch.molecule, slots(batch)), values)


def slots(batch: AtomsBatch) -> torch.Tensor:
    """Position of every atom inside its molecule, (n_atoms,) int64."""
    start = torch.cumsum(batch.n_atoms, 0) - batch.n_atoms
    return torch.arange(batch.numbers.shape[0], device=batch.numbers.device) - start[batch.molecule]


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


def sort_order(m: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """(n_mol, size) slot order by descending row norm (+ ``noise`` per row); padding rows (norm 0) last."""
    key = torch.linalg.vector_norm(m, dim=2)
    pad = key == 0
    if noise is not None:
        key = key + noise
    key = key.masked_fill(pad, float("-inf"))
    return torch.argsort(key, dim=1, descending=True, stable=True)


def permute(m: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows and columns of every matrix of ``m`` (n_mol, size, size) in ``order`` (n_mol, size)."""
    m = torch.take_along_dim(m, order[:, :, None], dim=1)
    return torch.take_along_dim(m, order[:, None, :], dim=2)


def sort_rows(m: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Permute rows and columns by descending row norm (+ ``noise`` per row); padding rows (norm 0) last."""
    return permute(m, sort_order(m, noise))


class FeatureInput(nn.Module):
    """Base class of layers whose output, (n_molecules, n_entries · channels), is a fixed-size network's input.

    After each forward pass :attr:`owners` (n_molecules, n_entries, 2) int64 holds the batch indices of the
    (up to two) atoms each entry belongs to, −1 where none (the second for a diagonal entry, both for
    padding); consecutive ``channels`` outputs belong to one entry. :attr:`offset` (n_entries · channels,)
    is added to the output (zero unless a copy is shifted on purpose, e.g. for the input-invariance test).
    """

    channels: int = 1
    owners: torch.Tensor | None = None


class CoulombFeatures(FeatureInput):
    """Sorted, standardised and expanded upper triangles of the Coulomb matrices.

    Shapes: batch of n_molecules (each ≤ ``max_atoms`` atoms), positions (n_atoms, 3) Å, noise
    (n_molecules, max_atoms) or None → (n_molecules, d · channels) with d = max_atoms (max_atoms + 1) / 2.

    Expansion: ``"binarize"`` — each standardised entry x becomes tanh((x − θk)/θ), k = −K … K
    (``n_steps`` = 2K + 1 channels, step ``theta``; Montavon et al. 2012's smooth binarisation);
    ``"none"`` — x itself. ``input_mean`` / ``input_std`` (per entry) are set from training data.
    """

    def __init__(self, max_atoms: int, expansion: str = "binarize", n_steps: int = 9, theta: float = 1.0):
        super().__init__()
        if expansion not in ("binarize", "none"):
            raise ValueError(f"expansion must be 'binarize' or 'none', got {expansion!r}")
        self.max_atoms, self.expansion, self.theta = int(max_atoms), expansion, float(theta)
        d = self.max_atoms * (self.max_atoms + 1) // 2
        k = (int(n_steps) - 1) // 2
        self.register_buffer("steps", torch.arange(-k, k + 1, dtype=torch.get_default_dtype()))
        self.channels = len(self.steps) if expansion == "binarize" else 1
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_std", torch.ones(d))
        self.register_buffer("offset", torch.zeros(d * self.channels))
        self.register_buffer("triu", torch.triu_indices(self.max_atoms, self.max_atoms))

    @property
    def width(self) -> int:
        return int(self.input_mean.shape[0]) * self.channels

    def entries(self, batch: AtomsBatch, positions: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Standardised upper triangles of the (randomly) sorted matrices, (n_molecules, d); sets owners."""
        if int(batch.n_atoms.max()) > self.max_atoms:
            raise ModelInputError(
                f"a molecule has {int(batch.n_atoms.max())} atoms, more than max_atoms={self.max_atoms}"
            )
        z = padded(batch, batch.numbers, self.max_atoms)
        r = padded(batch, positions / BOHR, self.max_atoms)
        m = coulomb_matrix(z, r)
        order = sort_order(m, noise)
        m = permute(m, order)
        start = torch.cumsum(batch.n_atoms, 0) - batch.n_atoms
        atom = torch.where(order < batch.n_atoms[:, None], order + start[:, None], -1)  # sorted slot → atom
        i, j = self.triu
        first, second = atom[:, i], torch.where(i == j, -1, atom[:, j])
        first = torch.where((i != j) & (atom[:, j] < 0), -1, first)  # an entry with a padding slot is padding
        self.owners = torch.stack([first, second], dim=2)
        return (m[:, i, j] - self.input_mean) / self.input_std

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        if self.expansion == "none":
            return x
        return torch.tanh((x[:, :, None] - self.theta * self.steps) / self.theta).flatten(1)

    def forward(
        self, batch: AtomsBatch, positions: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.expand(self.entries(batch, positions, noise)) + self.offset
