"""Radial bases and cutoff functions of interatomic distances (Å).

Denormal guard: far-tail Gaussians exp(−γ(r−μ)²) underflow into subnormal floats, which make CPU math
2–3× slower, and tiny normal values turn subnormal once multiplied by weights. :class:`GaussianRBF` clamps
the exponent at ``-MAX_EXPONENT`` (exp(−30) ≈ 9e−14), changing values by less than 1e−13 (below float32
resolution of the O(1) leading terms). ``scripts/bench_model.py`` measures the effect on the filter network
alone and on whole models, against ``guard_denormals=False`` and torch's global flush-to-zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_EXPONENT = 30.0


class GaussianRBF(nn.Module):
    """e_k(r) = exp(−γ (r − μ_k)²) with centres μ_k evenly spaced on [start, stop].

    Args:
        n_rbf: number of Gaussians K.
        stop: last centre, Å (SchNet: the cutoff).
        start: first centre, Å.
        gamma: width parameter γ in Å⁻². Default: 1 / (2 Δ²) with Δ the centre spacing
            (SchNet paper: Δ = 0.1 Å, γ = 10 Å⁻²; DTNN: σ = 0.2 Å, i.e. γ = 1/(2σ²) = 12.5 Å⁻²).
        guard_denormals: clamp the exponent so no subnormal float is produced.

    Shapes: r (n_pairs,) Å → (n_pairs, n_rbf).
    """

    def __init__(
        self,
        n_rbf: int,
        stop: float,
        start: float = 0.0,
        gamma: float | None = None,
        guard_denormals: bool = True,
    ):
        super().__init__()
        centres = torch.linspace(start, stop, n_rbf)
        # from the arguments, not the tensor: the module can then be built on the "meta" device (shape checks of
        # untrusted model files before any allocation, atomnet.models.registry)
        spacing = (float(stop) - float(start)) / (n_rbf - 1) if n_rbf > 1 else 1.0
        self.gamma = float(gamma) if gamma is not None else 1.0 / (2.0 * spacing**2)
        self.guard_denormals = guard_denormals
        self.register_buffer("centres", centres)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        exponent = -self.gamma * (r[:, None] - self.centres) ** 2
        if self.guard_denormals:  # in place: the product's backward does not need its output
            exponent = exponent.clamp_(min=-MAX_EXPONENT)
        return torch.exp(exponent)


class CosineCutoff(nn.Module):
    """f_c(r) = ½ (cos(π r / r_c) + 1) for r < r_c, else 0. Shapes: (n_pairs,) → (n_pairs,)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        f = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return f * (r < self.cutoff).to(r.dtype)


class PolynomialCutoff(nn.Module):
    """Smooth polynomial envelope (Klicpera et al. 2020, p = 6): value and first two derivatives vanish at
    r_c. f(x) = 1 − (p+1)(p+2)/2 xᵖ + p(p+2) xᵖ⁺¹ − p(p+1)/2 xᵖ⁺², x = r / r_c. Shapes as CosineCutoff."""

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.cutoff
        f = (
            1.0
            - 0.5 * (p + 1) * (p + 2) * x**p
            + p * (p + 2) * x ** (p + 1)
            - 0.5 * p * (p + 1) * x ** (p + 2)
        )
        return f * (x < 1.0).to(r.dtype)


CUTOFFS = {"cosine": CosineCutoff, "polynomial": PolynomialCutoff}


def make_cutoff(name: str, cutoff: float) -> nn.Module:
    """Cutoff function by name (``"cosine"`` or ``"polynomial"``)."""
    try:
        return CUTOFFS[name](cutoff)
    except KeyError:
        raise ValueError(f"unknown cutoff function {name!r}; choose from {sorted(CUTOFFS)}") from None
