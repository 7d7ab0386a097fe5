"""atomnet: atomistic deep learning with explanations.

Internal units: eV and Å (see :mod:`atomnet.keys`, :mod:`atomnet.units`).
"""

__version__ = "0.1.0"

from atomnet.data.batch import AtomsBatch, batch_from_atoms  # noqa: E402

__all__ = ["AtomsBatch", "batch_from_atoms", "list_models", "load_model", "__version__"]


def load_model(path_or_name, device: str = "cpu"):
    """A ready Potential from a pretrained name, checkpoint or model file (see :mod:`atomnet.pretrained`)."""
    from atomnet.pretrained import load_model as _load

    return _load(path_or_name, device)


def list_models() -> list[dict]:
    """Pretrained models shipped with atomnet (see :mod:`atomnet.pretrained`)."""
    from atomnet.pretrained import list_models as _list

    return _list()
