"""PatternNet and PatternAttribution (Kindermans et al., ICLR 2018, arXiv 1705.05598).

For a dense layer y = Wx (+ b) the input is modelled as signal plus distractor, x = s + d, where the signal
s = a y is what the output varies with, and the weights W must also cancel the distractor. The *pattern* a of
output unit k is learned from data:

- linear estimator: a_k = cov(x, y_k) / (w_kᵀ cov(x, y_k)) (y without the bias);
- two-component estimator (for rectifying units): the same with the expectations taken separately over the
  samples where z_k = w_kᵀx + b_k > 0 and where z_k ≤ 0, a_k⁺ = (E₊[x y_k] − E₊[x] E[y_k]) / w_kᵀ(…), and
  a_k⁻ likewise; the backward pass uses a⁺ where z_k > 0 and a⁻ elsewhere.

Backward pass: the prediction is propagated back like a gradient (activations multiply by their derivative,
sums and copies as in backpropagation), but every dense layer uses the patterns instead of its weights:

- ``patternnet``: r_in = Aᵀ r_out — the signal estimate in input space (units of the input); per atom the L2
  norm over the atom's features (or over the channels of each Coulomb-matrix entry, split between i and j).
  Only its direction is meaningful: magnitudes multiply through the layers (iNNvestigate rescales them);
- ``patternattribution``: r_in = (W ⊙ Aᵀ)ᵀ r_out — the attribution; per atom the sum. Not conserving.

The backward pass starts from 1 per molecule, as the gradient does (iNNvestigate starts from the output
value, a class score): the attribution is per unit of energy, it does not scale with a molecule's total
energy, and atoms or molecules far apart are explained independently. Multiply by E for iNNvestigate's
convention.

Patterns are learned once per analyzer from training structures: ``create_analyzer("patternattribution",
pot).fit(structures)`` (iNNvestigate's ``analyzer.fit``). The reference implementation is iNNvestigate's
``PatternComputer`` / ``PatternNet`` (Keras); this module follows its formulas in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from atomnet import keys
from atomnet.errors import ExplanationError
from atomnet.explain.methods import Attribution, Method, register, require
from atomnet.explain.propagation import Composite, attach, to_atoms, to_entries
from atomnet.explain.rules import Rule, safe_divide
from atomnet.nn.activations import ShiftedSoftplus
from atomnet.nn.ops import (
    AtomToMolecule,
    FilterProduct,
    GatherNeighbors,
    MoleculeToAtoms,
    NeighborSum,
    ResidualAdd,
)
from atomnet.nn.output import Standardize

ESTIMATORS = ("linear", "two-component")
#: module types a pattern method backpropagates through like a gradient (every non-dense op of atomnet models)
BACKPROPAGATED = (
    ShiftedSoftplus,
    nn.Tanh,
    GatherNeighbors,
    MoleculeToAtoms,
    FilterProduct,
    NeighborSum,
    ResidualAdd,
    AtomToMolecule,
    Standardize,
)


@dataclass
class LinearStatistics:
    """Running sums over the rows a dense layer saw (float64): x (in,), y = Wx (out,), x yᵀ (in, out), and
    over the rows with z = Wx + b > 0 per output unit: counts, Σ x, Σ x y."""

    n: int = 0
    sx: torch.Tensor | None = None
    sy: torch.Tensor | None = None
    sxy: torch.Tensor | None = None
    n_pos: torch.Tensor | None = None
    sx_pos: torch.Tensor | None = None
    sxy_pos: torch.Tensor | None = None

    def add(self, x: torch.Tensor, y: torch.Tensor, positive: torch.Tensor) -> None:
        """Rows x (r, in), y (r, out) = x Wᵀ, positive (r, out) = (z > 0)."""
        x, y, p = x.double(), y.double(), positive.double()
        if self.sx is None:
            n_in, n_out = x.shape[1], y.shape[1]
            self.sx, self.sy, self.n_pos = x.new_zeros(n_in), x.new_zeros(n_out), x.new_zeros(n_out)
            self.sxy, self.sx_pos, self.sxy_pos = (x.new_zeros(n_in, n_out) for _ in range(3))
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxy += x.T @ y
        self.n_pos += p.sum(0)
        self.sx_pos += x.T @ p
        self.sxy_pos += x.T @ (y * p)


def linear_pattern(stats: LinearStatistics, weight: torch.Tensor) -> torch.Tensor:
    """a_k = cov(x, y_k) / (w_kᵀ cov(x, y_k)), (in, out); weight (out, in)."""
    mean_x, mean_y = stats.sx / stats.n, stats.sy / stats.n
    cov = stats.sxy / stats.n - mean_x[:, None] * mean_y[None, :]
    return safe_divide(cov, (weight.double() * cov.T).sum(1)[None, :])


def two_component_patterns(
    stats: LinearStatistics, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a⁺, a⁻), each (in, out): E₊/E₋ over the rows with z > 0 / z ≤ 0, E[y] over all rows (Kindermans et
    al. 2018, eq. for the two-component estimator; iNNvestigate's ReLU patterns)."""
    w = weight.double()
    mean_y = stats.sy / stats.n
    out = []
    for n, sx, sxy in (
        (stats.n_pos, stats.sx_pos, stats.sxy_pos),
        (stats.n - stats.n_pos, stats.sx[:, None] - stats.sx_pos, stats.sxy - stats.sxy_pos),
    ):
        count = n.clamp(min=1)[None, :]
        cov = sxy / count - sx / count * mean_y[None, :]
        out.append(safe_divide(cov, (w * cov.T).sum(1)[None, :]))
    return out[0], out[1]


def dense_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The dense layers relevance passes through (not the filter networks of the distance), by name."""
    constant = tuple(f + "." for f in getattr(model, "distance_filters", list)())
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not (n + ".").startswith(constant)
    }


@torch.no_grad()
def fit_patterns(model: nn.Module, batches, estimator: str = "linear") -> dict[str, tuple]:
    """Patterns of every dense layer from forward passes over ``batches`` (an iterable of AtomsBatch).

    Returns {layer name: (a⁺, a⁻)} with a⁺ = a⁻ for the linear estimator, each (in, out) float64."""
    if estimator not in ESTIMATORS:
        raise ExplanationError(f"pattern estimator must be one of {ESTIMATORS}, got {estimator!r}")
    layers = dense_layers(model)
    stats = {name: LinearStatistics() for name in layers}

    def hook(name):
        def record(module, args, output):
            x = args[0].reshape(-1, module.in_features)
            y = x @ module.weight.T
            stats[name].add(x, y, output.reshape(-1, module.out_features) > 0)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in handles:
            h.remove()
    patterns = {}
    for name, layer in layers.items():
        s = stats[name]
        if s.n == 0:
            continue
        if estimator == "linear":
            a = linear_pattern(s, layer.weight)
            patterns[name] = (a, a)
        else:
            patterns[name] = two_component_patterns(s, layer.weight)
    return patterns


class PatternRule(Rule):
    """Dense layer in the backward pass of PatternNet (r_in = Aᵀ r_out) or PatternAttribution
    (r_in = (W ⊙ Aᵀ)ᵀ r_out), with a⁺ where z > 0 and a⁻ elsewhere. Linear in r_out."""

    name = "pattern"

    def __init__(self, patterns: tuple[torch.Tensor, torch.Tensor], attribution: bool):
        self.patterns, self.attribution = patterns, attribution

    def relevance(self, module, inputs, output, r_out):
        a_pos, a_neg = (a.to(r_out.dtype).T for a in self.patterns)  # (out, in)
        if self.attribution:
            a_pos, a_neg = a_pos * module.weight, a_neg * module.weight
        if a_pos is a_neg or torch.equal(a_pos, a_neg):
            return (r_out @ a_pos,)
        positive = (output > 0).to(r_out.dtype)
        return ((r_out * positive) @ a_pos + (r_out * (1 - positive)) @ a_neg,)


class GradientRule(Rule):
    """Any other module in the backward pass of a pattern method: the vector–Jacobian product (ordinary
    backpropagation), r_in = (∂ out / ∂ in)ᵀ r_out."""

    name = "gradient"

    def relevance(self, module, inputs, output, r_out):
        carried = [k for k, a in enumerate(inputs) if torch.is_tensor(a) and a.requires_grad]
        with torch.enable_grad():
            fresh = tuple(
                a.detach().requires_grad_(True) if k in carried else a for k, a in enumerate(inputs)
            )
            out = module.forward(*fresh)  # not module(...): its hooks would run the rule again
            grads = torch.autograd.grad(out, [fresh[k] for k in carried], r_out, allow_unused=True)
        result: list = [None] * len(inputs)
        for k, g in zip(carried, grads, strict=True):
            result[k] = torch.zeros_like(inputs[k]) if g is None else g
        return tuple(result)


class PatternMethod(Method):
    attribution = True
    conserving = False
    needs_fit = True
    defaults = {"estimator": "linear"}

    def check(self, params):
        e = params["estimator"]
        require(e in ESTIMATORS, self.name, f"estimator must be one of {ESTIMATORS}, got {e!r}")

    def fit(self, model, batches, params) -> dict:
        return fit_patterns(model, batches, params["estimator"])

    def attribute(self, model, batch, params):
        patterns = params.get("fitted")
        if not patterns:
            raise ExplanationError(
                f"method {self.name!r} needs patterns learned from training structures: call "
                "analyzer.fit(structures) first (command line: --fit FILE)"
            )
        missing = sorted(set(dense_layers(model)) - set(patterns))
        if missing:
            raise ExplanationError(f"method {self.name!r}: no pattern for dense layer {missing[0]!r} (refit)")
        comp = Composite(
            by_type=[(BACKPROPAGATED, GradientRule())],
            by_name=[(n, nn.Linear, PatternRule(p, self.attribution)) for n, p in patterns.items()],
        )
        with torch.enable_grad(), attach(model, comp, batch) as state:
            energy = model(batch)[keys.ENERGY]
            grads = torch.autograd.grad(energy.sum(), state.leaves)  # start from 1 per molecule (docstring)
        reduce = "sum" if self.attribution else "norm"
        relevance, _ = to_atoms(state, grads, reduce)
        entries = to_entries(state, [g.detach() for g in grads], reduce)
        return Attribution(energy.detach(), relevance.detach(), None, entries=entries)


@register
class PatternAttribution(PatternMethod):
    """PatternAttribution: backpropagation with W ⊙ A in every dense layer (Kindermans et al. 2018)."""

    name = "patternattribution"
    units = "eV per eV of the prediction"


@register
class PatternNet(PatternMethod):
    """PatternNet: the signal estimate, backpropagation with the patterns A in every dense layer."""

    name = "patternnet"
    units = "input units"
    attribution = False
