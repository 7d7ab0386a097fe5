"""Layer-wise relevance propagation rules, one class per rule, attached to modules by type.

A rule maps the relevance of a module's output, R_out, to the relevance of its inputs, given the inputs and
the output of the forward pass. Every map here is *linear in R_out* once the forward pass is fixed (the
property higher-order explanations build on). Notation for a dense layer z_k = Σ_j x_j w_jk + b_k:
contributions c_jk = x_j w_jk; c⁺ = (x w)⁺ = x⁺w⁺ + x⁻w⁻ and c⁻ = x⁺w⁻ + x⁻w⁺ (inputs of either sign:
shifted-softplus and tanh outputs can be negative); z⁺ = Σ_j c⁺_jk + b⁺_k, z⁻ = Σ_j c⁻_jk + b⁻_k.

References: Bach et al., PLoS ONE 10, e0130140 (2015) (LRP-0, ε, αβ); Montavon et al., Pattern Recognition
65, 211 (2017) (deep Taylor, z⁺); Montavon et al., "Layer-wise relevance propagation: an overview" (2019)
(γ); Montavon, Samek, Müller, Digital Signal Processing 73, 1 (2018) (methods for interpreting DNNs).

Conservation (Σ_j R_j versus Σ_k R_k of one layer) is stated per rule; the relevance a layer does not pass on
(biases, stabilisers) is *absorbed* and booked per module by :mod:`atomnet.explain.propagation`.
"""

from __future__ import annotations

import weakref

import torch

Relevances = tuple[torch.Tensor | None, ...]


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 0 where den == 0 (a neuron with zero output passes no relevance on)."""
    return num / den.masked_fill(den == 0, float("inf"))


def _pos(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=0)


def _neg(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(max=0)


class Rule:
    """Base class. ``relevance(module, inputs, output, R_out)`` returns one relevance per input (``None``
    for inputs that carry none); shapes equal the inputs'."""

    name = "rule"
    #: R_in = R_out exactly (an identity map): nothing can be absorbed, so nothing is booked
    exact = False

    def relevance(self, module, inputs: tuple, output: torch.Tensor, r_out: torch.Tensor) -> Relevances:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


# --- dense layers --------------------------------------------------------------------------------------


class Epsilon(Rule):
    """LRP-ε (Bach et al. 2015): R_j = Σ_k c_jk / (z_k + ε sign(z_k)) · R_k; ε = 0 is LRP-0.

    Conservation: Σ_j R_j = Σ_k (z_k − b_k) / (z_k + ε sign z_k) · R_k, so the bias share b_k R_k / z_k (and
    for ε > 0 the share ε / (z_k ± ε)) is absorbed. With ε = 0 and no bias: exact.
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 0.0):
        self.epsilon = float(epsilon)

    def relevance(self, module, inputs, output, r_out):
        (x,) = inputs
        z = output
        if self.epsilon:
            z = z + self.epsilon * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
        return (x * (safe_divide(r_out, z) @ module.weight),)

    def jacobian(self, module, inputs, output) -> torch.Tensor:
        """dR_in/dR_out row by row, (rows, in, out): x_j w_kj / (z_k + ε sign z_k)."""
        (x,) = inputs
        z = output
        if self.epsilon:
            z = z + self.epsilon * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
        return x[..., :, None] * module.weight.T * safe_divide(torch.ones_like(z), z)[..., None, :]


_SPLITS: dict[int, tuple] = {}  # id(weight) → (weakref, version, side, block): reused across analyses


def _split_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W⁺ | W⁻) side by side, (out, 2 in), and the block matrix [[W⁺, W⁻], [W⁻, W⁺]], (2 out, 2 in).

    Cached per weight tensor and recomputed when it changes (its version counter moves on)."""
    hit = _SPLITS.get(id(w))
    if hit is not None and hit[0]() is w and hit[1] == w._version:
        return hit[2], hit[3]
    wp, wn = _pos(w), _neg(w)
    side = torch.cat([wp, wn], dim=1)
    block = torch.cat([side, torch.cat([wn, wp], dim=1)], dim=0)
    if len(_SPLITS) > 4096:
        _SPLITS.clear()
    _SPLITS[id(w)] = (weakref.ref(w), w._version, side, block)
    return side, block


def _positive_part(x: torch.Tensor, side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x⁺, x⁻, Σ_j c⁺_jk = x⁺W⁺ᵀ + x⁻W⁻ᵀ) in one matrix product."""
    xp, xn = _pos(x), _neg(x)
    return xp, xn, torch.cat([xp, xn], dim=1) @ side.T


class Gamma(Rule):
    """Generalised LRP-γ for inputs of either sign: contributions of the output's sign are favoured,

        z_k ≥ 0:  R_j = Σ_k (c_jk + γ c⁺_jk) / (z_k + γ z⁺_k) · R_k
        z_k < 0:  R_j = Σ_k (c_jk + γ c⁻_jk) / (z_k + γ z⁻_k) · R_k

    (Montavon et al. 2019; for x ≥ 0 and z ≥ 0 this is the usual w + γw⁺ rule). γ = 0 is LRP-0; the
    denominator has the sign of z_k, so it never vanishes unless z_k does. Conservation: the bias part
    (b_k + γ b_k^±) / (z_k + γ z_k^±) of R_k is absorbed; exact without biases.
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25):
        self.gamma = float(gamma)

    def relevance(self, module, inputs, output, r_out):
        (x,) = inputs
        b, g = module.bias, self.gamma
        side, block = _split_weights(module.weight)
        xp, xn, z_plus = _positive_part(x, side)
        z_minus = (output if b is None else output - b) - z_plus  # z = z⁺ + z⁻ without the bias
        if b is not None:
            z_plus, z_minus = z_plus + _pos(b), z_minus + _neg(b)
        positive = output >= 0
        s = safe_divide(r_out, output + g * torch.where(positive, z_plus, z_minus))
        zero = torch.zeros_like(s)
        # [A | B] = [s⁺ W⁺ + s⁻ W⁻ | s⁺ W⁻ + s⁻ W⁺]; s W = A + B
        a, bb = (
            torch.cat([torch.where(positive, s, zero), torch.where(positive, zero, s)], -1) @ block
        ).chunk(2, -1)
        return (x * (a + bb) + g * (xp * a + xn * bb),)

    def jacobian(self, module, inputs, output) -> torch.Tensor:
        """dR_in/dR_out row by row, (rows, in, out): (c_jk + γ c^±_jk) / (z_k + γ z^±_k)."""
        (x,) = inputs
        b, g = module.bias, self.gamma
        w = module.weight
        side, _ = _split_weights(w)
        xp, xn, z_plus = _positive_part(x, side)
        z_minus = (output if b is None else output - b) - z_plus
        if b is not None:
            z_plus, z_minus = z_plus + _pos(b), z_minus + _neg(b)
        positive = output >= 0
        inv = safe_divide(torch.ones_like(output), output + g * torch.where(positive, z_plus, z_minus))
        wp, wn = _pos(w).T, _neg(w).T  # (in, out)
        pos = positive[..., None, :]
        same = torch.where(pos, wp, wn)  # the weights whose contributions have the output's sign, for x ≥ 0
        other = torch.where(pos, wn, wp)  # ... for x < 0
        num = x[..., :, None] * w.T + g * (xp[..., :, None] * same + xn[..., :, None] * other)
        return num * inv[..., None, :]


class AlphaBeta(Rule):
    """LRP-αβ (Bach et al. 2015), α − β = 1: R_j = Σ_k (α c⁺_jk / z⁺_k − β c⁻_jk / z⁻_k) · R_k.

    Conservation: Σ_j R_j = Σ_k (α (z⁺_k − b⁺_k)/z⁺_k − β (z⁻_k − b⁻_k)/z⁻_k) R_k: exact without biases
    (and where both z⁺_k, z⁻_k ≠ 0), otherwise the bias shares are absorbed.
    """

    name = "alphabeta"

    def __init__(self, alpha: float = 1.0, beta: float = 0.0):
        if abs(alpha - beta - 1.0) > 1e-9:
            raise ValueError(f"alpha - beta must be 1, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def relevance(self, module, inputs, output, r_out):
        (x,) = inputs
        b = module.bias
        side, block = _split_weights(module.weight)
        xp, xn, z_plus = _positive_part(x, side)
        z_minus = (output if b is None else output - b) - z_plus
        if b is not None:
            z_plus, z_minus = z_plus + _pos(b), z_minus + _neg(b)
        sp = self.alpha * safe_divide(r_out, z_plus)
        sn = self.beta * safe_divide(r_out, z_minus)
        # [A | B] = [s⁺ W⁺ − s⁻ W⁻ | s⁺ W⁻ − s⁻ W⁺]
        a, bb = (torch.cat([sp, -sn], -1) @ block).chunk(2, -1)
        return (xp * a + xn * bb,)

    def jacobian(self, module, inputs, output) -> torch.Tensor:
        """dR_in/dR_out row by row, (rows, in, out): α c⁺_jk / z⁺_k − β c⁻_jk / z⁻_k."""
        (x,) = inputs
        b, w = module.bias, module.weight
        side, _ = _split_weights(w)
        xp, xn, z_plus = _positive_part(x, side)
        z_minus = (output if b is None else output - b) - z_plus
        if b is not None:
            z_plus, z_minus = z_plus + _pos(b), z_minus + _neg(b)
        wp, wn = _pos(w).T, _neg(w).T
        xp, xn = xp[..., :, None], xn[..., :, None]
        ip = self.alpha * safe_divide(torch.ones_like(z_plus), z_plus)[..., None, :]
        im = self.beta * safe_divide(torch.ones_like(z_minus), z_minus)[..., None, :]
        return (xp * wp + xn * wn) * ip - (xp * wn + xn * wp) * im


class ZPlus(Rule):
    """Deep-Taylor z⁺ rule (Montavon et al. 2017, Pattern Recognition): R_j = Σ_k c⁺_jk / Σ_j c⁺_jk · R_k,
    biases ignored. For inputs of either sign c⁺ = (x w)⁺ (for x ≥ 0 this is x_j w⁺_jk, the paper's rule).

    Conservation: exact for every neuron with Σ_j c⁺_jk > 0; a neuron without positive contribution passes
    nothing on (absorbed).
    """

    name = "zplus"

    def relevance(self, module, inputs, output, r_out):
        (x,) = inputs
        side, _ = _split_weights(module.weight)
        xp, xn, z_plus = _positive_part(x, side)
        a, bb = (safe_divide(r_out, z_plus) @ side).chunk(2, -1)
        return (xp * a + xn * bb,)

    def jacobian(self, module, inputs, output) -> torch.Tensor:
        """dR_in/dR_out row by row, (rows, in, out): c⁺_jk / Σ_j c⁺_jk."""
        (x,) = inputs
        w = module.weight
        side, _ = _split_weights(w)
        xp, xn, z_plus = _positive_part(x, side)
        num = xp[..., :, None] * _pos(w).T + xn[..., :, None] * _neg(w).T
        return num * safe_divide(torch.ones_like(z_plus), z_plus)[..., None, :]


# --- the named operations of atomnet.nn.ops and the output ------------------------------------------


class Pass(Rule):
    """Element-wise activation y = σ(x): R_x = R_y (relevance is passed on unchanged; conserving)."""

    name = "pass"
    exact = True

    def relevance(self, module, inputs, output, r_out):
        return (r_out,) + (None,) * (len(inputs) - 1)


class Gather(Rule):
    """x_j copied to every pair (i, j): R_{x_j} = Σ_{pairs with neighbour j} R_pair (conserving); likewise a
    molecule's value copied to its atoms (MoleculeToAtoms): R_molecule = Σ_{its atoms} R_i."""

    name = "gather"

    def relevance(self, module, inputs, output, r_out):
        x, pair_j = inputs
        return (torch.zeros_like(x).index_add(0, pair_j, r_out), None)


class ConstantFilter(Rule):
    """m_ij = x_j ∘ W(r_ij) with the filter W as a constant weight: R_x = R_m (conserving); the filter gets
    no relevance. Mirrored batches (one filter per unordered pair) need nothing special."""

    name = "constant-filter"
    exact = True

    def relevance(self, module, inputs, output, r_out):
        features, filters = inputs
        if filters.requires_grad:
            raise ValueError(
                "FilterProduct: relevance reached both the features and the filter; LRP treats the filter "
                "W(r_ij) as a constant weight (are positions requiring gradients?)"
            )
        return (r_out, None)


class Proportional(Rule):
    """z-rule of a sum: each summand gets relevance in proportion to its value, R_a = a / z · R_z.

    Used for the neighbour sum (NeighborSum: z_i = Σ_j m_ij), the residual addition (ResidualAdd: x + v)
    and the atom → molecule sum (AtomToMolecule, also its mean: the 1/N cancels). Conserving wherever z ≠ 0.
    """

    name = "proportional"

    def relevance(self, module, inputs, output, r_out):
        from atomnet.nn.ops import AtomToMolecule, NeighborSum, ResidualAdd

        if isinstance(module, ResidualAdd):
            s = safe_divide(r_out, output)
            return tuple(a * s if a.requires_grad else None for a in inputs)
        if isinstance(module, NeighborSum):
            messages, pair_i, _ = inputs
            return (messages * safe_divide(r_out, output)[pair_i], None, None)
        if isinstance(module, AtomToMolecule):
            values, molecule, n_molecules = inputs
            total = values.new_zeros(n_molecules).index_add(0, molecule, values)
            return (values * safe_divide(r_out, total)[molecule], None, None)
        raise TypeError(f"Proportional rule: unsupported module {type(module).__name__}")


class Reference(Rule):
    """Standardize, E_i = y_i·std + (mean + atomref[Z_i]): R_y = y_i·std / E_i · R_i; the constant part
    (mean + atomref[Z_i]) / E_i · R_i is absorbed as the atom's *reference* (with R_i = E_i: exactly
    mean + atomref[Z_i])."""

    name = "reference"

    def relevance(self, module, inputs, output, r_out):
        y, numbers = inputs
        return ((y * module.std) * safe_divide(r_out, output), None)
