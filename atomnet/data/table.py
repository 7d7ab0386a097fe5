"""The in-memory result of every reader: molecules concatenated atom-wise, in the *source* units.

Readers (qm9, md17, qm7, ase_io, ...) return a :class:`MoleculeTable`; the HDF5 store
(:mod:`atomnet.data.store`) converts it once to internal units (eV, Å) and records the source units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MoleculeTable:
    """Ragged table of molecules.

    Attributes:
        numbers: (n_atoms_total,) int atomic numbers.
        positions: (n_atoms_total, 3) float64, in ``length_unit``.
        n_atoms: (n_molecules,) int atoms per molecule.
        properties: name -> array; per-molecule arrays have first dimension n_molecules, per-atom arrays
            (names in ``per_atom``) first dimension n_atoms_total.
        units: name -> source unit string (e.g. ``{"energy": "kcal/mol", "forces": "kcal/mol/Angstrom"}``).
        per_atom: names of per-atom properties.
        length_unit: unit of ``positions``.
        cells: optional (n_molecules, 3, 3) lattice vectors in ``length_unit``; pbcs: optional (n_molecules, 3).
        source: path or description of where the data came from.
        ids: optional (n_molecules,) int identifiers from the source (e.g. QM9 gdb index).
        meta: free-form provenance (str values), stored as HDF5 attributes.
    """

    numbers: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    per_atom: set[str] = field(default_factory=set)
    length_unit: str = "Angstrom"
    cells: np.ndarray | None = None
    pbcs: np.ndarray | None = None
    source: str = ""
    ids: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def n_molecules(self) -> int:
        return int(len(self.n_atoms))

    @property
    def offsets(self) -> np.ndarray:
        """(n_molecules + 1,) start index of each molecule's atoms, last entry = n_atoms_total."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)]).astype(np.int64)

    def molecule(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(numbers, positions) of molecule ``index``."""
        o = self.offsets
        return self.numbers[o[index] : o[index + 1]], self.positions[o[index] : o[index + 1]]
