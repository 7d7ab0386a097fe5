"""Layer-wise relevance propagation of the predicted energy onto atoms (Bach et al. 2015; Montavon et al. 2017).

Relevance starts as the prediction, R = E, and travels back layer by layer:

- AtomToMolecule and the neighbour sum / residual addition split it in proportion to their inputs (z-rule);
- Standardize E_i = y_i·std + mean + atomref[Z_i] keeps the constant part as the atom's *reference*;
- dense layers (``nn.Linear``) use the method's rule (:mod:`atomnet.explain.rules`: 0, ε, γ, αβ, z⁺);
- element-wise activations (shifted softplus, tanh) pass it on;
- through cfconv the filter W(r_ij) is a constant weight: relevance flows to the neighbour features x_j and
  is gathered back onto atom j;
- it ends on the embedding features x_i⁰ and is summed over them: relevance_i = Σ_f R(x⁰_if);
- for a network on a fixed-size input (CMNet) it ends on the input vector (Coulomb-matrix entries, each
  expanded into channels): an entry's relevance (summed over its channels) is split half and half between
  atoms i and j for M_ij, goes to atom i for M_ii, and padding entries' relevance is booked as ``padding``
  (:func:`~atomnet.explain.propagation.to_atoms`); the molecule → atoms copy (MoleculeToAtoms) sums back.

Conservation: Σ_i relevance_i + unexplained = E, where ``unexplained`` = Σ over modules of the absorbed
relevance (bias shares, ε, and the reference energies), reported per module in ``Explanation.absorbed``.
LRP-0 of a network without biases and zero references conserves exactly; for a piecewise-linear
bias-free network LRP-0 equals gradient × input.
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet import keys
from atomnet.explain.methods import Attribution, Method, register, require
from atomnet.explain.propagation import Composite, attach, to_atoms, to_entries
from atomnet.explain.rules import (
    AlphaBeta,
    ConstantFilter,
    Epsilon,
    Gamma,
    Gather,
    Pass,
    Proportional,
    Reference,
    Rule,
    ZPlus,
)
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


def composite(dense: Rule, by_name: list[tuple[str, type, Rule]] | None = None) -> Composite:
    """The rules of every module type atomnet models are built from, with ``dense`` for ``nn.Linear``
    (and per-name overrides ``(prefix, type, rule)`` taking precedence)."""
    return Composite(
        by_type=[
            (nn.Linear, dense),
            ((ShiftedSoftplus, nn.Tanh), Pass()),
            ((GatherNeighbors, MoleculeToAtoms), Gather()),
            (FilterProduct, ConstantFilter()),
            ((NeighborSum, ResidualAdd, AtomToMolecule), Proportional()),
            (Standardize, Reference()),
        ],
        by_name=list(by_name or []),
    )


def propagate(model, batch, comp: Composite) -> Attribution:
    """One forward pass with ``comp``'s rules attached and one relevance pass from R = E."""
    with torch.enable_grad(), attach(model, comp, batch) as state:
        energy = model(batch)[keys.ENERGY]
        grads = torch.autograd.grad(energy, state.leaves, grad_outputs=energy.detach())
    relevance, padding = to_atoms(state, grads)
    absorbed = {k: v.to(energy.dtype) for k, v in state.absorbed.items()}
    if any(own is not None for own in state.owners):
        absorbed["padding"] = padding.detach().to(energy.dtype)
    unexplained = sum(absorbed.values(), torch.zeros_like(energy))
    return Attribution(energy.detach(), relevance, unexplained.detach(), absorbed, to_entries(state, grads))


class LRPMethod(Method):
    """An LRP method: :meth:`composite` builds the rules from the parameters."""

    def composite(self, params: dict) -> Composite:
        raise NotImplementedError

    def attribute(self, model, batch, params):
        return propagate(model, batch, self.composite(params))


@register
class LRP0(LRPMethod):
    """LRP-0: R_j = Σ_k x_j w_jk / z_k · R_k in every dense layer."""

    name = "lrp-0"
    defaults: dict = {}

    def composite(self, params):
        return composite(Epsilon(0.0))


@register
class LRPEpsilon(LRPMethod):
    """LRP-ε: R_j = Σ_k x_j w_jk / (z_k + ε sign z_k) · R_k; ε absorbs weak, contradictory contributions."""

    name = "lrp-epsilon"
    defaults = {"epsilon": 0.01}

    def check(self, params):
        require(params["epsilon"] >= 0, self.name, f"epsilon must be >= 0, got {params['epsilon']}")

    def composite(self, params):
        return composite(Epsilon(params["epsilon"]))


@register
class LRPGamma(LRPMethod):
    """Generalised LRP-γ (contributions of the output's sign favoured by γ; inputs of either sign)."""

    name = "lrp-gamma"
    defaults = {"gamma": 0.25}

    def check(self, params):
        require(params["gamma"] >= 0, self.name, f"gamma must be >= 0, got {params['gamma']}")

    def composite(self, params):
        return composite(Gamma(params["gamma"]))


@register
class LRPAlphaBeta(LRPMethod):
    """LRP-αβ with α − β = 1 (α1β0 by default)."""

    name = "lrp-alphabeta"
    defaults = {"alpha": 1.0, "beta": 0.0}

    def check(self, params):
        a, b = params["alpha"], params["beta"]
        require(abs(a - b - 1.0) < 1e-9, self.name, f"alpha - beta must be 1, got alpha={a}, beta={b}")
        require(b >= 0, self.name, f"beta must be >= 0, got {b}")

    def composite(self, params):
        return composite(AlphaBeta(params["alpha"], params["beta"]))


@register
class DeepTaylor(LRPMethod):
    """Deep-Taylor z⁺ rule in every dense layer (biases ignored)."""

    name = "deep-taylor"
    defaults: dict = {}

    def composite(self, params):
        return composite(ZPlus())


@register
class LRPComposite(LRPMethod):
    """γ in the interaction blocks, ε in the per-atom output network, LRP-0 elsewhere (a composite in the
    sense of zennit/Montavon et al. 2019: lower layers γ, upper layers ε)."""

    name = "lrp-composite"
    defaults = {"gamma": 0.25, "epsilon": 0.01}

    def check(self, params):
        require(params["gamma"] >= 0, self.name, f"gamma must be >= 0, got {params['gamma']}")
        require(params["epsilon"] >= 0, self.name, f"epsilon must be >= 0, got {params['epsilon']}")

    def composite(self, params):
        return composite(
            Epsilon(0.0),
            by_name=[
                ("interactions", nn.Linear, Gamma(params["gamma"])),
                ("output", nn.Linear, Epsilon(params["epsilon"])),
            ],
        )
