"""Names, shapes and units of every batch and prediction field.

One home for field names: code refers to ``keys.ENERGY`` rather than the string ``"energy"``.
Internal units are **eV** for energies, **Å** for lengths, **eV/Å** for forces and **eV/Å³** for stress.
Shapes use ``n_atoms`` (all atoms of a batch), ``n_molecules`` and ``n_pairs`` (directed neighbour pairs).
"""

from __future__ import annotations

# --- structure fields (AtomsBatch attributes) -------------------------------------------------
NUMBERS = "numbers"  #: (n_atoms,) int64, atomic numbers Z
POSITIONS = "positions"  #: (n_atoms, 3) float, Å
MOLECULE = "molecule"  #: (n_atoms,) int64, index of the molecule each atom belongs to
PAIR_I = "pair_i"  #: (n_pairs,) int64, centre atom of each directed pair
PAIR_J = "pair_j"  #: (n_pairs,) int64, neighbour atom of each directed pair
CELL = "cell"  #: (n_molecules, 3, 3) float, Å, rows are lattice vectors (zeros if not periodic)
PBC = "pbc"  #: (n_molecules, 3) bool
CELL_SHIFTS = "cell_shifts"  #: (n_pairs, 3) float, integer lattice shifts S: r_ij = R_j - R_i + S @ cell
N_ATOMS = "n_atoms"  #: (n_molecules,) int64, atoms per molecule

# --- targets and predictions -------------------------------------------------------------------
ENERGY = "energy"  #: (n_molecules,) eV
ATOMIC_ENERGIES = "atomic_energies"  #: (n_atoms,) eV, per-atom contributions, sum to ENERGY
FORCES = "forces"  #: (n_atoms, 3) eV/Å, -dE/dR
STRESS = "stress"  #: (n_molecules, 3, 3) eV/Å³, (1/V) dE/dε

# QM9 scalar targets (per molecule). Energies are stored in eV, see atomnet.data.qm9 for all units.
QM9_TARGETS = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")

#: Fields that live on atoms (first dimension n_atoms) rather than on molecules.
PER_ATOM_FIELDS = frozenset({NUMBERS, POSITIONS, MOLECULE, FORCES, ATOMIC_ENERGIES, "charges"})
