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


class PropertyHead(nn.Module):
    """The output of one extra target (multitask learning): a network on the shared representation, its own
    standardisation (value_i = y_i·std + mean + atomref[Z_i]) and readout (sum, or mean for intensive
    targets). Shapes: representation (n_atoms, F) → (n_molecules,) in the target's internal unit."""

    def __init__(self, name: str, network: nn.Module, max_z: int, reduce: str):
        super().__init__()
        self.name = name
        self.output = network
        self.standardize = Standardize(max_z)
        self.aggregate = AtomToMolecule(reduce)

    def forward(self, representation: torch.Tensor, batch: AtomsBatch) -> torch.Tensor:
        y = self.output(representation).squeeze(-1)
        return self.aggregate(self.standardize(y, batch.numbers), batch.molecule, batch.n_molecules)


def check_properties(properties) -> list[dict]:
    """``[{"name": str, "reduce": "sum" | "mean"}, ...]`` with unique names, or a ValueError."""
    out, seen = [], set()
    for p in properties or []:
        if not isinstance(p, dict) or "name" not in p:
            raise ValueError(f"properties: each entry needs a name, got {p!r}")
        name, reduce = str(p["name"]), str(p.get("reduce", "sum"))
        if reduce not in ("sum", "mean"):
            raise ValueError(f"properties: reduce of {name!r} must be 'sum' or 'mean', got {reduce!r}")
        if name in seen or name in (keys.ENERGY, keys.FORCES, keys.ATOMIC_ENERGIES, keys.STRESS):
            raise ValueError(f"properties: {name!r} is repeated or a reserved output name")
        seen.add(name)
        out.append({"name": name, "reduce": reduce})
    return out


class AtomisticModel(nn.Module):
    """Base class. ``hparams`` holds the constructor arguments (saved with the weights); ``cutoff`` in Å.

    Multitask: ``properties`` (a constructor argument of every model) names extra targets predicted next to
    the energy (the first target): one :class:`PropertyHead` per property on the shared representation,
    predictions ``out[name]`` (n_molecules,). Forces and explanations belong to the first target.
    """

    name: str = ""
    #: energies depend on the positions only through the neighbour pairs (False: a global descriptor of all
    #: positions, e.g. CMNet's Coulomb matrix; such models cannot be exported with an external pair list)
    pair_based: bool = True

    def __init__(self, cutoff: float, max_z: int, reduce: str, hparams: dict):
        super().__init__()
        self.cutoff = float(cutoff)
        self.max_z = int(max_z)
        self.hparams = dict(hparams)
        self.standardize = Standardize(max_z)
        self.aggregate = AtomToMolecule(reduce)
        self.heads = nn.ModuleDict()

    def build_heads(self, properties, make_network) -> None:
        """One :class:`PropertyHead` per entry of ``properties``; ``make_network()`` builds its network."""
        props = check_properties(properties)
        self.hparams["properties"] = props or None
        for p in props:
            key = "".join(c if c.isalnum() else "_" for c in p["name"])
            self.heads[key] = PropertyHead(p["name"], make_network(), self.max_z, p["reduce"])

    @property
    def properties(self) -> list[str]:
        """Names of the extra targets, in order."""
        return [h.name for h in self.heads.values()]

    def head(self, name: str) -> PropertyHead:
        for h in self.heads.values():
            if h.name == name:
                return h
        raise KeyError(f"model has no property {name!r}; properties: {self.properties}")

    def property_outputs(self, representation: torch.Tensor, batch: AtomsBatch) -> dict[str, torch.Tensor]:
        """{name: (n_molecules,)} of every extra target from the per-atom representation."""
        return {h.name: h(representation, batch) for h in self.heads.values()}

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
        """Raw per-atom outputs y_i (n_atoms,) and extra results (e.g. hidden states; ``"representation"``,
        the final per-atom features, when the model has property heads).

        ``vectors``: pair vectors, Å, one per unordered pair of a mirrored batch (see :meth:`radial`).
        """
        raise NotImplementedError

    def forward(
        self, batch: AtomsBatch, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-atom energies (n_atoms,) eV and energies (n_molecules,) eV.

        ``positions``/``cell`` replace the batch's (so callers can differentiate with respect to them).
        """
        batch, positions, cell = self.in_own_dtype(batch, positions, cell)
        vectors = batch.pair_vectors(positions, cell, unique=True)  # mirrored: (n_pairs / 2, 3)
        y, extra = self.atomic_outputs(batch, vectors)
        representation = extra.pop("representation", None)
        atomic = self.standardize(y, batch.numbers)
        energy = self.aggregate(atomic, batch.molecule, batch.n_molecules)
        if len(self.heads):
            extra.update(self.property_outputs(representation, batch))
        return {keys.ATOMIC_ENERGIES: atomic, keys.ENERGY: energy, **extra}

    def in_own_dtype(self, batch: AtomsBatch, positions, cell):
        """(batch, positions, cell) cast to the model's floating dtype where they differ (a float64 batch
        for a float32 model, or the reverse); the casts are differentiable, so forces still flow back."""
        dtype = self.standardize.std.dtype
        if batch.positions.dtype == dtype and (positions is None or positions.dtype == dtype):
            return batch, positions, cell
        batch = batch.to(dtype=dtype)
        positions = None if positions is None else positions.to(dtype)
        cell = None if cell is None else cell.to(dtype)
        return batch, positions, cell

    def set_statistics(self, mean: float = 0.0, std: float = 1.0, atomref=None) -> None:
        """Output standardisation: per-atom ``mean``/``std`` (eV) and per-element ``atomref`` (eV, by Z)."""
        self.standardize.set(mean, std, atomref)
