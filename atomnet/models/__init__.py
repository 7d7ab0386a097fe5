"""Models: SchNet and DTNN, by name through :data:`MODELS`."""

from atomnet.models.base import AtomisticModel
from atomnet.models.dtnn import DTNN
from atomnet.models.registry import MODELS, build_model, load_model_file, save_model
from atomnet.models.schnet import SchNet
from atomnet.models.tabulate import tabulate_filters

__all__ = [
    "AtomisticModel",
    "DTNN",
    "MODELS",
    "SchNet",
    "build_model",
    "load_model_file",
    "save_model",
    "tabulate_filters",
]
