"""Data pipeline: readers, HDF5 store, datasets, batching and neighbour lists.

Readers (``qm9``, ``md17``, ``qm7``, ``ase_io``) return a :class:`MoleculeTable` in source units;
:func:`write_store` converts it once to eV/Å; :class:`StoreDataset` serves :class:`AtomsBatch` objects.
Heavy or optional dependencies (ase, h5py) are imported by the submodules that need them.
"""

from atomnet.data.batch import AtomsBatch, batch_from_atoms, make_batch
from atomnet.data.table import MoleculeTable

__all__ = ["AtomsBatch", "MoleculeTable", "batch_from_atoms", "make_batch"]
