"""The typed batch every model, trainer, calculator and explainer consumes.

An :class:`AtomsBatch` holds several molecules (or periodic structures) concatenated atom-wise, their
directed neighbour pairs within ``cutoff`` and optional targets. Field names and units: :mod:`atomnet.keys`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from atomnet.data.neighbors import ALL_PAIRS_MAX_ATOMS, linear_pairs, molecular_pairs


@dataclass
class AtomsBatch:
    """A batch of molecules.

    Attributes:
        numbers: (n_atoms,) int64 atomic numbers.
        positions: (n_atoms, 3) Å.
        molecule: (n_atoms,) int64 molecule index of each atom (0 .. n_molecules-1, non-decreasing).
        n_atoms: (n_molecules,) int64 atoms per molecule.
        pair_i, pair_j: (n_pairs,) int64 directed neighbour pairs (centre i, neighbour j).
        cutoff: Å, the cutoff the pairs were built with (``None``: all pairs inside each molecule).
        cell: (n_molecules, 3, 3) Å or ``None`` for a batch without periodic structures.
        pbc: (n_molecules, 3) bool or ``None``.
        cell_shifts: (n_pairs, 3) lattice shifts (same dtype as positions) or ``None``.
        targets: reference values by key, e.g. ``energy`` (n_molecules,) eV, ``forces`` (n_atoms, 3) eV/Å.
        mirrored: the second half of the pairs reverses the first half in the same order
            (pair h + k is (j, i, −S) for pair k = (i, j, S)), so models compute distance filters once per
            unordered pair. Any boolean mask on a distance keeps this layout (|r_ij| = |r_ji| exactly).
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    molecule: torch.Tensor
    n_atoms: torch.Tensor
    pair_i: torch.Tensor
    pair_j: torch.Tensor
    cutoff: float | None = None
    cell: torch.Tensor | None = None
    pbc: torch.Tensor | None = None
    cell_shifts: torch.Tensor | None = None
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    mirrored: bool = False

    @property
    def n_molecules(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def periodic(self) -> bool:
        return self.cell_shifts is not None

    def to(self, device=None, dtype: torch.dtype | None = None) -> AtomsBatch:
        """Move to ``device``; floating-point tensors are cast to ``dtype`` if given."""

        def move(t):
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return replace(
            self,
            numbers=move(self.numbers),
            positions=move(self.positions),
            molecule=move(self.molecule),
            n_atoms=move(self.n_atoms),
            pair_i=move(self.pair_i),
            pair_j=move(self.pair_j),
            cell=move(self.cell),
            pbc=move(self.pbc),
            cell_shifts=move(self.cell_shifts),
            targets={k: move(v) for k, v in self.targets.items()},
        )

    def pair_vectors(
        self, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None, unique: bool = False
    ) -> torch.Tensor:
        """Vectors r_ij = R_j - R_i (+ S @ cell) of every pair, (n_pairs, 3) Å.

        ``positions``/``cell`` override the stored ones (used for strain derivatives). ``unique=True`` on a
        mirrored batch returns only the first half (n_pairs / 2, 3): one vector per unordered pair, the other
        direction being its negative.
        """
        pair_i, pair_j, shifts = self.pair_i, self.pair_j, self.cell_shifts
        if unique and self.mirrored:
            h = pair_i.shape[0] // 2
            pair_i, pair_j, shifts = pair_i[:h], pair_j[:h], None if shifts is None else shifts[:h]
        pos = self.positions if positions is None else positions
        vec = pos[pair_j] - pos[pair_i]
        if shifts is not None:
            c = self.cell if cell is None else cell
            cell_of_pair = c[self.molecule[pair_i]]  # (n, 3, 3)
            vec = vec + torch.einsum("pk,pkl->pl", shifts, cell_of_pair)
        return vec


def mirror_pairs(
    pair_i: torch.Tensor, pair_j: torch.Tensor, shifts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Reorder a full (symmetric) directed pair list as [half; reversed half] (see ``AtomsBatch.mirrored``).

    The half keeps i < j, or i == j with a lexicographically positive shift (periodic self-images).
    Returns the list unchanged with ``mirrored=False`` if it is not symmetric.
    """
    half = pair_i < pair_j
    if shifts is not None:
        s = torch.round(shifts).to(torch.long)
        key = (s[:, 0] * 4096 + s[:, 1]) * 4096 + s[:, 2]
        half = half | ((pair_i == pair_j) & (key > 0))
    n_half = int(half.sum())
    if 2 * n_half != pair_i.numel():
        return pair_i, pair_j, shifts, False
    ih, jh = pair_i[half], pair_j[half]
    new_shifts = None if shifts is None else torch.cat([shifts[half], -shifts[half]])
    return torch.cat([ih, jh]), torch.cat([jh, ih]), new_shifts, True


def make_batch(
    numbers: torch.Tensor,
    positions: torch.Tensor,
    n_atoms: torch.Tensor,
    cutoff: float | None,
    cells: np.ndarray | None = None,
    pbcs: np.ndarray | None = None,
    targets: dict[str, torch.Tensor] | None = None,
) -> AtomsBatch:
    """Build an :class:`AtomsBatch` (with neighbour pairs) from concatenated atoms.

    Args:
        numbers: (n_atoms,) int; positions: (n_atoms, 3) Å; n_atoms: (n_molecules,) int.
        cutoff: Å (``None``: all pairs within each molecule; not allowed for periodic structures).
        cells: optional (n_molecules, 3, 3) Å; pbcs: optional (n_molecules, 3) bool.
        targets: optional reference values.
    """
    numbers = torch.as_tensor(numbers, dtype=torch.long)
    positions = torch.as_tensor(positions)
    if not positions.is_floating_point():
        positions = positions.to(torch.get_default_dtype())
    n_atoms = torch.as_tensor(n_atoms, dtype=torch.long)
    molecule = torch.repeat_interleave(torch.arange(n_atoms.shape[0]), n_atoms)
    periodic = pbcs is not None and bool(np.any(pbcs))
    large = n_atoms.numel() > 0 and int(n_atoms.max()) > ALL_PAIRS_MAX_ATOMS
    if not periodic and not large:
        pair_i, pair_j, _, mirrored = mirror_pairs(*molecular_pairs(positions, n_atoms, cutoff))
        return AtomsBatch(
            numbers,
            positions,
            molecule,
            n_atoms,
            pair_i,
            pair_j,
            cutoff,
            targets=targets or {},
            mirrored=mirrored,
        )
    if cutoff is None:
        raise ValueError("a cutoff is required for periodic or large structures")
    starts = np.concatenate([[0], np.cumsum(n_atoms.numpy())])
    pos_np = positions.detach().cpu().numpy()
    cells_np = np.zeros((len(n_atoms), 3, 3)) if cells is None else np.asarray(cells, dtype=np.float64)
    pbcs_np = np.zeros((len(n_atoms), 3), dtype=bool) if pbcs is None else np.asarray(pbcs, dtype=bool)
    pi, pj, ps = [], [], []
    for m in range(len(n_atoms)):
        a, b = starts[m], starts[m + 1]
        i, j, s = linear_pairs(pos_np[a:b], cutoff, cells_np[m], pbcs_np[m])
        pi.append(i + a)
        pj.append(j + a)
        ps.append(s)
    pair_i, pair_j, shifts, mirrored = mirror_pairs(
        torch.from_numpy(np.concatenate(pi)),
        torch.from_numpy(np.concatenate(pj)),
        torch.from_numpy(np.concatenate(ps)).to(positions.dtype),
    )
    return AtomsBatch(
        numbers,
        positions,
        molecule,
        n_atoms,
        pair_i,
        pair_j,
        cutoff,
        cell=torch.as_tensor(cells_np, dtype=positions.dtype),
        pbc=torch.as_tensor(pbcs_np),
        cell_shifts=shifts,
        targets=targets or {},
        mirrored=mirrored,
    )


def batch_from_atoms(atoms_list: Sequence, cutoff: float | None = 5.0, dtype=torch.float64) -> AtomsBatch:
    """Public entry point from ASE: a batch from a list of ``ase.Atoms`` (positions in Å).

    Positions keep ASE's float64 by default; a model casts a batch to its own dtype once when it evaluates it
    (a float64 model then sees the exact positions, not positions rounded to float32 on the way).

    Energies/forces attached through a calculator are *not* read here; see :mod:`atomnet.data.ase_io`.
    """
    if len(atoms_list) == 0:
        raise ValueError("batch_from_atoms: empty list of structures")
    numbers = np.concatenate([a.get_atomic_numbers() for a in atoms_list])
    positions = np.concatenate([a.get_positions() for a in atoms_list])
    n_atoms = np.array([len(a) for a in atoms_list])
    pbcs = np.array([a.get_pbc() for a in atoms_list])
    cells = np.array([a.get_cell().array for a in atoms_list]) if pbcs.any() else None
    return make_batch(
        torch.from_numpy(numbers),
        torch.from_numpy(positions).to(dtype),
        torch.from_numpy(n_atoms),
        cutoff,
        cells=cells,
        pbcs=pbcs if pbcs.any() else None,
    )
