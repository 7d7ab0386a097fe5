"""Statistics for standardising energies, computed on a subset (normally the training split) of a store.

* :func:`mean_energy_per_atom` — mean of E / n_atoms.
* :func:`fit_atomrefs` — per-element linear least squares E ≈ Σ_Z count_Z · a_Z (atomrefs fitted from data
  when none are given) and the mean/std of the per-atom residual.
* :func:`target_statistics` — the same for any target of a multitask model, or the mean/std of an intensive
  (mean-readout) target, and the spread the multitask loss weights use.

Values are in the store's internal units (eV).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from atomnet.data.store import Store


def _energies(
    store: Store | str | os.PathLike, key: str, indices
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(energies (m,), n_atoms (m,), element counts (m, 119)) of the selected molecules."""
    own = not isinstance(store, Store)
    s = Store(store) if own else store
    try:
        idx = np.arange(s.n_molecules) if indices is None else np.asarray(indices, dtype=np.int64)
        energy = np.asarray(s.property(key), dtype=np.float64)
        if energy.ndim != 1 or s.is_per_atom(key):
            raise ValueError(f"property {key!r} is not a per-molecule scalar (shape {energy.shape})")
        offsets = s.offsets
        starts, counts = offsets[idx], offsets[idx + 1] - offsets[idx]
        atoms = np.arange(counts.sum()) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
        numbers = s.file["numbers"][()][atoms].astype(np.int64)
    finally:
        if own:
            s.close()
    row = np.repeat(np.arange(len(idx)), counts)
    element_counts = np.zeros((len(idx), 119))
    np.add.at(element_counts, (row, numbers), 1.0)
    return energy[idx], counts.astype(np.float64), element_counts


def mean_energy_per_atom(
    store: Store | str | os.PathLike, key: str, indices: Sequence[int] | None = None
) -> float:
    """Mean of E / n_atoms over molecules ``indices`` (default all), in the unit of ``key`` (eV)."""
    energy, n_atoms, _ = _energies(store, key, indices)
    return float(np.mean(energy / n_atoms))


def fit_atomrefs(
    store: Store | str | os.PathLike, key: str, indices: Sequence[int] | None = None, max_z: int = 100
) -> tuple[np.ndarray, float, float]:
    """Fit per-element reference energies a_Z by least squares E ≈ Σ_Z count_Z · a_Z.

    Args:
        store: store (or its path); key: per-molecule energy property, e.g. ``"energy"`` or ``"U0"``;
        indices: molecules to fit on (default all); max_z: largest atomic number of the result.

    Returns:
        atomref: (max_z + 1,) eV per atom of element Z (0 for elements absent from ``indices``),
        mean and std of the per-atom residual (E - Σ count_Z a_Z) / n_atoms, eV.
    """
    return _fit(*_energies(store, key, indices), max_z)


def _fit(energy: np.ndarray, n_atoms: np.ndarray, element_counts: np.ndarray, max_z: int):
    """(atomref (max_z + 1,), mean, std of the per-atom residual) by least squares (see :func:`fit_atomrefs`)."""
    if element_counts[:, max_z + 1 :].any():
        raise ValueError(f"the data contain elements with Z > max_z={max_z}")
    present = np.flatnonzero(element_counts.any(axis=0))
    coef, *_ = np.linalg.lstsq(element_counts[:, present], energy, rcond=None)
    atomref = np.zeros(max_z + 1)
    atomref[present] = coef
    residual = (energy - element_counts[:, present] @ coef) / n_atoms
    return atomref, float(residual.mean()), float(residual.std())


def target_statistics(
    store: Store | str | os.PathLike, key: str, indices, max_z: int, reduce: str, atomrefs: str
) -> tuple[np.ndarray | None, float, float, float]:
    """(atomref or None, mean, std, spread) of a per-molecule target over the molecules ``indices``.

    Sum readout: per-element references fitted by least squares (``atomrefs="fit"``) and the per-atom mean and
    std of the rest; mean readout: no references, mean and std of the molecular values. ``spread``: std over
    molecules of what the network must learn (the value minus its references), for multitask loss weights."""
    values, n_atoms, counts = _energies(store, key, indices)
    if reduce == "mean":
        std = max(float(np.std(values)), 1e-6)
        return None, float(np.mean(values)), std, std
    if atomrefs == "fit":
        atomref, mean, std = _fit(values, n_atoms, counts, max_z)
        rest = values - counts[:, : max_z + 1] @ atomref
    else:
        atomref, mean, std = None, float(np.mean(values / n_atoms)), float(np.std(values / n_atoms))
        rest = values
    return atomref, mean, max(std, 1e-3), max(float(np.std(rest - mean * n_atoms)), 1e-6)
