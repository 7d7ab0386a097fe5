"""A copy of a model whose filter networks are tables: faster MD, same predictions to float32 resolution.

:func:`tabulate_filters` rewrites a model (as zennit's canonizers do, but into a copy): every module
named by the model's ``distance_filters()`` (SchNet's filter networks, DTNN's distance factors) becomes a
:class:`~atomnet.nn.tabulated.TabulatedFilter` of the function of r it computes (for a FilterNetwork,
W(r) = FilterNetwork(e(r), 1)), and the radial basis e becomes the identity, so the filters receive the
distances r instead of their Gaussian expansion. The original model is untouched; tabulated copies are for
inference (MD, screening), not for training or saving.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from atomnet.errors import AtomNetError, ConfigError
from atomnet.models.base import AtomisticModel
from atomnet.nn import fused
from atomnet.nn.cfconv import FilterNetwork
from atomnet.nn.tabulated import (
    DEFAULT_SPACING,
    TabulatedFilter,
    check_points,
    relative_deviation,
    values_and_slopes,
)


def tabulate_filters(model: AtomisticModel, spacing: float = DEFAULT_SPACING) -> AtomisticModel:
    """A frozen copy of ``model`` (same dtype and device) with tabulated filters on [0, cutoff].

    Args:
        model: a model whose :meth:`~atomnet.models.base.AtomisticModel.distance_filters` name the modules
            fed by the radial basis (SchNet: the filter networks; DTNN: the distance factors W_df).
        spacing: grid spacing h in Å (:mod:`atomnet.nn.tabulated` discusses the error).
    """
    if not spacing > 0 or spacing == float("inf"):  # also refuses NaN
        raise ConfigError(f"tabulation spacing must be > 0 Å and finite, got {spacing}")
    names = model.distance_filters()
    if not names or not isinstance(getattr(model, "rbf", None), nn.Module):
        raise AtomNetError(f"{type(model).__name__} has no filters of the distance to tabulate")
    weight = next(model.parameters())
    exact = copy.deepcopy(model).to(torch.float64)
    rounded = copy.deepcopy(model).requires_grad_(False)  # the exact filters in the model's own dtype
    table = copy.deepcopy(model).requires_grad_(False)
    for name in names:
        tabulated = TabulatedFilter.from_function(
            _filter_of_distance(exact, name), model.cutoff, spacing, weight.dtype, weight.device
        )
        r = check_points(tabulated.coefficients.shape[0], tabulated.spacing, weight.device)
        in_own_dtype = _filter_of_distance(rounded, name)
        tabulated.round_off = relative_deviation(
            values_and_slopes(lambda r, f=in_own_dtype: f(r.to(weight.dtype)), r),
            values_and_slopes(_filter_of_distance(exact, name), r),
        )
        parent, _, attribute = name.rpartition(".")
        setattr(table.get_submodule(parent), attribute, tabulated)
    table.rbf = nn.Identity()  # radial() now hands the filters the distances: (r, f_c(r))
    return table


def _filter_of_distance(model: AtomisticModel, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """r (n,) Å → the filter ``name`` of ``model`` at r, (n, F); for a FilterNetwork W(r) without the cutoff
    (the call site passes f_c)."""
    module = model.get_submodule(name)

    def filter_of_distance(r: torch.Tensor) -> torch.Tensor:
        if isinstance(module, FilterNetwork):
            return module(model.rbf(r), torch.ones_like(r))
        return module(model.rbf(r))

    return filter_of_distance


def round_off_ratio(model: AtomisticModel) -> float | None:
    """Largest ratio, over the tables of a :func:`tabulate_filters` copy, of a table's interpolation error
    (:attr:`~atomnet.nn.tabulated.TabulatedFilter.relative_error`) to the round-off of the exact filter in the
    model's dtype (:attr:`~atomnet.nn.tabulated.TabulatedFilter.round_off`): at most 1 when every table is
    below the exact model's own round-off. ``None`` when no table carries both measurements.
    """
    tables = [m for m in model.modules() if isinstance(m, TabulatedFilter)]
    if not tables or any(t.relative_error is None or t.round_off is None for t in tables):
        return None
    return max(t.relative_error / t.round_off if t.round_off > 0 else math.inf for t in tables)


#: finest grid :func:`tabulate_if_below_round_off` tries, Å
FINEST_SPACING = 0.001


def tabulate_if_below_round_off(
    model: AtomisticModel, compiled: bool = False, spacing: float = DEFAULT_SPACING
) -> tuple[AtomisticModel, str]:
    """The calculator's ``tabulate="auto"``: a :func:`tabulate_filters` copy of ``model`` where that is faster
    and changes nothing beyond float round-off, else ``model`` itself; with the reason, one line.

    Tabulates when (1) the filters are SchNet filter networks (DTNN's one-layer distance factor is cheaper
    than the look-up, ``scripts/bench_md.py --model dtnn``), (2) the evaluation is compiled or the fused
    table kernel (:func:`atomnet.nn.fused.fused_table_cfconv`) runs on the model's device and dtype (the
    eager look-up alone is slower than the exact filters), (3) the model is not float64 (no table reaches
    float64 round-off), and (4) every table's interpolation error of W and dW/dr is at most the round-off of
    the exact filter in the model's dtype (:func:`round_off_ratio` ≤ 1). If ``spacing`` misses (4), one finer
    grid is tried, shrunk by the error's h³ scaling with a factor 2 to spare, down to
    :data:`FINEST_SPACING`.
    """
    names = model.distance_filters()
    if not names or not isinstance(getattr(model, "rbf", None), nn.Module):
        return model, "no filters of the distance to tabulate"
    if not all(type(model.get_submodule(n)) is FilterNetwork for n in names):
        return model, "exact filters: not SchNet filter networks (a table look-up is slower than DTNN's)"
    weight = next(model.parameters())
    if weight.dtype == torch.float64:
        return model, "exact filters: float64 evaluation (no table reaches float64 round-off)"
    if not compiled and not fused.usable(weight.detach()):
        return model, "exact filters: the fused table kernel does not run here (the eager look-up is slower)"
    precision = str(weight.dtype).removeprefix("torch.")
    ratio = math.inf
    for _ in range(2):
        table = tabulate_filters(model, spacing)
        ratio = round_off_ratio(table)
        if ratio is not None and ratio <= 1.0:
            h = table.get_submodule(names[0]).spacing
            return table, f"tabulated filters, {h:.4g} Å grid: error ≤ {ratio:.2f} × {precision} round-off"
        finer = max(FINEST_SPACING, spacing * (0.5 / ratio) ** (1 / 3)) if ratio else FINEST_SPACING
        if finer >= spacing:
            break
        spacing = finer
    return (
        model,
        f"exact filters: the tables' error is {ratio:.1f} × the exact filters' {precision} round-off",
    )
