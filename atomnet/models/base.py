"""What every atomnet model shares: per-atom energies → standardisation → sum over atoms.

A model maps an :class:`~atomnet.data.batch.AtomsBatch` to per-atom energies (eV) and the molecular energy.
Subclasses implement :meth:`atomic_outputs` (raw per-atom outputs y_i, before standardisation); the base class
adds standardisation (:class:`~atomnet.nn.output.Standardize`) and the atom → molecule sum. Forces are not
computed here: see :func:`atomnet.potential.energy_and_forces`.
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet import keys
from atomnet.data.batch import AtomsBatch
from atomnet.nn.ops import AtomToMolecule
from atomnet.nn.output import Standardize


def constructor_arguments(local_vars: dict) -> dict:
    """The arguments of a model's ``__init__`` (call as ``constructor_arguments(locals())`` first thing)."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


class AtomisticModel(nn.Module):
    """Base class. ``hparams`` holds the constructor arguments (saved with the weights); ``cutoff`` in Å."""

    name: str = ""

    def __init__(self, cutoff: float, max_z: int, reduce: str, hparams: dict):
        super().__init__()
        self.cutoff = float(cutoff)
        self.max_z = int(max_z)
        self.hparams = dict(hparams)
        self.standardize = Standardize(max_z)
        self.aggregate = AtomToMolecule(reduce)

    def radial(self, batch: AtomsBatch, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Radial basis (n, n_rbf) and cutoff values (n,) of the pair distances.

        ``vectors`` come from :meth:`forward`: for a mirrored batch one per unordered pair (n = n_pairs / 2),
        since the reversed pairs have the same distances; :class:`~atomnet.nn.ops.FilterProduct` applies
        each filter to both directions. Otherwise n = n_pairs. In a copy made by
        :func:`~atomnet.models.tabulate.tabulate_filters` ``rbf`` is the identity: (r (n,), f_c (n,)).
        """
        r = torch.linalg.vector_norm(vectors, dim=-1)
        return self.rbf(r), self.cutoff_fn(r)

    def distance_filters(self) -> list[str]:
        """Names of the submodules that map the radial basis (and cutoff values) to per-pair filters: the
        functions of the distance alone that :func:`~atomnet.models.tabulate.tabulate_filters` tabulates.
        Default: none."""
        return []

    def atomic_outputs(self, batch: AtomsBatch, vectors: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Raw per-atom outputs y_i (n_atoms,) and extra results (e.g. hidden states).

        ``vectors``: pair vectors, Å, one per unordered pair of a mirrored batch (see :meth:`radial`).
        """
        raise NotImplementedError

    def forward(
        self, batch: AtomsBatch, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-atom energies (n_atoms,) eV and energies (n_molecules,) eV.

        ``positions``/``cell`` replace the batch's (so callers can differentiate with respect to them).
        """
        vectors = batch.pair_vectors(positions, cell, unique=True)  # mirrored: (n_pairs / 2, 3)
        y, extra = self.atomic_outputs(batch, vectors)
        atomic = self.standardize(y, batch.numbers)
        energy = self.aggregate(atomic, batch.molecule, batch.n_molecules)
        return {keys.ATOMIC_ENERGIES: atomic, keys.ENERGY: energy, **extra}

    def set_statistics(self, mean: float = 0.0, std: float = 1.0, atomref=None) -> None:
        """Output standardisation: per-atom ``mean``/``std`` (eV) and per-element ``atomref`` (eV, by Z)."""
        self.standardize.set(mean, std, atomref)
