"""Neighbour pairs within a cutoff. One home for the neighbour list.

* :func:`molecular_pairs` — vectorised torch for batches of small, non-periodic molecules
  (all ordered pairs inside each molecule, filtered by distance; no Python loop over atoms or pairs).
* :func:`linear_pairs` — linear-scaling cell-list search through the maintained ``vesin`` library, for
  large and periodic systems, including cells smaller than twice the cutoff.

Both return *directed* pairs (i, j) with i != j (or a periodic image of i) and, for periodic systems,
integer lattice shifts S such that r_ij = R_j - R_i + S @ cell.
"""

from __future__ import annotations

import numpy as np
import torch

#: Molecules with more atoms than this use the cell-list search instead of all-pairs.
ALL_PAIRS_MAX_ATOMS = 1000


def molecular_pairs(
    positions: torch.Tensor, n_atoms: torch.Tensor, cutoff: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All directed pairs i != j inside each molecule with |R_j - R_i| < cutoff.

    Args:
        positions: (n_atoms_total, 3) Å, molecules stored one after the other.
        n_atoms: (n_molecules,) int64, atoms per molecule.
        cutoff: Å; ``None`` keeps every pair of the molecule.

    Returns:
        pair_i, pair_j: (n_pairs,) int64 indices into ``positions``, sorted by i.
    """
    n_atoms = n_atoms.to(torch.long)
    device = positions.device
    n_sq = n_atoms * n_atoms
    if cutoff is not None and n_atoms.numel() > 0:
        n_max = int(n_atoms.max())
        if n_atoms.shape[0] * n_max * n_max <= 4 * int(n_sq.sum()):  # modest padding: faster dense path
            return _padded_pairs(positions, n_atoms, n_max, cutoff)
    n_mol = n_atoms.shape[0]
    mol = torch.repeat_interleave(torch.arange(n_mol, device=device), n_sq)
    pair_start = torch.cumsum(n_sq, 0) - n_sq
    atom_start = torch.cumsum(n_atoms, 0) - n_atoms
    local = torch.arange(mol.shape[0], device=device) - pair_start[mol]
    size = n_atoms[mol]
    a = torch.div(local, size, rounding_mode="floor")
    b = local - a * size
    keep = a != b
    offset = atom_start[mol]
    pair_i = (a + offset)[keep]
    pair_j = (b + offset)[keep]
    if cutoff is not None:
        with torch.no_grad():
            d2 = (positions[pair_j] - positions[pair_i]).pow(2).sum(-1)
            within = d2 < cutoff * cutoff
        pair_i, pair_j = pair_i[within], pair_j[within]
    return pair_i, pair_j


def _padded_pairs(
    positions: torch.Tensor, n_atoms: torch.Tensor, n_max: int, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`molecular_pairs` on molecules padded to ``n_max`` atoms (same pairs, same order).

    Coordinates are laid out as (3, n_molecules, n_max) so the squared distances are a few elementwise
    passes; padding is NaN (never within the cutoff) and the diagonal is set to inf (no self pairs).
    """
    device = positions.device
    n_mol = n_atoms.shape[0]
    start = torch.cumsum(n_atoms, 0) - n_atoms
    mol = torch.repeat_interleave(torch.arange(n_mol, device=device), n_atoms)
    local = torch.arange(positions.shape[0], device=device) - start[mol]
    with torch.no_grad():
        pad = positions.new_full((3, n_mol, n_max), float("nan"))
        pad[:, mol, local] = positions.detach().T
        d2 = pad[:, :, None, :] - pad[:, :, :, None]  # (3, n_mol, a, b): R_b - R_a
        d2.mul_(d2)
        d2 = d2[0].add_(d2[1]).add_(d2[2])
        d2.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        m, a, b = (d2 < cutoff * cutoff).nonzero(as_tuple=True)
    offset = start[m]
    return a + offset, b + offset


def linear_pairs(
    positions: np.ndarray, cutoff: float, cell: np.ndarray | None = None, pbc=False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell-list neighbour search (vesin) for one structure, periodic or not.

    Args:
        positions: (n_atoms, 3) Å.
        cutoff: Å.
        cell: (3, 3) Å, rows are lattice vectors; ignored (may be None) when no direction is periodic.
        pbc: bool or three bools.

    Returns:
        pair_i, pair_j: (n_pairs,) int64; shifts: (n_pairs, 3) float64 integer lattice shifts.
    """
    from vesin import NeighborList

    pos = np.ascontiguousarray(positions, dtype=np.float64)
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if not periodic.any() or cell is None or not np.any(cell):
        box = np.zeros((3, 3))
        periodic = np.zeros(3, dtype=bool)
    else:
        box = np.ascontiguousarray(cell, dtype=np.float64)
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(points=pos, box=box, periodic=[bool(p) for p in periodic], quantities="ijS")
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), s[order].astype(np.float64)
