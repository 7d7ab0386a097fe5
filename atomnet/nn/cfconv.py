"""Continuous-filter convolution (Schütt et al., NeurIPS 2017).

m_i = Σ_j x_j ∘ W(r_ij), with the filter W(r_ij) = Dense(ssp(Dense(e(r_ij)))) · f_c(r_ij) generated from the
radial basis e(r_ij) and the cutoff f_c.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as torch_module

from atomnet.nn import fused, fused_filter
from atomnet.nn.activations import LN2, ShiftedSoftplus, softplus
from atomnet.nn.ops import FilterProduct, GatherNeighbors, NeighborSum
from atomnet.nn.tabulated import TabulatedFilter


class FilterNetwork(nn.Module):
    """W(r_ij) = Dense(ssp(Dense(e_ij))) · f_c(r_ij). Shapes: (n_pairs, n_rbf), (n_pairs,) → (n_pairs, F)."""

    def __init__(self, n_rbf: int, n_filters: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_rbf, n_filters), ShiftedSoftplus(), nn.Linear(n_filters, n_filters)
        )

    def forward(self, rbf: torch.Tensor, fcut: torch.Tensor) -> torch.Tensor:
        return self.raw(rbf) * fcut[:, None]

    def raw(self, rbf: torch.Tensor, layers: tuple | None = None) -> torch.Tensor:
        """Dense(ssp(Dense(e_ij))) before the cutoff, (n_pairs, F).

        Unless a hook watches the three layers (explanation rules attach to them), the same function is computed
        with fewer passes over the (n_pairs, F) activations: the shift of ssp = softplus − ln 2 is folded into the
        second layer's bias, b₂ − ln 2 · Σ_k W₂[:, k]; softplus is :func:`atomnet.nn.activations.softplus`; and
        where the basis needs no gradient (energy training, energies only) the first layer's bias rides in its
        matrix product as a column of ones (timings: ``docs/performance.md``, "Levers measured"). ``layers``: this
        network's :meth:`plain_layers`, where the caller has formed them already.
        """
        layers = layers or self.plain_layers()
        if layers is None:
            return self.net(rbf)
        (w1, b1), (w2, b2) = layers
        # forces need the basis's gradient, of which a padded copy would cost one more slice
        if rbf.requires_grad:
            hidden = softplus(F.linear(rbf, w1, b1))
        else:  # [e_ij, 1] @ [W₁ b₁]ᵀ: no broadcast copy of b₁ before the product, b₁'s gradient inside it
            hidden = softplus(F.linear(F.pad(rbf, (0, 1), value=1.0), torch.cat([w1, b1[:, None]], 1)))
        return F.linear(hidden, w2, b2)

    def plain_layers(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """((W₁, b₁), (W₂, b₂')) with W(e) = softplus(e W₁ᵀ + b₁) W₂ᵀ + b₂', the shift of ssp folded into
        b₂' = b₂ − ln 2 · Σ_k W₂[:, k] (differentiable in b₂ and W₂); ``None`` when the network is not the plain
        Linear → ShiftedSoftplus → Linear with biases, or a hook watches it or its layers."""
        layers = tuple(self.net)
        if [type(m) for m in layers] != [nn.Linear, ShiftedSoftplus, nn.Linear] or _hooked(self, self.net, *layers):
            return None
        first, _, second = layers
        if first.bias is None or second.bias is None:
            return None
        return (first.weight, first.bias), (second.weight, second.bias - LN2 * second.weight.sum(1))


class CFConv(nn.Module):
    """Continuous-filter convolution: gather x_j, multiply by the filter, sum over neighbours j of i.

    Shapes: x (n_atoms, F), filters (n_pairs, F) (or (n_pairs / 2, F) for a mirrored pair list),
    pair_i/pair_j (n_pairs,) → (n_atoms, F).

    On CPU the three steps run as one fused kernel (:mod:`atomnet.nn.fused`: same function, no (n_pairs, F)
    intermediates, about 7× faster forward + backward) unless a hook watches one of the three parts: explanation
    rules attach to them, and then the parts run one by one as modules.
    """

    def __init__(self):
        super().__init__()
        self.gather = GatherNeighbors()
        self.product = FilterProduct()
        self.aggregate = NeighborSum()

    def forward(
        self, x: torch.Tensor, filters: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor
    ) -> torch.Tensor:
        if self._fusable(x, filters, pair_i):
            return fused.fused_cfconv(x, filters, pair_i, pair_j)
        messages = self.product(self.gather(x, pair_j), filters)
        return self.aggregate(messages, pair_i, x.shape[0])

    def _fusable(self, x: torch.Tensor, filters: torch.Tensor, pair_i: torch.Tensor) -> bool:
        n_pairs = pair_i.shape[0]
        if (
            filters.dim() != 2
            or filters.shape[1] != x.shape[1]
            or n_pairs not in (filters.shape[0], 2 * filters.shape[0])
        ):
            return False
        if _hooked(self.gather, self.product, self.aggregate):
            return False
        return fused.usable(x, filters)


def _hooked(*modules: nn.Module) -> bool:
    """Whether a hook (forward or backward, of these modules or a global one) would observe the parts."""
    if (
        torch_module._global_forward_hooks
        or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks
        or torch_module._global_backward_pre_hooks
    ):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in modules
    )


def filter_and_convolve(
    filter_network: nn.Module,
    cfconv: CFConv,
    x: torch.Tensor,
    rbf: torch.Tensor,
    fcut: torch.Tensor,
    pair_i: torch.Tensor,
    pair_j: torch.Tensor,
) -> torch.Tensor:
    """``cfconv(x, filter_network(rbf, fcut), pair_i, pair_j)``, with the cutoff folded into the fused kernel where
    that computes the same: a plain :class:`FilterNetwork` that nothing hooks and a fusable cfconv. Then the kernel
    scales each filter row by f_c(r_ij) as it reads it, so the (h, F) array W ∘ f_c is never formed (nor, in
    energy training, its backward; with forces ∂L/∂f_c comes out of the kernel's filter-gradient pass).

    Where the basis and the cutoff need no gradient (energy training, energy-only inference) or only a first one
    with respect to the geometry (forces without ``create_graph``) the filter network runs inside the kernel too,
    per block of filter rows (:mod:`atomnet.nn.fused_filter`): its hidden layer and the filters never reach memory
    as (h, F) arrays.

    A :class:`~atomnet.nn.tabulated.TabulatedFilter` (fed the distances r by a tabulated copy of the model) goes
    into the kernel as its table: each filter row is interpolated where the kernel needs it, forward and
    backward, so no (n_pairs, F) array is formed at all (:func:`atomnet.nn.fused.fused_table_cfconv`)."""
    if type(filter_network) is TabulatedFilter and _table_fusable(
        filter_network, cfconv, x, rbf, fcut, pair_i
    ):
        table = filter_network.coefficients
        return fused.fused_table_cfconv(x, table, filter_network.spacing, rbf, fcut, pair_i, pair_j)
    if type(filter_network) is FilterNetwork and not _hooked(filter_network):
        layers = filter_network.plain_layers()
        if layers is not None and _filter_fusable(cfconv, x, rbf, fcut, pair_i, layers):
            return fused_filter.fused_filter_cfconv(x, rbf, *layers, fcut, pair_i, pair_j)
        raw = filter_network.raw(rbf, layers)
        if fcut.shape == raw.shape[:1] and cfconv._fusable(x, raw, pair_i):
            return fused.fused_cfconv(x, raw, pair_i, pair_j, scale=fcut.to(raw.dtype))
        return cfconv(x, raw * fcut[:, None], pair_i, pair_j)
    return cfconv(x, filter_network(rbf, fcut), pair_i, pair_j)


def _filter_fusable(
    cfconv: CFConv,
    x: torch.Tensor,
    rbf: torch.Tensor,
    fcut: torch.Tensor,
    pair_i: torch.Tensor,
    layers: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> bool:
    """Whether :func:`atomnet.nn.fused_filter.fused_filter_cfconv` computes this cfconv: the parts of ``cfconv``
    unhooked, filters as wide as x, one or two pairs per filter row, and :func:`atomnet.nn.fused_filter.usable`."""
    (w1, b1), (w2, b2) = layers
    if _hooked(cfconv.gather, cfconv.product, cfconv.aggregate) or x.dim() != 2 or w2.shape[0] != x.shape[1]:
        return False
    if pair_i.shape[0] not in (rbf.shape[0], 2 * rbf.shape[0]):
        return False
    return fused_filter.usable(x, rbf, fcut, w1, b1, w2, b2)  # also the shapes of rbf and fcut


def _table_fusable(
    table: TabulatedFilter,
    cfconv: CFConv,
    x: torch.Tensor,
    r: torch.Tensor,
    fcut: torch.Tensor,
    pair_i: torch.Tensor,
) -> bool:
    coefficients = table.coefficients
    if _hooked(table, cfconv.gather, cfconv.product, cfconv.aggregate) or coefficients.requires_grad:
        return False
    if r.dim() != 1 or fcut.shape != r.shape or coefficients.dim() != 3 or x.dim() != 2:
        return False
    if coefficients.shape[1:] != (4, x.shape[1]) or pair_i.shape[0] not in (r.shape[0], 2 * r.shape[0]):
        return False
    if len({t.dtype for t in (x, r, fcut, coefficients)}) != 1:
        return False
    return fused.usable(x, r, fcut, coefficients)
