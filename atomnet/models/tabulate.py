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

import torch
from torch import nn

from atomnet.errors import AtomNetError, ConfigError
from atomnet.models.base import AtomisticModel
from atomnet.nn.cfconv import FilterNetwork
from atomnet.nn.tabulated import DEFAULT_SPACING, TabulatedFilter


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
    table = copy.deepcopy(model).requires_grad_(False)
    for name in names:
        module = exact.get_submodule(name)

        def filter_of_distance(r: torch.Tensor, module: nn.Module = module) -> torch.Tensor:
            if isinstance(module, FilterNetwork):  # W(r) without the cutoff: the call site passes f_c
                return module(exact.rbf(r), torch.ones_like(r))
            return module(exact.rbf(r))

        tabulated = TabulatedFilter.from_function(
            filter_of_distance, model.cutoff, spacing, weight.dtype, weight.device
        )
        parent, _, attribute = name.rpartition(".")
        setattr(table.get_submodule(parent), attribute, tabulated)
    table.rbf = nn.Identity()  # radial() now hands the filters the distances: (r, f_c(r))
    return table
