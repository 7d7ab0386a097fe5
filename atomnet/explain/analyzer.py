"""One call per method (the iNNvestigate interface): ``create_analyzer(name, potential, **params).analyze(x)``.

``potential`` is anything :func:`atomnet.load_model` accepts (pretrained name, checkpoint, model file) or
returns (:class:`~atomnet.potential.Potential`), or a bare :class:`~atomnet.models.base.AtomisticModel`.
``x`` is an ``ase.Atoms``, a list of them or an :class:`~atomnet.data.batch.AtomsBatch`. The model is
explained as it is (exact filters, its own dtype unless ``dtype`` is given) and left untouched.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import numpy as np
import torch

from atomnet.data.batch import AtomsBatch, batch_from_atoms
from atomnet.errors import ExplanationError
from atomnet.explain.contributions import reference_energies
from atomnet.explain.explanation import Explanation
from atomnet.explain.methods import METHODS, Method, _load_all, get_method
from atomnet.models.base import AtomisticModel
from atomnet.potential import Potential, check_batch


def as_potential(potential, dtype: torch.dtype | None = None) -> Potential:
    """A :class:`Potential` in eval mode from a name, a file, a Potential or a model; with ``dtype``, a copy
    in that dtype (the original is not changed)."""
    if isinstance(potential, (str, os.PathLike)):
        from atomnet.pretrained import load_model

        potential = load_model(potential)
    elif isinstance(potential, AtomisticModel):
        potential = Potential(potential)
    if not isinstance(potential, Potential):
        raise ExplanationError(
            f"cannot explain a {type(potential).__name__}: give a pretrained name, a model file, a "
            "checkpoint, an atomnet Potential or model"
        )
    if dtype is not None and potential.dtype != dtype:
        potential = copy.deepcopy(potential).to(dtype)
    return potential


def as_batch(structures, potential: Potential) -> AtomsBatch:
    """An :class:`AtomsBatch` with the model's cutoff and dtype from Atoms, a list of Atoms or a batch."""
    if isinstance(structures, AtomsBatch):
        batch = structures
    else:
        atoms_list = [structures] if hasattr(structures, "get_positions") else list(structures)
        if not atoms_list:
            raise ExplanationError("nothing to explain: no structures given")
        batch = batch_from_atoms(atoms_list, cutoff=potential.cutoff, dtype=potential.dtype)
    batch = batch.to(potential.device, potential.dtype)
    check_batch(batch, potential.cutoff)
    return batch


class Analyzer:
    """A method bound to a potential and parameters; :meth:`analyze` explains structures."""

    def __init__(self, method: Method, potential: Potential, params: dict):
        self.method = method
        self.potential = potential
        self.params = params
        self.fitted = None

    def fit(self, structures, batch_size: int = 256, progress: bool = False) -> Analyzer:
        """Learn what the method needs from training ``structures`` (a list of Atoms or an AtomsBatch), e.g.
        the patterns of ``patternnet`` / ``patternattribution``; returns the analyzer itself."""
        from tqdm.auto import tqdm

        if isinstance(structures, AtomsBatch):
            batches = [as_batch(structures, self.potential)]
        else:
            items = list(structures)
            if not items:
                raise ExplanationError("nothing to fit on: no structures given")
            starts = range(0, len(items), batch_size)
            batches = (
                as_batch(items[s : s + batch_size], self.potential)
                for s in tqdm(starts, disable=not progress, desc=f"fit {self.method.name}", unit="batch")
            )
        self.fitted = self.method.fit(self.potential.model, batches, self.params)
        return self

    def __repr__(self) -> str:
        return f"Analyzer({self.method.name!r}, {self.params})"

    def analyze(self, structures) -> list[Explanation]:
        """One :class:`Explanation` per molecule of ``structures`` (Atoms, list of Atoms or AtomsBatch)."""
        batch = as_batch(structures, self.potential)
        model = self.potential.model
        params = {**self.params, "fitted": self.fitted} if self.method.needs_fit else self.params
        result = self.method.attribute(model, batch, params)
        reference = reference_energies(model, batch)
        return split_molecules(self.method, self.params, batch, result, reference)


def split_molecules(method: Method, params: dict, batch: AtomsBatch, result, reference) -> list[Explanation]:
    """Per-molecule :class:`Explanation` objects from batch-wide tensors."""

    def np64(t):
        return t.detach().cpu().double().numpy()

    bounds = np.concatenate([[0], np.cumsum(batch.n_atoms.cpu().numpy())])
    energy, relevance, reference = np64(result.energy), np64(result.relevance), np64(reference)
    unexplained = None if result.unexplained is None else np64(result.unexplained)
    absorbed = {k: np64(v) for k, v in result.absorbed.items()}
    numbers, positions = batch.numbers.cpu().numpy(), np64(batch.positions)
    units = method.units_for(params)
    entries = None
    if result.entries is not None:
        values, owners = result.entries
        start = torch.as_tensor(bounds[:-1], device=owners.device)[:, None, None]
        entries = (np64(values), torch.where(owners >= 0, owners - start, -1).cpu().numpy())
    out = []
    for m in range(batch.n_molecules):
        a, b = bounds[m], bounds[m + 1]
        out.append(
            Explanation(
                method=method.name,
                params=dict(params),
                energy=float(energy[m]),
                relevance=relevance[a:b],
                unexplained=None if unexplained is None else float(unexplained[m]),
                reference=reference[a:b],
                units=units,
                numbers=numbers[a:b],
                positions=positions[a:b],
                absorbed={k: float(v[m]) for k, v in absorbed.items()},
                features=None if entries is None else entries[0][m],
                feature_atoms=None if entries is None else entries[1][m],
            )
        )
    return out


def create_analyzer(name: str, potential, dtype: torch.dtype | None = None, **params) -> Analyzer:
    """The analyzer of method ``name`` (:func:`list_methods`) for ``potential`` with ``params``.

    Unknown methods, unknown parameters and invalid values are one-line
    :class:`~atomnet.errors.ExplanationError` messages.
    """
    method = get_method(name)
    resolved = method.resolve(params)
    return Analyzer(method, as_potential(potential, dtype), resolved)


def explain(potential, atoms, method: str = "lrp-gamma", dtype: torch.dtype | None = None, **params):
    """Explain one structure: the :class:`Explanation` of ``atoms`` (an ``ase.Atoms``)."""
    explanations = create_analyzer(method, potential, dtype=dtype, **params).analyze(atoms)
    if len(explanations) != 1:
        raise ExplanationError(f"explain() takes one structure, got {len(explanations)}; use analyze()")
    return explanations[0]


def list_methods() -> list[str]:
    """Names of the registered explanation methods."""
    _load_all()
    return sorted(METHODS)


def method_info(name: str) -> dict:
    """Name, parameters with defaults, units, whether conserving, and the first docstring line."""
    method = get_method(name)
    doc = (type(method).__doc__ or "").strip().splitlines()
    return {
        "name": method.name,
        "params": dict(method.defaults),
        "units": method.units_for(dict(method.defaults)),
        "conserving": method.conserving,
        "needs_fit": method.needs_fit,
        "summary": doc[0] if doc else "",
    }


def analyze_many(analyzer: Analyzer, structures: Sequence, batch_size: int = 64, progress: bool = False):
    """Explain a long list of structures in batches of ``batch_size`` (with a progress bar if asked)."""
    from tqdm.auto import tqdm

    out: list[Explanation] = []
    with tqdm(total=len(structures), disable=not progress, desc=analyzer.method.name, unit="mol") as bar:
        for start in range(0, len(structures), batch_size):
            chunk = structures[start : start + batch_size]
            out.extend(analyzer.analyze(chunk))
            bar.update(len(chunk))
    return out
