"""A neural network on Coulomb matrices (Montavon et al., NIPS 2012, "Learning invariant representations of
molecules for atomization energy prediction").

The Coulomb matrix of each molecule is built from the batch in torch by the input layer
:class:`~atomnet.nn.coulomb.CoulombFeatures` (the definition and units of :mod:`atomnet.baselines.coulomb`,
zero-padded to ``max_atoms``). Rows and columns are sorted by row norm at evaluation and **randomly sorted**
during training (row norms + N(0, σ²) noise, a fresh draw per forward pass, as in the paper); the upper
triangle (with diagonal) is standardised, expanded and fed to a multilayer perceptron that predicts the
molecular energy.

Input expansion (``expansion``): ``"binarize"`` — the paper's smooth binarisation, each entry x becomes
tanh((x − θk)/θ) for k = −K … K (``n_steps`` = 2K+1 values per entry, step ``theta``); ``"none"`` — the raw
entries. In both cases a per-entry affine standardisation (``input_mean`` / ``input_std``, set from training
data with :meth:`CMNet.set_input_statistics`, identity by default) comes first.

Energies are differentiable in the positions, so forces come from the same
:func:`~atomnet.potential.energy_and_forces` path (within one sorting order: the sort is piecewise constant,
and the energy jumps where two row norms cross — such ties are rare in real geometries). Permutation
invariance holds exactly where row norms are distinct (sorting removes the atom order).

Per-atom energies: the network predicts one value y per molecule, given to each of its N atoms as the raw
per-atom output (y_i = y), so the standardisation E = Σ_i (y_i·std + mean + atomref[Z_i]) = N·std·y + Σ_i (mean +
atomref[Z_i]) works as for SchNet and y stays of order one (a molecular residual is about N times the per-atom
std). The resulting per-atom energies are equal shares, not an atom-wise decomposition: explanations map the
relevance of the Coulomb-matrix entries to atoms instead (:mod:`atomnet.explain`).
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet.data.batch import AtomsBatch
from atomnet.models.base import AtomisticModel, constructor_arguments
from atomnet.nn.activations import ShiftedSoftplus, Tanh
from atomnet.nn.coulomb import CoulombFeatures, coulomb_matrix, padded, sort_rows  # noqa: F401 (re-exported)
from atomnet.nn.ops import MoleculeToAtoms

ACTIVATIONS = {"tanh": Tanh, "ssp": ShiftedSoftplus}
#: buffers of files written before the input layer became a module (CMNet.input_mean → features.input_mean)
_LEGACY = ("input_mean", "input_std", "steps", "triu")


class CMNet(AtomisticModel):
    """MLP on (randomly) sorted Coulomb matrices.

    Args:
        max_atoms: padding size (QM7: 23; QM9: 29).
        hidden: widths of the hidden layers (paper: 400, 100).
        activation: ``"tanh"`` (paper: sigmoid-like) or ``"ssp"``.
        expansion: ``"binarize"`` or ``"none"``; n_steps, theta: binarisation (values per entry, step).
        sigma: noise of the random sorting during training (paper: 1).
        test_sortings: at evaluation, average over this many random sortings (1: the sorted matrix only). The
            evaluation draws are a fixed table of ``test_sortings`` noise vectors from ``sorting_seed``, the
            same for every molecule and every call, so predictions (and explanations, which call the model
            many times) are deterministic and do not depend on how molecules are batched.
        sorting_seed: seed of that table.
        max_z, reduce: as for SchNet.
        properties: extra targets (multitask, Montavon et al. 2013): the hidden layers are shared, each
            property has its own last dense layer on the last hidden layer (one output per target).
    """

    name = "cmnet"
    pair_based = False

    def __init__(
        self,
        max_atoms: int = 23,
        hidden: tuple[int, ...] | list[int] = (400, 100),
        activation: str = "tanh",
        expansion: str = "binarize",
        n_steps: int = 9,
        theta: float = 1.0,
        sigma: float = 1.0,
        test_sortings: int = 1,
        sorting_seed: int = 0,
        max_z: int = 100,
        reduce: str = "sum",
        properties: list[dict] | None = None,
    ):
        hparams = constructor_arguments(locals())
        hparams["hidden"] = list(hidden)
        super().__init__(0.0, max_z, reduce, hparams)  # no neighbour pairs needed
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.max_atoms, self.sigma, self.test_sortings = int(max_atoms), float(sigma), int(test_sortings)
        self.sorting_seed = int(sorting_seed)
        self.features = CoulombFeatures(self.max_atoms, expansion, n_steps, theta)
        width = self.features.width
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.output = nn.Sequential(*layers)
        self.to_atoms = MoleculeToAtoms()
        self.build_heads(properties, lambda: nn.Linear(width, 1))
        self.register_load_state_dict_pre_hook(_legacy_keys)

    def entries(self, batch: AtomsBatch, positions: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Standardised upper triangles of the (randomly) sorted matrices, (n_molecules, d)."""
        return self.features.entries(batch, positions, noise)

    def molecular_outputs(
        self, batch: AtomsBatch, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output (n_molecules,), last hidden layer (n_molecules, H)), each averaged over random sortings
        where asked (the mean is linear: relevance splits equally among the draws)."""
        draws = 1 if self.training else max(1, self.test_sortings)
        table = self.evaluation_noise(draws, positions) if draws > 1 else None
        outs, hidden = [], []
        for d in range(draws):
            noise = None
            if self.training:
                noise = self.sigma * torch.randn(
                    batch.n_molecules, self.max_atoms, dtype=positions.dtype, device=positions.device
                )
            elif table is not None:
                noise = table[d].expand(batch.n_molecules, self.max_atoms)
            h = self.output[:-1](self.features(batch, positions, noise))
            outs.append(self.output[-1](h).squeeze(-1))
            hidden.append(h)
        if draws == 1:
            return outs[0], hidden[0]
        return torch.stack(outs).mean(0), torch.stack(hidden).mean(0)

    def evaluation_noise(self, draws: int, like: torch.Tensor) -> torch.Tensor:
        """σ · N(0, 1) noise of the evaluation sortings, (draws, max_atoms): drawn from ``sorting_seed`` (in
        float64 on the CPU, so the table is the same on every device and dtype)."""
        generator = torch.Generator().manual_seed(self.sorting_seed)
        table = self.sigma * torch.randn(draws, self.max_atoms, dtype=torch.float64, generator=generator)
        return table.to(dtype=like.dtype, device=like.device)

    def forward(
        self, batch: AtomsBatch, positions: torch.Tensor | None = None, cell: torch.Tensor | None = None
    ):
        from atomnet import keys

        batch, positions, cell = self.in_own_dtype(batch, positions, cell)
        pos = batch.positions if positions is None else positions
        y, hidden = self.molecular_outputs(batch, pos)
        atomic = self.standardize(self.to_atoms(y, batch.molecule), batch.numbers)
        energy = self.aggregate(atomic, batch.molecule, batch.n_molecules)
        out = {keys.ATOMIC_ENERGIES: atomic, keys.ENERGY: energy}
        if len(self.heads):  # every atom sees its molecule's hidden layer (as y above)
            out.update(self.property_outputs(self.to_atoms(hidden, batch.molecule), batch))
        return out

    @torch.no_grad()
    def set_input_statistics(self, batch: AtomsBatch) -> None:
        """Per-entry mean and std of the sorted upper triangles over ``batch`` (training molecules)."""
        f = self.features
        f.input_mean.zero_()
        f.input_std.fill_(1.0)
        x = f.entries(batch, batch.positions, None)
        f.input_mean.copy_(x.mean(0))
        f.input_std.copy_(x.std(0).clamp(min=1e-3))


def _legacy_keys(module, state_dict, prefix, *args) -> None:
    for key in _LEGACY:
        if prefix + key in state_dict:
            state_dict[prefix + "features." + key] = state_dict.pop(prefix + key)
    offset = prefix + "features.offset"
    if prefix + "features.input_mean" in state_dict and offset not in state_dict:
        state_dict[offset] = module.features.offset.clone()
