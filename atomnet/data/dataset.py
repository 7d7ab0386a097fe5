"""A torch ``Dataset`` over an HDF5 store that memory-maps the arrays instead of loading molecules.

The store's datasets are contiguous and uncompressed (:mod:`atomnet.data.store`), so each one is opened
with ``np.memmap`` at its byte offset in the file: nothing is copied into Python objects, and DataLoader
workers share the operating system's page cache instead of duplicating the data. Memory maps are opened
lazily in each process (open handles are never pickled).

Batches are gathered vectorised: :meth:`StoreDataset.__getitems__` (called by torch's DataLoader for
batched fetching) computes the atom indices of all requested molecules with numpy and builds one
:class:`~atomnet.data.batch.AtomsBatch` with :func:`~atomnet.data.batch.make_batch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from atomnet import keys
from atomnet.data.batch import AtomsBatch, make_batch
from atomnet.data.store import Store
from atomnet.errors import DataFormatError


class StoreDataset(Dataset):
    """Molecules of an HDF5 store as a map-style dataset whose items are :class:`AtomsBatch` objects.

    Args:
        path: the ``.h5`` store.
        cutoff: neighbour-pair cutoff in Å (``None``: all pairs within each molecule).
        targets: store property names to attach as ``batch.targets``; ``None`` attaches every numeric
            property, ``[]`` none. Per-molecule properties have shape (n_molecules, ...), per-atom ones
            (e.g. ``forces``, eV/Å) shape (n_atoms, ...). Values are in internal units (eV, Å).
        indices: molecules of the store this dataset exposes (e.g. a split); default all.
        dtype: floating dtype of positions and targets.
        energy_key: a property renamed to :data:`atomnet.keys.ENERGY` in the batch (e.g. ``"U0"`` for QM9),
            so models train on it; it is added to ``targets`` if missing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        cutoff: float | None,
        targets: Sequence[str] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        dtype: torch.dtype = torch.float32,
        energy_key: str | None = None,
    ):
        self.path = Path(path)
        self.cutoff = cutoff
        self.dtype = dtype
        self.energy_key = energy_key
        with Store(self.path) as store:
            names = list(targets) if targets is not None else _numeric(store)
            if energy_key is not None and energy_key not in names:
                names.append(energy_key)
            self.offsets = store.offsets
            self._specs: dict[str, tuple[str, tuple[int | None, np.dtype, tuple[int, ...]]]] = {}
            for name in ("numbers", "positions", "cells", "pbcs"):
                if name in store.file:
                    self._specs[name] = (name, store.array_spec(name))
            self.target_names: list[str] = []
            self.per_atom: set[str] = set()
            for name in names:
                h5_path = store.dataset_path(name)
                self._specs[name] = (h5_path, store.array_spec(h5_path))
                self.target_names.append(name)
                if store.is_per_atom(name):
                    self.per_atom.add(name)
        n = len(self.offsets) - 1
        if indices is None:
            self.indices = np.arange(n, dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            if self.indices.size and (self.indices.min() < -n or self.indices.max() >= n):
                raise DataFormatError(self.path, f"index out of range for a store of {n} molecules")
            self.indices = np.where(self.indices < 0, self.indices + n, self.indices)
        self.periodic = "pbcs" in self._specs
        self._arrays: dict[str, np.ndarray] | None = None
        self._pid: int | None = None

    # --- pickling: never send open files or memory maps to workers ---------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_pid"] = None
        return state

    def _open(self) -> dict[str, np.ndarray]:
        """Memory maps (or, for non-contiguous datasets, in-memory arrays), opened once per process."""
        if self._arrays is None or self._pid != os.getpid():
            arrays: dict[str, np.ndarray] = {}
            fallback = []
            for name, (h5_path, (offset, dtype, shape)) in self._specs.items():
                if offset is None:
                    fallback.append((name, h5_path))
                else:
                    arrays[name] = np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)
            if fallback:
                with Store(self.path) as store:
                    for name, h5_path in fallback:
                        arrays[name] = store.file[h5_path][()]
            self._arrays, self._pid = arrays, os.getpid()
        return self._arrays

    # --- Dataset protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> AtomsBatch:
        """One molecule as a one-molecule :class:`AtomsBatch`."""
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[int]) -> AtomsBatch:
        """A batch of molecules ``indices`` (positions in this dataset) as one :class:`AtomsBatch`."""
        n = len(self.indices)
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"molecule index out of range for a dataset of {n} molecules")
        mol = self.indices[idx]
        arrays = self._open()
        starts = self.offsets[mol]
        counts = self.offsets[mol + 1] - starts
        total = int(counts.sum())
        # atom index of every atom of the batch: start of its molecule + position inside it
        shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        atoms = np.arange(total, dtype=np.int64) + shift
        numbers = torch.from_numpy(arrays["numbers"][atoms].astype(np.int64))
        positions = torch.from_numpy(arrays["positions"][atoms]).to(self.dtype)
        targets = {}
        for name in self.target_names:
            values = arrays[name][atoms if name in self.per_atom else mol]
            t = torch.from_numpy(np.ascontiguousarray(values))
            if t.is_floating_point():
                t = t.to(self.dtype)
            targets[keys.ENERGY if name == self.energy_key else name] = t
        cells = pbcs = None
        if self.periodic:
            pbcs = arrays["pbcs"][mol]
            cells = arrays["cells"][mol] if "cells" in arrays else None
        return make_batch(numbers, positions, torch.from_numpy(counts), self.cutoff, cells, pbcs, targets)

    def subset(self, indices: Sequence[int] | np.ndarray) -> StoreDataset:
        """A dataset over ``indices`` (positions in this dataset), e.g. the train part of a split."""
        new = StoreDataset.__new__(StoreDataset)
        new.__dict__.update(self.__getstate__())
        new.indices = self.indices[np.asarray(indices, dtype=np.int64)]
        return new

    @property
    def n_atoms(self) -> np.ndarray:
        """(len(self),) int64 atoms of each molecule of this dataset."""
        return (self.offsets[self.indices + 1] - self.offsets[self.indices]).astype(np.int64)


def _numeric(store: Store) -> list[str]:
    names = store.property_names + store.atom_property_names
    return [n for n in names if store.file[store.dataset_path(n)].dtype.kind in "iuf"]


def pass_through(batch: AtomsBatch) -> AtomsBatch:
    """Collate function for datasets that already return a batch from ``__getitems__``."""
    return batch


def make_loader(
    dataset: StoreDataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader yielding :class:`AtomsBatch` objects of ``batch_size`` molecules.

    Shuffling is reproducible: the order of epoch k depends only on ``seed`` and k.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        collate_fn=pass_through,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )
