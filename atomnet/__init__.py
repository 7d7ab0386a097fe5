"""atomnet: atomistic deep learning with explanations.

Internal units: eV and Å (see :mod:`atomnet.keys`, :mod:`atomnet.units`).
"""

__version__ = "0.1.0"

from atomnet.data.batch import AtomsBatch, batch_from_atoms  # noqa: E402

__all__ = ["AtomsBatch", "batch_from_atoms", "__version__"]
