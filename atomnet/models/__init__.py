"""Models: SchNet, DTNN and CMNet (Coulomb-matrix network), by name through :data:`MODELS`."""

from atomnet.models.base import AtomisticModel
from atomnet.models.cmnet import CMNet
from atomnet.models.dtnn import DTNN
from atomnet.models.registry import MODELS, build_model, load_model_file, save_model
from atomnet.models.schnet import SchNet
from atomnet.models.tabulate import tabulate_filters

__all__ = [
    "AtomisticModel",
    "CMNet",
    "DTNN",
    "MODELS",
    "SchNet",
    "build_model",
    "load_model_file",
    "save_model",
    "tabulate_filters",
]
