"""Neighbour pairs of one ASE structure with a Verlet buffer, reused between MD or optimiser steps.

Pairs are built at ``cutoff + skin`` and reused while no atom moved more than ``skin / 2`` since the last build
(and numbers, cell and pbc are unchanged). Pairs beyond the model cutoff are dropped before each evaluation;
they would contribute exactly zero (cutoff function), so results are identical to rebuilding every step. An
atom wrapped back into the cell moves by a lattice vector, which is more than ``skin / 2``, so wrapping triggers
a rebuild and lattice shifts stay valid. The batch tensors are kept between steps; only the new positions are
copied in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch

from atomnet.data.batch import AtomsBatch, make_batch
from atomnet.errors import ModelInputError

#: Two atoms closer than this (Å) are reported as overlapping instead of being evaluated.
MIN_DISTANCE = 0.1


class VerletPairs:
    """The pair list (as an :class:`AtomsBatch` of one structure) of the structures a calculator is given.

    Args:
        cutoff: the model cutoff, Å.
        skin: Verlet buffer, Å (0: rebuild at every call).
        dtype, device: of the batch tensors.
        on_build: called with the atomic numbers before each build (e.g. the calculator's element check).
    """

    def __init__(
        self,
        cutoff: float,
        skin: float,
        dtype: torch.dtype,
        device: torch.device,
        on_build: Callable[[np.ndarray], None] | None = None,
    ):
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.dtype, self.device = dtype, device
        self.on_build = on_build
        self.n_builds = 0  #: neighbour-list builds, for tests and benchmarks
        self._batch: AtomsBatch | None = None
        self._built_positions: np.ndarray | None = None  # (n_atoms, 3) Å at the last build

    @property
    def built(self) -> AtomsBatch | None:
        """The batch of the last build (pairs within cutoff + skin), ``None`` before the first."""
        return self._batch

    def needs_rebuild(self, positions: np.ndarray, changes: Iterable[str]) -> bool:
        if self._batch is None or self._built_positions is None:
            return True
        if {"numbers", "cell", "pbc"} & set(changes):
            return True
        if self._built_positions.shape != positions.shape:
            return True
        disp2 = np.max(np.einsum("ij,ij->i", *(2 * [positions - self._built_positions])), initial=0.0)
        return self.skin == 0.0 or disp2 > (0.5 * self.skin) ** 2

    def _build(self, atoms) -> AtomsBatch:
        numbers = atoms.get_atomic_numbers()
        if self.on_build is not None:
            self.on_build(numbers)
        pbc = atoms.get_pbc()
        periodic = bool(pbc.any())
        batch = make_batch(
            torch.from_numpy(numbers),
            torch.as_tensor(atoms.positions, dtype=self.dtype),
            torch.tensor([len(atoms)]),
            self.cutoff + self.skin,
            cells=atoms.cell.array[None] if periodic else None,
            pbcs=pbc[None] if periodic else None,
        ).to(self.device, self.dtype)
        self._built_positions = atoms.positions.copy()
        self.n_builds += 1
        return batch

    def __call__(self, atoms, changes: Iterable[str]) -> AtomsBatch:
        """The batch of ``atoms`` with the pairs inside the cutoff; rebuilt only when needed."""
        positions = atoms.positions
        if self.needs_rebuild(positions, changes):
            self._batch = None  # drop a stale list if the build fails
            self._batch = self._build(atoms)
        else:
            self._batch.positions.copy_(torch.from_numpy(positions))
        return self._within_cutoff(self._batch)

    def _within_cutoff(self, batch: AtomsBatch) -> AtomsBatch:
        """Check for overlapping atoms; with a skin, keep only the pairs inside the model cutoff.

        Pairs in the skin contribute exactly zero (cutoff function), so dropping them changes nothing but
        saves the filter-network work on them (about (1 + skin/cutoff)³ − 1 of all pairs).
        """
        if batch.pair_i.numel() == 0:
            return batch
        with torch.no_grad():
            d2 = batch.pair_vectors(unique=True).pow(2).sum(-1)  # mirrored: one per unordered pair
            k = int(torch.argmin(d2))
            if float(d2[k]) < MIN_DISTANCE**2:
                i, j = int(batch.pair_i[k]), int(batch.pair_j[k])
                raise ModelInputError(
                    f"atoms {min(i, j)} and {max(i, j)} overlap (distance {float(d2[k]) ** 0.5:.3g} Å "
                    f"< {MIN_DISTANCE} Å)"
                )
            if self.skin == 0.0:
                return batch
            keep = torch.nonzero(d2 < self.cutoff**2).squeeze(1)
            if batch.mirrored:  # the same unordered pairs in both halves: the layout stays mirrored
                keep = torch.cat([keep, keep + d2.shape[0]])
        shifts = batch.cell_shifts
        return replace(
            batch,
            pair_i=batch.pair_i[keep],
            pair_j=batch.pair_j[keep],
            cell_shifts=None if shifts is None else shifts[keep],
        )
