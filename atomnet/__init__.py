"""atomnet: atomistic deep learning with explanations.

Internal units: eV and Å (see :mod:`atomnet.keys`, :mod:`atomnet.units`).
"""

from atomnet.runtime import bounded_openmp_spin as _bounded_openmp_spin

# OpenMP threads spin at most ~0.1 ms before sleeping (atomnet.runtime): libgomp's default 3 ms spin makes torch
# several times slower on cores shared with other work, sleeping at once makes training 1.2-1.3x slower.
# Takes effect when atomnet is imported before torch (the `atomnet` command does); a value the user set is kept.
_bounded_openmp_spin()

__version__ = "0.1.0"

from atomnet.data.batch import AtomsBatch, batch_from_atoms  # noqa: E402

__all__ = [
    "AtomNetCalculator",
    "AtomsBatch",
    "DTNN",
    "Potential",
    "SchNet",
    "batch_from_atoms",
    "list_models",
    "load_model",
    "tabulate_filters",
    "__version__",
]

#: public names imported on first use (keeps ``import atomnet`` light; ASE stays at the edges)
_LAZY = {
    "AtomNetCalculator": "atomnet.calculator",
    "Potential": "atomnet.potential",
    "SchNet": "atomnet.models",
    "DTNN": "atomnet.models",
    "tabulate_filters": "atomnet.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atomnet' has no attribute {name!r}")


def load_model(path_or_name, device: str = "cpu"):
    """A ready Potential from a pretrained name, checkpoint or model file (see :mod:`atomnet.pretrained`)."""
    from atomnet.pretrained import load_model as _load

    return _load(path_or_name, device)


def list_models() -> list[dict]:
    """Pretrained models shipped with atomnet (see :mod:`atomnet.pretrained`)."""
    from atomnet.pretrained import list_models as _list

    return _list()
