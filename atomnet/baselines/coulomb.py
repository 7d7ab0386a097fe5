"""Coulomb-matrix representations (Rupp et al., PRL 108, 058301, 2012; Montavon et al., NIPS 2012;
Hansen et al., JCTC 9, 3404, 2013).

    M_ii = 0.5 Z_i^2.4,        M_ij = Z_i Z_j / |R_i - R_j|   (i != j)

Distances are in **Bohr** (atomic units, as in the papers), so M is in Hartree-like atomic units.
``distance_unit="Angstrom"`` reproduces qmllib/qml, which use the coordinates as given (Å). The seed talk
shows Z_i^2.4 without the 1/2; we use the paper's 0.5.

Molecules are zero-padded to ``size`` atoms (default: the largest molecule). Variants (:data:`VARIANTS`):

- ``"plain"``: atom order as given; upper triangle (with diagonal) flattened, ``size (size+1) / 2`` values.
- ``"sorted"``: rows and columns permuted by descending row norm ‖M_i‖₂ (padding rows last); upper triangle.
- ``"eigenvalue"``: eigenvalues of the unpadded M sorted descending, then zero-padded to ``size`` (as qmllib).
- ``"random"``: "randomly sorted" matrices: rows/columns sorted by ‖M_i‖ + ε, ε ~ N(0, σ²) per atom,
  ``n_draws`` draws per molecule (Montavon 2012, Hansen 2013); upper triangles, shape (n_mol, n_draws, d).

Everything is vectorised over molecules with batched numpy on padded (chunk, size, size) arrays; the only
Python loops run over chunks of molecules (and, for eigenvalues, over distinct molecule sizes).

Memory: the output is n_mol x size (size+1)/2 float64. For QM9 (133,885 molecules, size 29, 435 values) that
is 466 MB (sorted/plain), 31 MB (eigenvalue) and n_draws x 466 MB (random); the work arrays per chunk of
``chunk_size`` = 4096 molecules are a few (4096, 29, 29) float64 arrays of 27.6 MB each. Full (unflattened)
QM9 matrices would take 906 MB. QM7 (7,101 molecules, size 23): 15.7 MB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from atomnet.data.table import MoleculeTable
from atomnet.errors import AtomNetError
from atomnet.units import length_factor

#: Names of the representation variants.
VARIANTS = ("plain", "sorted", "eigenvalue", "random")


class RepresentationError(AtomNetError, ValueError):
    """Input that cannot be turned into a Coulomb matrix (too many atoms, NaN positions, bad shapes)."""


def pad_molecules(
    numbers: np.ndarray, positions: np.ndarray, n_atoms: np.ndarray, size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged (concatenated) molecules -> zero-padded arrays.

    Args:
        numbers: (n_atoms_total,) int atomic numbers.
        positions: (n_atoms_total, 3) float.
        n_atoms: (n_molecules,) atoms per molecule.
        size: padding size; default ``n_atoms.max()``.

    Returns:
        Z: (n_molecules, size) float64, 0 for padding; R: (n_molecules, size, 3) float64, 0 for padding.
    """
    numbers = np.asarray(numbers)
    positions = np.asarray(positions, dtype=np.float64)
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    if positions.ndim != 2 or positions.shape[1] != 3 or len(positions) != len(numbers):
        raise RepresentationError(
            f"positions must have shape (n_atoms_total, 3) = ({len(numbers)}, 3), got {positions.shape}"
        )
    if n_atoms.sum() != len(numbers):
        raise RepresentationError(f"n_atoms sums to {n_atoms.sum()} but there are {len(numbers)} atoms")
    if len(n_atoms) == 0:
        raise RepresentationError("no molecules given")
    size = int(n_atoms.max()) if size is None else int(size)
    too_big = np.flatnonzero(n_atoms > size)
    if len(too_big):
        i = int(too_big[0])
        raise RepresentationError(
            f"molecule {i} has {n_atoms[i]} atoms, more than the padding size {size} "
            f"({len(too_big)} molecule(s) too large); increase size to at least {n_atoms.max()}"
        )
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        atom = int(np.flatnonzero(bad)[0])
        mol = int(np.searchsorted(np.cumsum(n_atoms), atom, side="right"))
        raise RepresentationError(f"molecule {mol} has non-finite (NaN/inf) positions (atom {atom})")
    if (numbers <= 0).any():
        raise RepresentationError("atomic numbers must be positive")
    n_mol = len(n_atoms)
    mol = np.repeat(np.arange(n_mol), n_atoms)
    slot = np.arange(len(numbers)) - np.repeat(np.cumsum(n_atoms) - n_atoms, n_atoms)
    Z = np.zeros((n_mol, size), dtype=np.float64)
    R = np.zeros((n_mol, size, 3), dtype=np.float64)
    Z[mol, slot] = numbers
    R[mol, slot] = positions
    return Z, R


def coulomb_matrices(Z: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Full Coulomb matrices of padded molecules.

    Args:
        Z: (n_mol, size) atomic numbers, 0 for padding.
        R: (n_mol, size, 3) positions in the length unit of the result (Bohr for the papers' convention).

    Returns:
        (n_mol, size, size) float64; rows/columns of padding atoms are 0.
    """
    diff = R[:, :, None, :] - R[:, None, :, :]
    dist = np.sqrt(np.einsum("mijk,mijk->mij", diff, diff))
    zz = Z[:, :, None] * Z[:, None, :]
    n = Z.shape[1]
    eye = np.eye(n, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        M = np.where(zz > 0, zz / np.where(eye, 1.0, dist), 0.0)
    M[:, eye] = 0.5 * Z**2.4
    if not np.isfinite(M).all():
        mol = int(np.flatnonzero(~np.isfinite(M).all(axis=(1, 2)))[0])
        raise RepresentationError(f"molecule {mol} (in this chunk) has two atoms at the same position")
    return M


def _permute(M: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Apply per-molecule atom permutation ``order`` (n_mol, size) to rows and columns of M."""
    M = np.take_along_axis(M, order[:, :, None], axis=1)
    return np.take_along_axis(M, order[:, None, :], axis=2)


def sort_by_row_norm(M: np.ndarray) -> np.ndarray:
    """Permute (n_mol, size, size) matrices so that row norms descend (padding rows, norm 0, last)."""
    order = np.argsort(-np.linalg.norm(M, axis=2), axis=1, kind="stable")
    return _permute(M, order)


def random_sorted(M: np.ndarray, n_atoms: np.ndarray, sigma: float, n_draws: int, rng: np.random.Generator):
    """(n_mol, size, size) -> (n_mol, n_draws, size, size) sorted by row norm + N(0, sigma²) noise.

    Padding rows always stay last (their sort key is -inf).
    """
    norms = np.linalg.norm(M, axis=2)
    size = M.shape[1]
    pad = np.arange(size)[None, :] >= np.asarray(n_atoms)[:, None]
    out = np.empty((M.shape[0], n_draws, size, size), dtype=M.dtype)
    for d in range(n_draws):
        key = norms + sigma * rng.standard_normal(norms.shape)
        key[pad] = -np.inf
        out[:, d] = _permute(M, np.argsort(-key, axis=1, kind="stable"))
    return out


def eigenvalue_spectrum(M: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """Eigenvalues of each molecule's unpadded matrix, sorted descending and zero-padded: (n_mol, size).

    Batched over molecules of equal size (one ``eigvalsh`` call per distinct atom count).
    """
    n_atoms = np.asarray(n_atoms)
    out = np.zeros(M.shape[:2], dtype=np.float64)
    for n in np.unique(n_atoms):
        idx = np.flatnonzero(n_atoms == n)
        ev = np.linalg.eigvalsh(M[idx, :n, :n])
        out[idx, :n] = ev[:, ::-1]
    return out


def upper_triangle(M: np.ndarray) -> np.ndarray:
    """(..., size, size) -> (..., size (size+1) / 2): upper triangle with diagonal, row by row."""
    iu = np.triu_indices(M.shape[-1])
    return M[..., iu[0], iu[1]]


def coulomb_representation(
    numbers: np.ndarray,
    positions: np.ndarray,
    n_atoms: np.ndarray,
    variant: str = "sorted",
    size: int | None = None,
    length_unit: str = "Angstrom",
    distance_unit: str = "Bohr",
    noise: float = 1.0,
    n_draws: int = 10,
    seed: int = 0,
    chunk_size: int = 4096,
) -> np.ndarray:
    """Coulomb-matrix feature vectors for many molecules.

    Args:
        numbers: (n_atoms_total,) atomic numbers; positions: (n_atoms_total, 3) in ``length_unit``;
        n_atoms: (n_molecules,) atoms per molecule (molecules concatenated as in MoleculeTable).
        variant: one of :data:`VARIANTS`.
        size: padding size (max atoms); default the largest molecule given. Use the same size for train
            and test sets.
        length_unit: unit of ``positions`` (``"Angstrom"`` or ``"Bohr"``).
        distance_unit: unit of |R_i - R_j| inside M: ``"Bohr"`` (papers) or ``"Angstrom"`` (qmllib).
        noise: σ of the row-norm noise for ``"random"`` (in units of M).
        n_draws: random permutations per molecule for ``"random"``.
        seed: RNG seed for ``"random"``.
        chunk_size: molecules processed at once (bounds work memory, ~4 x chunk x size² x 8 bytes).

    Returns:
        float64 array: (n_mol, size (size+1)/2) for plain/sorted, (n_mol, size) for eigenvalue,
        (n_mol, n_draws, size (size+1)/2) for random.

    Raises:
        RepresentationError: unknown variant, a molecule larger than ``size``, NaN positions, coincident atoms.
    """
    if variant not in VARIANTS:
        raise RepresentationError(f"unknown Coulomb-matrix variant {variant!r}; choose from {VARIANTS}")
    scale = length_factor(length_unit) / length_factor(distance_unit)
    Z, R = pad_molecules(numbers, positions, n_atoms, size)
    R *= scale
    n_atoms = np.asarray(n_atoms)
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, len(Z), chunk_size):
        sl = slice(start, start + chunk_size)
        M = coulomb_matrices(Z[sl], R[sl])
        parts.append(_TRANSFORMS[variant](M, n_atoms[sl], noise, n_draws, rng))
    return np.concatenate(parts)


_TRANSFORMS: dict[str, Callable[..., np.ndarray]] = {
    "plain": lambda M, n, s, d, rng: upper_triangle(M),
    "sorted": lambda M, n, s, d, rng: upper_triangle(sort_by_row_norm(M)),
    "eigenvalue": lambda M, n, s, d, rng: eigenvalue_spectrum(M, n),
    "random": lambda M, n, s, d, rng: upper_triangle(random_sorted(M, n, s, d, rng)),
}


def table_representation(table: MoleculeTable, variant: str = "sorted", **kwargs) -> np.ndarray:
    """:func:`coulomb_representation` of every molecule of a :class:`MoleculeTable` (any length unit)."""
    return coulomb_representation(
        table.numbers, table.positions, table.n_atoms, variant, length_unit=table.length_unit, **kwargs
    )
