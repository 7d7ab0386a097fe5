"""SchNet's filter network and cfconv in one CPU kernel, per block of filter rows (Schütt et al., NeurIPS 2017).

m_i = Σ_j x_j ∘ W(e_ij) f_c(r_ij),  W(e) = softplus(e W₁ᵀ + b₁) W₂ᵀ + b₂'   (b₂' = b₂ − ln 2 · Σ_k W₂[:, k])

is the cfconv of :class:`~atomnet.nn.cfconv.FilterNetwork` (Dense → ssp → Dense, the shift of ssp folded into the
second bias) followed by :class:`~atomnet.nn.cfconv.CFConv`. The plain path (and :mod:`atomnet.nn.fused`, which
fuses only the convolution) forms the hidden layer, its softplus and the filters as (h, F) arrays, h = one row per
unordered pair, and the backward forms four more: about fifteen passes over arrays of h × F floats (8 MB for a
batch of 100 QM9 molecules), bound by memory bandwidth on a CPU. ``kernels/filter_conv.cpp`` computes the same
per block of 256 rows whose hidden layer and filters stay in the core's cache: the products per block by the
BLAS torch links, softplus and its derivative in the same pass. The backward recomputes the hidden layer of
each block (the first layer, K = n_rbf inputs, is the cheapest product) and reads the filters kept from the
forward; its gradients with G_q = f_c(r_q) Σ_{p: p mod h = q} g_{i_p} ∘ x_{j_p} (upstream g (n_atoms, F)):

- ∂L/∂W₂ = Gᵀ S, ∂L/∂b₂' = Σ_q G_q, with S = softplus(A), A = e W₁ᵀ + b₁;
- ∂L/∂A = (G W₂) ∘ σ(A); ∂L/∂W₁ = (∂L/∂A)ᵀ e, ∂L/∂b₁ = Σ_q ∂L/∂A_q;
- ∂L/∂x_j = Σ_{p: j_p = j} g_{i_p} ∘ W_{p mod h} f_c(r_{p mod h}) (the convolution with i and j swapped).

For forces without ``create_graph`` (inference, MD: :func:`atomnet.potential.energy_and_forces` runs the model
inside :func:`geometry_gradients_only`) the same backward also gives ∂L/∂e = (∂L/∂A) W₁ and
∂L/∂f_c(r_q) = Σ_f Gʳ_qf W_qf with Gʳ_q = Σ_{p: p mod h = q} g_{i_p} ∘ x_{j_p} (G before the cutoff), the weights'
gradients skipped. Outside that promise the path is taken
only where the basis and the cutoff need no gradient (energy training, energy-only inference): force training's
create_graph backward keeps :mod:`atomnet.nn.fused`, because a custom autograd function cannot tell at forward
time whether its backward will be differentiated. A backward that must itself be differentiable (``create_graph``,
batched gradients) recomputes the block with the plain torch ops and differentiates those.

Agreement: float64 to round-off (≈1e-15) against the plain ops, forward and every gradient; float32 to ≈1e-6
relative (softplus and its derivative by branch-free polynomial exp and log1p, relative error ≈1e-7;
``tests/test_fused_filter.py``). Timings: ``docs/performance.md``, lever "fused filter network". Built like the
other kernels (:mod:`atomnet.native`); ``ATOMNET_FUSED=0`` turns it off with them, ``ATOMNET_FUSED_FILTER=0``
alone; a failed build (e.g. a torch whose BLAS does not export ``sgemm_``) leaves the :mod:`atomnet.nn.fused` path.

Forces stay energy-conserving, F = −∂E/∂R: the backward is the exact gradient of the forward (gradcheck), not an
approximation of it. Explanation rules hook the layers, and then the module path runs instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn import functional as F

from atomnet.native import NativeExtension
from atomnet.nn import fused
from atomnet.nn.output import wrapped

SOURCE = Path(__file__).with_name("kernels") / "filter_conv.cpp"
EXTENSION = NativeExtension(
    "filter_conv", SOURCE, "fused filter-network kernel", switch="ATOMNET_FUSED_FILTER"
)


_GEOMETRY_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("atomnet_geometry_only", default=False)


@contextlib.contextmanager
def geometry_gradients_only() -> Iterator[None]:
    """Promise that the graph built inside is differentiated once, with respect to the geometry only (forces and
    stress without ``create_graph``: :func:`atomnet.potential.energy_and_forces`). Inside it the kernel also takes
    a basis and cutoff that need a gradient, and treats the filter network's weights as constants."""
    token = _GEOMETRY_ONLY.set(True)
    try:
        yield
    finally:
        _GEOMETRY_ONLY.reset(token)


def usable(x: torch.Tensor, rbf: torch.Tensor, fcut: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether this kernel computes the cfconv: the conditions of :func:`atomnet.nn.fused.usable`, one dtype, the
    kernel built, and a basis and cutoff that need no gradient, unless inside :func:`geometry_gradients_only`."""
    if not EXTENSION.enabled() or ((rbf.requires_grad or fcut.requires_grad) and not _GEOMETRY_ONLY.get()):
        return False
    if rbf.dim() != 2 or fcut.shape != rbf.shape[:1]:
        return False
    if len({t.dtype for t in (x, rbf, fcut, *weights)}) != 1 or not fused.usable(x, rbf, fcut):
        return False
    if any(t.device.type != "cpu" or wrapped(t) for t in weights):
        return False
    return EXTENSION.load() is not None


def _plain(x, rbf, w1, b1, w2, b2, scale, pair_i, pair_j):
    """The same function as torch ops (the differentiable backward): the filters, then
    :func:`atomnet.nn.fused._plain_conv`."""
    filters = F.linear(F.softplus(F.linear(rbf, w1, b1)), w2, b2)
    return fused._plain_conv(x, filters, scale, pair_i, pair_j)


class _FilterConv(torch.autograd.Function):
    """out_a = Σ_{p: i_p = a} x_{j_p} ∘ W(e_{p mod h}) c_{p mod h} with W the two-layer filter network."""

    @staticmethod
    def forward(ctx, x, rbf, w1, b1, w2, b2, scale, pair_i, pair_j, keep):
        out, filters = EXTENSION.state["module"].filter_conv(
            x, rbf, w1, b1, w2, b2, scale, pair_i, pair_j, keep
        )
        ctx.save_for_backward(x, rbf, w1, b1, w2, b2, scale, pair_i, pair_j, filters)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, rbf, w1, b1, w2, b2, scale, pair_i, pair_j, filters = ctx.saved_tensors
        need = ctx.needs_input_grad[:7]  # x, rbf, w1, b1, w2, b2, scale
        if torch.is_grad_enabled() or wrapped(grad):  # a backward that is differentiated again
            inputs = (x, rbf, w1, b1, w2, b2, scale)
            wanted = [t for t, n in zip(inputs, need, strict=True) if n]
            with torch.enable_grad():
                out = _plain(x, rbf, w1, b1, w2, b2, scale, pair_i, pair_j)
                found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            return (*(next(found) if n else None for n in need), None, None, None)
        gx, gw1, gb1, gw2, gb2, grbf, gscale = EXTENSION.state["module"].filter_conv_backward(
            grad,
            x,
            rbf,
            w1,
            b1,
            w2,
            filters,
            scale,
            pair_i,
            pair_j,
            need[0],
            any(need[2:6]),
            need[1] or need[6],
        )
        grads = (gx, grbf, gw1, gb1, gw2, gb2, gscale)
        return (*(g if n else None for g, n in zip(grads, need, strict=True)), None, None, None)


def fused_filter_cfconv(
    x: torch.Tensor,
    rbf: torch.Tensor,
    first: tuple[torch.Tensor, torch.Tensor],
    second: tuple[torch.Tensor, torch.Tensor],
    fcut: torch.Tensor,
    pair_i: torch.Tensor,
    pair_j: torch.Tensor,
) -> torch.Tensor:
    """m_i = Σ_j x_j ∘ (softplus(e_ij W₁ᵀ + b₁) W₂ᵀ + b₂) f_c(r_ij) (call :func:`usable` first).

    Shapes: x (n_atoms, F), rbf (h, K), first = (W₁ (H, K), b₁ (H,)), second = (W₂ (F, H), b₂ (F,)), fcut (h,),
    pair_i/pair_j (n_pairs,) int64 with n_pairs = h or 2h (mirrored) → (n_atoms, F). Differentiable in x, rbf,
    fcut and the four weights (inside :func:`geometry_gradients_only` the weights are constants).
    """
    (w1, b1), (w2, b2) = first, second
    if _GEOMETRY_ONLY.get():  # the one backward asks for the geometry's gradient: the weights are constants
        w1, b1, w2, b2 = (t.detach() for t in (w1, b1, w2, b2))
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (x, rbf, fcut, w1, b1, w2, b2))
    return _FilterConv.apply(
        x.contiguous(),
        rbf.contiguous(),
        w1.contiguous(),
        b1.contiguous(),
        w2.contiguous(),
        b2.contiguous(),
        fcut.contiguous(),
        pair_i.contiguous(),
        pair_j.contiguous(),
        keep,
    )
