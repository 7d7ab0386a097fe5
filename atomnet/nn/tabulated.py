"""Filters as cubic Hermite splines of the distance: the filter network evaluated once, on a grid.

A SchNet filter W(r) = Dense(ssp(Dense(e(r)))) is a smooth function of the distance r alone, (n_pairs,) →
(n_pairs, F); so is DTNN's distance factor W_df e(r) + b. Evaluating the network costs two matrix products
per pair and interaction, forward and backward — about half the time of an MD step of a large system. :class:`TabulatedFilter` stores W and dW/dr
(exact, from forward-mode autodiff in float64) at nodes r_k = k h and interpolates each segment with the
cubic Hermite polynomial through the two end values and slopes, so W is continuously differentiable and the
forces stay continuous. The interpolation error is ≈ h⁴/384 · max|W''''|; for SchNet's Gaussians
(γ ≈ 48 Å⁻² at 50 centres on [0, 5] Å) and the default h = 0.005 Å it is below float32 resolution.
The cutoff function is not tabulated: it multiplies the interpolated W exactly, as in
:class:`~atomnet.nn.cfconv.FilterNetwork`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

#: default grid spacing h, Å
DEFAULT_SPACING = 0.005


def hermite_coefficients(values: torch.Tensor, slopes: torch.Tensor, spacing: float) -> torch.Tensor:
    """Polynomial coefficients of the cubic Hermite segments between consecutive nodes.

    Args:
        values: W(r_k), (n_nodes, F); slopes: dW/dr(r_k), (n_nodes, F) per Å; spacing: h, Å.

    Returns:
        (n_nodes − 1, 4, F): c with W(r_k + t h) = c0 + c1 t + c2 t² + c3 t³ for t in [0, 1].
    """
    v0, v1 = values[:-1], values[1:]
    d0, d1 = slopes[:-1] * spacing, slopes[1:] * spacing
    return torch.stack([v0, d0, 3.0 * (v1 - v0) - 2.0 * d0 - d1, 2.0 * (v0 - v1) + d0 + d1], dim=1)


class TabulatedFilter(nn.Module):
    """W(r) · f_c(r) from a table: a drop-in for :class:`~atomnet.nn.cfconv.FilterNetwork` fed distances
    (called without ``fcut``: W(r) alone, a drop-in for a layer of the radial basis such as DTNN's W_df).

    Args:
        coefficients: (n_segments, 4, F) Hermite coefficients (:func:`hermite_coefficients`) on [0, n h].
        spacing: h, Å.

    Shapes: r (n_pairs,) Å, fcut (n_pairs,) → (n_pairs, F). Beyond the last node W keeps its last value
    (the cutoff function is zero there).
    """

    def __init__(self, coefficients: torch.Tensor, spacing: float):
        super().__init__()
        self.register_buffer("coefficients", coefficients)
        self.spacing = float(spacing)
        #: interpolation error, max(max |ΔW| / max |W|, max |ΔW'| / max |W'|) against the tabulated function
        #: (float64, :meth:`from_function`); ``None`` for a table built from coefficients alone
        self.relative_error: float | None = None
        #: the same deviation of the exact filter evaluated in the table's dtype (its round-off), where
        #: :func:`atomnet.models.tabulate_filters` measured it; ``None`` otherwise
        self.round_off: float | None = None

    @classmethod
    def from_function(
        cls,
        filter_of_distance: Callable[[torch.Tensor], torch.Tensor],
        r_max: float,
        spacing: float = DEFAULT_SPACING,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> TabulatedFilter:
        """Tabulate ``filter_of_distance`` ((n,) float64 Å → (n, F)) on [0, r_max] with about ``spacing``;
        the table gets ``dtype`` and lives on ``device`` (where ``filter_of_distance`` is evaluated).

        The spacing is shrunk so that a node falls on ``r_max``; slopes come from ``torch.func.jvp``.
        The table's :attr:`relative_error` is its :func:`relative_deviation` from ``filter_of_distance``
        (float64) at the :func:`check_points`, where the cubic Hermite error of each segment peaks.
        """
        n_segments = max(1, math.ceil(r_max / spacing))
        h = r_max / n_segments
        r = torch.linspace(0.0, r_max, n_segments + 1, dtype=torch.float64, device=device)
        coefficients = hermite_coefficients(*values_and_slopes(filter_of_distance, r), h)
        table = cls(coefficients.to(dtype), h)
        table.relative_error = _relative_error(filter_of_distance, coefficients, h)
        return table

    def forward(self, r: torch.Tensor, fcut: torch.Tensor | None = None) -> torch.Tensor:
        x = r * (1.0 / self.spacing)
        node = x.detach().floor().clamp_(0, self.coefficients.shape[0] - 1)
        t = (x - node).clamp(max=1.0)[:, None]  # gradient flows through x: dt/dr = 1/h
        c0, c1, c2, c3 = self.coefficients[node.long()].unbind(1)  # 4 × (n_pairs, F)
        w = torch.addcmul(c0, t, torch.addcmul(c1, t, torch.addcmul(c2, t, c3)))  # Horner
        return w if fcut is None else w * fcut[:, None]


def check_points(n_segments: int, spacing: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(3 n_segments,) float64 distances, Å, where the cubic Hermite error of each segment peaks: t = 1/2 for W
    (error ∝ t²(1 − t)²), t = (3 ± √3)/6 for dW/dr (error ∝ t(1 − t)(1 − 2t))."""
    left = torch.arange(n_segments, dtype=torch.float64, device=device) * spacing
    t = torch.tensor(
        [0.5, (3 - math.sqrt(3)) / 6, (3 + math.sqrt(3)) / 6], dtype=torch.float64, device=device
    )
    return (left[:, None] + t * spacing).reshape(-1)


def values_and_slopes(
    filter_of_distance: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """W(r) and dW/dr (n, F) of a filter of the distance, by forward-mode autodiff, without a graph."""
    with torch.no_grad():
        return torch.func.jvp(filter_of_distance, (r,), (torch.ones_like(r),))


def relative_deviation(
    approximate: tuple[torch.Tensor, torch.Tensor], exact: tuple[torch.Tensor, torch.Tensor]
) -> float:
    """max(max |W̃ − W| / max |W|, max |W̃' − W'| / max |W'|) of (values, slopes) pairs, in float64."""
    deviations = []
    for a, e in zip(approximate, exact, strict=True):
        a, e = a.to(torch.float64), e.to(torch.float64)
        deviations.append(float((a - e).abs().max() / e.abs().max().clamp_min(1e-300)))
    return max(deviations)


def _relative_error(
    filter_of_distance: Callable[[torch.Tensor], torch.Tensor], coefficients: torch.Tensor, spacing: float
) -> float:
    """:func:`relative_deviation` of the Hermite segments (float64 coefficients: the interpolation error
    alone) from ``filter_of_distance`` at the :func:`check_points`."""
    r = check_points(coefficients.shape[0], spacing, coefficients.device)
    t = (r / spacing - torch.arange(coefficients.shape[0], device=r.device).repeat_interleave(3))[:, None]
    c0, c1, c2, c3 = coefficients.repeat_interleave(3, dim=0).unbind(1)
    table = (c0 + t * (c1 + t * (c2 + t * c3)), (c1 + t * (2.0 * c2 + 3.0 * t * c3)) / spacing)
    return relative_deviation(table, values_and_slopes(filter_of_distance, r))
