"""The registry of explanation methods (STYLE principle 7: adding a method is one class and one decorator).

A :class:`Method` turns (model, batch, parameters) into an :class:`Attribution` for every atom of the batch;
:mod:`atomnet.explain.analyzer` wraps it into per-molecule :class:`~atomnet.explain.explanation.Explanation`
objects. Parameters are declared with their defaults; values from the command line (strings) are converted
to the default's type and checked by :meth:`Method.check`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from atomnet.data.batch import AtomsBatch
from atomnet.errors import ExplanationError
from atomnet.models.base import AtomisticModel


@dataclass
class Attribution:
    """Relevance of every atom of a batch: ``energy`` (n_molecules,) eV, ``relevance`` (n_atoms,),
    ``unexplained`` (n_molecules,) eV or ``None``, ``absorbed`` {module name: (n_molecules,) eV}; for a
    network on a feature vector also ``entries`` = (relevance per entry (n_molecules, d), owners
    (n_molecules, d, 2) batch atom indices, −1 none) from :func:`~atomnet.explain.propagation.to_entries`."""

    energy: torch.Tensor
    relevance: torch.Tensor
    unexplained: torch.Tensor | None
    absorbed: dict[str, torch.Tensor] = field(default_factory=dict)
    entries: tuple[torch.Tensor, torch.Tensor] | None = None


class Method:
    """Base class: ``name``, ``defaults`` (parameter → default value), ``units`` of the relevance,
    ``conserving`` (Σ relevance + unexplained = energy), and :meth:`attribute`."""

    name: str = ""
    defaults: dict = {}
    units: str = "eV"
    conserving: bool = True
    #: learns something from training structures first (:meth:`fit`; e.g. the patterns of PatternNet)
    needs_fit: bool = False

    def fit(self, model: AtomisticModel, batches, params: dict):
        """What :meth:`attribute` needs from training data, passed back to it as ``params["fitted"]``."""
        raise ExplanationError(f"method {self.name!r} learns nothing from data (no fit)")

    def check(self, params: dict) -> None:
        """Raise :class:`ExplanationError` for parameter values the method cannot use."""

    def units_for(self, params: dict) -> str:
        """Unit of the relevance with these parameters."""
        return self.units

    def attribute(self, model: AtomisticModel, batch: AtomsBatch, params: dict) -> Attribution:
        raise NotImplementedError

    def resolve(self, params: dict) -> dict:
        """Defaults filled in, values converted to the defaults' types, unknown names refused."""
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ExplanationError(
                f"method {self.name!r} has no parameter {unknown[0]!r}; its parameters: {known}"
            )
        out = dict(self.defaults)
        for key, value in params.items():
            out[key] = _convert(self.name, key, value, self.defaults[key])
        self.check(out)
        return out


def _convert(method: str, key: str, value, default):
    kind = type(default)
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ExplanationError(
            f"method {method!r}: parameter {key}={value!r} is not a valid {kind.__name__}"
        ) from None


def require(condition: bool, method: str, message: str) -> None:
    """One-line :class:`ExplanationError` ``method 'name': message`` unless ``condition``."""
    if not condition:
        raise ExplanationError(f"method {method!r}: {message}")


METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add an instance of ``cls`` to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    _load_all()
    try:
        return METHODS[name]
    except KeyError:
        raise ExplanationError(
            f"unknown explanation method {name!r}; available: {', '.join(sorted(METHODS))}"
        ) from None


def _load_all() -> None:
    # the modules that register methods (imported here so the registry is complete on first use)
    import atomnet.explain.contributions  # noqa: F401
    import atomnet.explain.gradients  # noqa: F401
    import atomnet.explain.lrp  # noqa: F401
    import atomnet.explain.patterns  # noqa: F401
