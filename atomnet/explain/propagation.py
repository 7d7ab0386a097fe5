"""Attaching relevance rules to a model from outside, by module type (the zennit composite idea).

While :func:`attach` is active, every module with a rule returns its usual output, but the backward pass
through it computes the rule's input relevance instead of the gradient (the "gradient trick": relevance
travels where gradients would). Modules without a rule are watched: if relevance reaches one, analysis stops
with an error naming it, never a silent gradient. Relevance starts at the element embedding, whose output is
replaced by a leaf tensor; after ``torch.autograd.grad(energy, leaf, energy)`` the leaf's gradient holds the
relevance of every embedding feature. The model is plain torch before and after: hooks are removed on exit.

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
from atomnet.nn.ops import AtomToMolecule, GatherNeighbors, NeighborSum
from atomnet.nn.output import AtomEmbedding

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
    if isinstance(module, (NeighborSum, AtomEmbedding)):
        return "atoms"
    if isinstance(module, AtomToMolecule):
        return "molecules"
    return getattr(inputs[0], ROWS, None) if inputs else None


def _embeddings(model: nn.Module) -> list[nn.Module]:
    found = [m for m in model.modules() if isinstance(m, AtomEmbedding)]
    if not found:
        raise ExplanationError(f"{type(model).__name__} has no AtomEmbedding: no atom inputs to explain")
    return found


@contextlib.contextmanager
def embedding_leaf(
    model: nn.Module, batch: AtomsBatch, scale: float | torch.Tensor | None = None
) -> Iterator[Propagation]:
    """Replace the embedding output x⁰ by a leaf tensor that requires gradients: x⁰ itself, or scale·x⁰ if
    ``scale`` is given (a point α·x⁰ on the path of integrated gradients). The leaf is ``state.leaves[-1]``
    after the forward pass. Parameters stop requiring gradients meanwhile (restored on exit)."""
    state = Propagation(batch)
    params = [p for p in model.parameters() if p.requires_grad]

    def start(module, args, output):
        leaf = (output if scale is None else output * scale).detach().requires_grad_(True)
        setattr(leaf, ROWS, "atoms")
        state.leaves.append(leaf)
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
                if isinstance(module, AtomEmbedding) or (name + ".").startswith(constant):
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
