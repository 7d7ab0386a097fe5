"""Attaching relevance rules to a model from outside, by module type (the zennit composite idea).

While :func:`attach` is active, every module with a rule returns its usual output, but the backward pass
through it computes the rule's input relevance instead of the gradient (the "gradient trick": relevance
travels where gradients would). Modules without a rule are watched: if relevance reaches one, analysis stops
with an error naming it, never a silent gradient. Relevance starts at the model's *input layer* — the element
embedding (:class:`~atomnet.nn.output.AtomEmbedding`, one row per atom) or a fixed-size input vector
(:class:`~atomnet.nn.coulomb.FeatureInput`, one row per molecule, e.g. Coulomb-matrix entries) — whose output
is replaced by a leaf tensor; after ``torch.autograd.grad(energy, leaf, energy)`` the leaf's gradient holds the
relevance of every input feature. :func:`to_atoms` maps it to atoms: embedding features are summed per atom;
an entry of a feature vector belonging to two atoms (M_ij) is split half and half between i and j, a diagonal
entry (M_ii) goes to atom i, and padding entries belong to no atom (booked as ``padding``). The model is
plain torch before and after: hooks are removed on exit.

The relevance a module does not pass on (bias shares, stabilisers, the reference energies of Standardize) is
booked per module name and molecule in :attr:`Propagation.absorbed` (eV), so that
Σ relevance + Σ absorbed = energy can be checked, not assumed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from atomnet.data.batch import AtomsBatch
from atomnet.errors import ExplanationError
from atomnet.explain.rules import Rule
from atomnet.nn.coulomb import FeatureInput
from atomnet.nn.ops import AtomToMolecule, GatherNeighbors, MoleculeToAtoms, NeighborSum
from atomnet.nn.output import AtomEmbedding

INPUTS = (AtomEmbedding, FeatureInput)  #: the module types relevance starts at

ROWS = "_atomnet_rows"  #: tensor attribute: what the rows of a relevance-carrying tensor are


class _RuleFunction(torch.autograd.Function):
    """Identity in the forward pass; the backward pass calls the rule instead of the module's gradient."""

    @staticmethod
    def forward(ctx, backward: Callable, output: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.rule_backward = backward
        return output.view_as(output)

    @staticmethod
    def backward(ctx, r_out: torch.Tensor):
        return (None, None, *ctx.rule_backward(r_out))


@dataclass
class Composite:
    """Which rule each module gets: the first matching ``(name prefix, type, rule)`` of ``by_name``, else the
    first ``(type, rule)`` of ``by_type`` the module is an instance of, else none."""

    by_type: list[tuple[type, Rule]]
    by_name: list[tuple[str, type, Rule]] = field(default_factory=list)

    def rule_for(self, name: str, module: nn.Module) -> Rule | None:
        for prefix, kind, rule in self.by_name:
            if (name == prefix or name.startswith(prefix + ".")) and isinstance(module, kind):
                return rule
        for kind, rule in self.by_type:
            if isinstance(module, kind):
                return rule
        return None


@dataclass
class TapeEntry:
    """One module call on the relevance path: its rule, inputs (detached) and output, and the identities of
    the tensors it consumed (``inputs[k]`` for k in ``carry``) and produced, to chain calls together."""

    name: str
    module: nn.Module
    rule: Rule
    inputs: tuple
    output: torch.Tensor
    carry: list[int]
    in_ids: list[int]
    out_id: int
    keep: tuple  # the consumed and produced tensors, alive so their ids stay unique
    cache: dict = field(default_factory=dict)  # e.g. the rule's Jacobian, reused across replays


@dataclass
class Propagation:
    """State of one attached analysis: the embedding leaves and the absorbed relevance per module (eV)."""

    batch: AtomsBatch
    leaves: list[torch.Tensor] = field(default_factory=list)
    #: per leaf: None for an embedding (rows = atoms), else the FeatureInput's (owners, channels, offset)
    owners: list[tuple[torch.Tensor, int, torch.Tensor] | None] = field(default_factory=list)
    absorbed: dict[str, torch.Tensor] = field(default_factory=dict)
    #: with ``attach(..., record=True)``: every rule call in forward order (for walks)
    tape: list[TapeEntry] | None = None

    def row_molecule(self, t: torch.Tensor) -> torch.Tensor:
        """The molecule of every row of ``t`` (atoms, pairs or molecules, by tag or else by row count)."""
        b = self.batch
        rows = getattr(t, ROWS, None)
        n = t.shape[0]
        if rows is None:  # untagged (after an inline op such as squeeze): by row count, atoms first
            counts = (
                ("atoms", b.numbers.shape[0]),
                ("pairs", b.pair_i.shape[0]),
                ("molecules", b.n_molecules),
            )
            rows = next((kind for kind, count in counts if count == n), None)
        if rows == "atoms" and n == b.numbers.shape[0]:
            return b.molecule
        if rows == "pairs" and n == b.pair_i.shape[0]:
            return b.molecule[b.pair_i]
        if rows == "molecules" and n == b.n_molecules:
            return torch.arange(n, device=t.device)
        raise ExplanationError(f"cannot tell which molecule the {n} rows of a relevance tensor belong to")

    def per_molecule(self, t: torch.Tensor) -> torch.Tensor:
        if self.batch.n_molecules == 1:
            return t.sum().reshape(1)
        sums = t.reshape(t.shape[0], -1).sum(1)
        return sums.new_zeros(self.batch.n_molecules).index_add(0, self.row_molecule(t), sums)

    def book(self, name: str, r_out: torch.Tensor, r_in: list[torch.Tensor]) -> None:
        lost = self.per_molecule(r_out)
        for r in r_in:
            lost = lost - self.per_molecule(r)
        self.absorbed[name] = self.absorbed.get(name, 0) + lost.detach()


def _output_rows(module: nn.Module, inputs: list[torch.Tensor]) -> str | None:
    if isinstance(module, GatherNeighbors):
        return "pairs"
    if isinstance(module, (NeighborSum, AtomEmbedding, MoleculeToAtoms)):
        return "atoms"
    if isinstance(module, AtomToMolecule):
        return "molecules"
    return getattr(inputs[0], ROWS, None) if inputs else None


def _embeddings(model: nn.Module) -> list[nn.Module]:
    found = [m for m in model.modules() if isinstance(m, INPUTS)]
    if not found:
        raise ExplanationError(
            f"{type(model).__name__} has neither an AtomEmbedding nor a FeatureInput: no inputs to explain"
        )
    return found


def feature_scale(owners: torch.Tensor, channels: int, atom_scale: torch.Tensor, batch: AtomsBatch):
    """Per-atom scales (n_atoms, 1) as scales of a feature vector's entries (n_molecules, d · channels): an
    entry takes the smallest scale of its atoms (a ghost atom, scale 0, zeroes every entry it is in; a common
    scale α stays α); padding entries take the largest scale of the molecule's atoms."""
    s = atom_scale.reshape(-1)
    inf = torch.full(owners.shape, torch.inf, dtype=s.dtype, device=s.device)
    per_entry = torch.where(owners >= 0, s[owners.clamp(min=0)], inf).min(dim=2).values
    top = s.new_full((batch.n_molecules,), -torch.inf).scatter_reduce(0, batch.molecule, s, "amax")
    per_entry = torch.where(torch.isinf(per_entry), top[:, None].expand_as(per_entry), per_entry)
    return per_entry.repeat_interleave(channels, dim=1)


def to_entries(
    state: Propagation,
    values: list[torch.Tensor] | torch.Tensor,
    reduce: str = "sum",
    rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Leaf-shaped ``values`` per entry of a feature vector: ((n_molecules, d), owners (n_molecules, d, 2)),
    summed (or the L2 norm) over each entry's channels; ``None`` unless the model has exactly one feature
    leaf (embeddings have no entries; several random sortings have entries that do not line up)."""
    values = [values] if torch.is_tensor(values) else list(values)
    if len(state.owners) != 1 or state.owners[0] is None:
        return None
    n_mol = state.batch.n_molecules if rows is None else rows
    return _per_entry(values[0], state.owners[0], n_mol, reduce)


def _per_entry(
    values: torch.Tensor, own: tuple, n_mol: int, reduce: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values per entry (n_mol, d), owners (n_mol, d, 2)) of the first ``n_mol`` rows of a feature leaf."""
    owners, channels = own[0][:n_mol], own[1]
    v = values[:n_mol].reshape(n_mol, owners.shape[1], channels)
    return (v.sum(dim=2) if reduce == "sum" else torch.linalg.vector_norm(v, dim=2)), owners


def to_atoms(
    state: Propagation,
    values: list[torch.Tensor] | torch.Tensor,
    reduce: str = "sum",
    rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf-shaped ``values`` (one tensor per leaf, e.g. relevance or gradient × input) as per-atom values.

    ``reduce``: ``"sum"`` over the features of an atom or the channels of an entry (conserving), or
    ``"norm"`` (the L2 norm, for gradients). ``rows``: use only the first ``rows`` molecules (the first copy of
    a repeated batch). Returns (per atom (n_atoms,), padding (n_molecules,): what belongs to no atom).
    """
    b = state.batch
    values = [values] if torch.is_tensor(values) else list(values)
    n_mol = b.n_molecules if rows is None else rows
    n_atoms = int(b.n_atoms[:n_mol].sum())
    atoms, padding = None, None
    for v, own in zip(values, state.owners, strict=True):
        if own is None:
            v = v[:n_atoms]
            a = v.sum(dim=1) if reduce == "sum" else torch.linalg.vector_norm(v, dim=1)
            p = a.new_zeros(n_mol)
        else:
            e, owners = _per_entry(v, own, n_mol, reduce)
            first, second = owners[..., 0], owners[..., 1]
            half = torch.where(second >= 0, 0.5, 1.0).to(e.dtype)
            a = e.new_zeros(n_atoms)
            a = a.index_add(0, first[first >= 0], (e * half)[first >= 0])
            a = a.index_add(0, second[second >= 0], (e * half)[second >= 0])
            p = torch.where(first < 0, e, torch.zeros_like(e)).sum(dim=1)
        atoms = a if atoms is None else atoms + a
        padding = p if padding is None else padding + p
    return atoms, padding


@contextlib.contextmanager
def embedding_leaf(
    model: nn.Module, batch: AtomsBatch, scale: float | torch.Tensor | None = None, about_offset: bool = False
) -> Iterator[Propagation]:
    """Replace the input layer's output x⁰ by a leaf tensor that requires gradients: x⁰ itself, or scale·x⁰ if
    ``scale`` is given (a number, or per atom (n_atoms, 1): a point α·x⁰ on the path of integrated gradients,
    or a mask; a feature vector's entries are scaled by :func:`feature_scale`). ``about_offset``: scale about
    the input layer's constant ``offset`` (a FeatureInput's shift) instead of zero, offset + s·(x⁰ − offset). The leaf is ``state.leaves[-1]``
    after the forward pass. Parameters stop requiring gradients meanwhile (restored on exit)."""
    state = Propagation(batch)
    params = [p for p in model.parameters() if p.requires_grad]

    def start(module, args, output):
        own = (module.owners, module.channels, module.offset) if isinstance(module, FeatureInput) else None
        s = scale
        if own is not None and torch.is_tensor(s) and s.numel() > 1:
            s = feature_scale(own[0], own[1], s, batch)
        if s is None:
            leaf = output
        elif about_offset and own is not None:
            leaf = module.offset + s * (output - module.offset)
        else:
            leaf = output * s
        leaf = leaf.detach().requires_grad_(True)
        setattr(leaf, ROWS, "atoms" if own is None else "molecules")
        state.leaves.append(leaf)
        state.owners.append(own)
        return leaf

    handles = [m.register_forward_hook(start) for m in _embeddings(model)]
    try:
        for p in params:  # relevance (or the gradient) flows from the leaf only; restored below
            p.requires_grad_(False)
        yield state
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def attach(
    model: nn.Module, composite: Composite, batch: AtomsBatch, record: bool = False
) -> Iterator[Propagation]:
    """Attach ``composite``'s rules to ``model`` for one forward/backward pass over ``batch``
    (``record``: also keep a :class:`TapeEntry` per rule call in ``state.tape``)."""
    handles = []
    # the filters of the distance (e.g. SchNet's filter networks) see no relevance: not hooked
    constant = tuple(f + "." for f in getattr(model, "distance_filters", list)())
    with embedding_leaf(model, batch) as state:
        if record:
            state.tape = []
        try:
            for name, module in model.named_modules():
                if isinstance(module, INPUTS) or (name + ".").startswith(constant):
                    continue
                rule = composite.rule_for(name, module)
                if rule is not None:
                    handles.append(module.register_forward_hook(_rule_hook(name or "model", rule, state)))
                elif not any(True for _ in module.children()):
                    handles.append(module.register_forward_hook(_watch_hook(name)))
            yield state
        finally:
            for h in handles:
                h.remove()


def _rule_hook(name: str, rule: Rule, state: Propagation):
    def hook(module, args, output):
        carry = [k for k, a in enumerate(args) if torch.is_tensor(a) and a.requires_grad]
        if not carry:
            return None
        plain = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
        for k in carry:  # rules may ask which inputs carry relevance
            plain[k].requires_grad_(True)
        out = output.detach()
        tagged = state.batch.n_molecules > 1  # row tags only matter for booking several molecules
        tags = [getattr(args[k], ROWS, None) for k in carry] if tagged else []

        def backward(r_out: torch.Tensor) -> list[torch.Tensor]:
            relevance = rule.relevance(module, plain, out, r_out)
            r_in = [relevance[k] for k in carry]
            for r, tag in zip(r_in, tags, strict=False):
                if tag is not None:
                    setattr(r, ROWS, tag)
            if not rule.exact:
                if tagged:
                    setattr(r_out, ROWS, getattr(new, ROWS, None))
                state.book(name, r_out, r_in)
            return r_in

        new = _RuleFunction.apply(backward, out, *(args[k] for k in carry))
        if state.tape is not None:
            consumed = [args[k] for k in carry]
            state.tape.append(
                TapeEntry(
                    name,
                    module,
                    rule,
                    plain,
                    out,
                    carry,
                    [id(a) for a in consumed],
                    id(new),
                    (*consumed, new),
                )
            )
        if tagged:
            rows = _output_rows(module, [args[k] for k in carry])
            if rows is not None:
                setattr(new, ROWS, rows)
        return new

    return hook


def _watch_hook(name: str):
    def hook(module, args, output):
        carries = any(torch.is_tensor(a) and a.requires_grad for a in args)
        if carries and torch.is_tensor(output) and output.requires_grad:
            raise ExplanationError(
                f"module {name!r} ({type(module).__name__}) is on the relevance path but no explanation rule "
                "is defined for its type; add one to the composite (atomnet.explain.propagation.Composite)"
            )

    return hook
