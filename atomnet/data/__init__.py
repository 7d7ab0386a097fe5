"""Data pipeline: readers, HDF5 store, datasets, batching and neighbour lists."""

from atomnet.data.batch import AtomsBatch, batch_from_atoms, make_batch

__all__ = ["AtomsBatch", "batch_from_atoms", "make_batch"]
