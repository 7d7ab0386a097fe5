"""Fused continuous-filter convolution on CPU: m_i = Σ_j x_j ∘ W_ij without (n_pairs × F) intermediates.

The plain path of :class:`~atomnet.nn.cfconv.CFConv` gathers x_j into an (n_pairs, F) array, multiplies it by the
filters into a second one and sums that onto the centres with ``index_add``; its backward makes three more
(n_pairs, F) passes. On CPU these passes are bound by memory bandwidth and took more time than the matrix
products of a SchNet training step (``scripts/bench_levers.py --profile``, ``docs/performance.md``). The two
kernels in ``kernels/cfconv.cpp`` read each filter row once and accumulate straight into the atoms:

- ``conv(x, W, c; i, j)``: out_a = Σ_{p: i_p = a} x_{j_p} ∘ W_{p mod h} c_{p mod h}   (n_atoms, F)
- ``outer(a, b, c; i, j)``: G_q = c_q Σ_{p: p mod h = q} a_{i_p} ∘ b_{j_p}            (h, F)

with h the number of filter rows (h = n_pairs, or n_pairs / 2 for a mirrored pair list whose pair p + h reverses
pair p: one filter per unordered pair). They are closed under differentiation, which is what force training
(a double backward) needs:

- ∂L/∂x = conv(g, W, c; j, i), ∂L/∂W = outer(g, x, c; i, j) for out = conv(x, W, c; i, j), upstream gradient g;
- ∂L/∂a = conv(b, Γ, c; i, j), ∂L/∂b = conv(a, Γ, c; j, i) for G = outer(a, b, c; i, j), upstream gradient Γ.

c (h,) is an optional per-row scale, 1 when absent: SchNet's cutoff f_c(r_ij) folded into the kernels
(:func:`atomnet.nn.cfconv.filter_and_convolve`), so the (h, F) product W ∘ f_c is never formed. The formulas
above treat c as a constant; when c needs a gradient (forces) ∂L/∂c_q = Σ_f W_qf outer(g, x)_qf comes with
∂L/∂W from one kernel pass, in a plain backward and in the create_graph backward of force training (there as
:class:`_OuterGrads`, whose own backward is one more pass over the filter rows and two conv calls).

With tabulated filters (:func:`atomnet.models.tabulate_filters`) ``table_conv`` / ``table_grads`` go one step
further: the filter row W(r_q) is interpolated from the cubic Hermite table inside the kernel, where it is used,
so neither the forward nor the backward of inference forms any (n_pairs, F) array (:class:`_TableConv`).

Both are tested against the plain path and by ``torch.autograd.gradcheck`` / ``gradgradcheck`` in float64
(``tests/test_fused_cfconv.py``). The sums run in a different order than ``index_add``, so float32 results agree
with the plain path to round-off (≈1e-7 relative), not bit for bit.

The kernels are compiled once per machine with ``torch.utils.cpp_extension`` (g++ and ninja, ~1 min) into
``$ATOMNET_KERNEL_DIR`` (default ``~/.cache/atomnet/kernels``) by :mod:`atomnet.native`; ``python -m atomnet.native``
builds them ahead. A failed build is recorded there and the plain path is used, with one warning.
``ATOMNET_FUSED=0`` turns them off. They are used only on CPU, for plain tensors (not under ``torch.compile``, ``torch.export`` or tracing), and not
while something hooks the parts of a CFConv (explanations attach their rules to those parts).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import torch

from atomnet.native import NativeExtension
from atomnet.nn.ops import FilterProduct, GatherNeighbors, NeighborSum
from atomnet.nn.output import wrapped

SOURCE = Path(__file__).with_name("kernels") / "cfconv.cpp"
EXTENSION = NativeExtension("cfconv", SOURCE, "fused cfconv kernel", switch="ATOMNET_FUSED")


def kernel_dir() -> Path:
    """Where the compiled kernels live (:meth:`atomnet.native.NativeExtension.kernel_dir`)."""
    return EXTENSION.kernel_dir()


def enabled() -> bool:
    """Whether the fused path may be used at all (``ATOMNET_FUSED`` unset or not ``0``)."""
    return EXTENSION.enabled()


def load(verbose: bool = False) -> ModuleType | None:
    """The compiled kernels (built on first use), or ``None`` when disabled or the build failed."""
    return EXTENSION.load(verbose)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether these tensors may go through the fused kernels: CPU, float32/float64, plain ``torch.Tensor``
    (not fake, functional or other subclasses), and no compiler or tracer running."""
    if not enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    for t in tensors:
        if type(t) is not torch.Tensor or t.device.type != "cpu":
            return False
    if wrapped(*tensors):
        return False
    return tensors[0].dtype in (torch.float32, torch.float64) and load() is not None


_GATHER, _PRODUCT, _SUM = GatherNeighbors(), FilterProduct(), NeighborSum()
_NONE = torch.empty(0)  # "no scale"


def _scaled(filters: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return filters * scale[:, None] if scale.numel() else filters


def _plain_conv(x, filters, scale, pair_i, pair_j):
    """conv(x, W, c; i, j) as CFConv's plain path (the same ops; used under vmap)."""
    return _SUM(_PRODUCT(_GATHER(x, pair_j), _scaled(filters, scale)), pair_i, x.shape[0])


def _plain_outer(a, b, scale, pair_i, pair_j, h):
    """outer(a, b, c; i, j) as torch ops (the same function; used under vmap)."""
    product = a.index_select(0, pair_i) * b.index_select(0, pair_j)
    return _scaled(product[:h] + product[h:] if pair_i.shape[0] == 2 * h else product, scale)


def _conv(x, filters, scale, pair_i, pair_j):
    if wrapped(x, filters):
        return _plain_conv(x, filters, scale, pair_i, pair_j)
    return _Conv.apply(x, filters, scale, pair_i, pair_j)


def _outer(a, b, scale, pair_i, pair_j, h):
    if wrapped(a, b):
        return _plain_outer(a, b, scale, pair_i, pair_j, h)
    return _Outer.apply(a, b, scale, pair_i, pair_j, h)


class _Conv(torch.autograd.Function):
    """out = conv(x, W, c; i, j), out_a = Σ_{p: i_p = a} x_{j_p} ∘ W_{p mod h} c_{p mod h}."""

    @staticmethod
    def forward(ctx, x, filters, scale, pair_i, pair_j):
        ctx.save_for_backward(x, filters, scale, pair_i, pair_j)
        return EXTENSION.state["module"].conv(x, filters, scale, pair_i, pair_j, x.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, filters, scale, pair_i, pair_j = ctx.saved_tensors
        if ctx.needs_input_grad[2]:
            return _scale_backward(ctx, grad, x, filters, scale, pair_i, pair_j)
        grad_x = grad_filters = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv(grad, filters, scale, pair_j, pair_i)
        if ctx.needs_input_grad[1]:
            grad_filters = _outer(grad, x, scale, pair_i, pair_j, filters.shape[0])
        return grad_x, grad_filters, None, None, None


def _scale_backward(ctx, grad, x, filters, scale, pair_i, pair_j):
    """Gradients of conv(x, W, c) when c needs one (forces: c = f_c(r_ij)). With G = outer(g, x):
    ∂L/∂x = conv(g, W, c; j, i), ∂L/∂W = c ∘ G, ∂L/∂c_q = Σ_f G_qf W_qf. A backward that must itself be
    differentiable (force training's create_graph, batched gradients) forms them from differentiable ops; a plain
    one (inference) gets ∂L/∂W and ∂L/∂c from one kernel pass over the pairs."""
    h = filters.shape[0]
    grad_x = None
    if wrapped(grad, x, filters, scale):  # batched gradients (Hessian rows, vmap): plain differentiable ops
        if ctx.needs_input_grad[0]:
            grad_x = _conv(grad, filters * scale[:, None], _NONE.to(filters.dtype), pair_j, pair_i)
        g_w = _outer(grad, x, _NONE.to(filters.dtype), pair_i, pair_j, h)
        grad_filters = g_w * scale[:, None] if ctx.needs_input_grad[1] else None
        return grad_x, grad_filters, (g_w * filters).sum(1), None, None
    if ctx.needs_input_grad[0]:
        grad_x = _conv(grad, filters, scale, pair_j, pair_i)
    if torch.is_grad_enabled():  # force training's create_graph: a map whose own backward is one kernel pass
        grad_filters, grad_scale = _OuterGrads.apply(grad, x, scale, filters, pair_i, pair_j)
    else:
        grad_filters, grad_scale, _ = EXTENSION.state["module"].outer_grads(
            grad, x, scale, filters, pair_i, pair_j, False
        )
    return grad_x, grad_filters if ctx.needs_input_grad[1] else None, grad_scale, None, None


class _OuterGrads(torch.autograd.Function):
    """(∂L/∂W, ∂L/∂c) = (c ∘ G, Σ_f G ∘ W) with G = outer(g, x; i, j), as a function of (g, x, c, W): the
    create_graph backward of conv(x, W, c) when c needs a gradient (force training).

    Its backward, for upstream gradients (Γ_W, γ_c): H = Γ_W ∘ c + γ_c ∘ W is the gradient with respect to G, so
    ∂/∂g = conv(x, H; i, j) and ∂/∂x = conv(g, H; j, i) (as for :class:`_Outer`); ∂/∂W = γ_c ∘ G and
    ∂/∂c = Σ_f Γ_W ∘ G. H, ∂/∂W and ∂/∂c come from one kernel pass over the (h, F) rows (G is kept from the
    forward), where the same map as differentiable torch ops took about ten (three products in the forward, each
    with two more and a sum in the backward). A backward that must itself be differentiable (third derivatives)
    uses those torch ops.
    """

    @staticmethod
    def forward(ctx, g, x, scale, filters, pair_i, pair_j):
        grad_filters, grad_scale, kept = EXTENSION.state["module"].outer_grads(
            g, x, scale, filters, pair_i, pair_j, True
        )
        ctx.save_for_backward(g, x, scale, filters, kept, pair_i, pair_j)
        return grad_filters, grad_scale

    @staticmethod
    def backward(ctx, grad_w, grad_c):
        g, x, scale, filters, kept, pair_i, pair_j = ctx.saved_tensors
        none = _NONE.to(filters.dtype)
        if torch.is_grad_enabled() or wrapped(grad_w, grad_c):
            kept = _outer(g, x, none, pair_i, pair_j, filters.shape[0])  # differentiable in g and x
            grad_kept = grad_w * scale[:, None] + grad_c[:, None] * filters
            d_filters, d_scale = grad_c[:, None] * kept, (grad_w * kept).sum(1)
        else:
            grad_kept, d_filters, d_scale = EXTENSION.state["module"].outer_grads_backward(
                grad_w, grad_c, scale, filters, kept
            )
        d_g = _conv(x, grad_kept, none, pair_i, pair_j) if ctx.needs_input_grad[0] else None
        d_x = _conv(g, grad_kept, none, pair_j, pair_i) if ctx.needs_input_grad[1] else None
        return d_g, d_x, d_scale, d_filters, None, None


class _Outer(torch.autograd.Function):
    """G = outer(a, b, c; i, j), G_q = c_q Σ_{p: p mod h = q} a_{i_p} ∘ b_{j_p} (c: constant)."""

    @staticmethod
    def forward(ctx, a, b, scale, pair_i, pair_j, h):
        ctx.save_for_backward(a, b, scale, pair_i, pair_j)
        return EXTENSION.state["module"].outer(a, b, scale, pair_i, pair_j, h)

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, pair_i, pair_j = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = _conv(b, grad, scale, pair_i, pair_j)
        if ctx.needs_input_grad[1]:
            grad_b = _conv(a, grad, scale, pair_j, pair_i)
        return grad_a, grad_b, None, None, None, None


def table_rows(
    coefficients: torch.Tensor, inv_h: float, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """W(r) and dW/dr (h, F) from a Hermite table as differentiable torch ops, the same arithmetic as
    :meth:`atomnet.nn.tabulated.TabulatedFilter.forward` and the ``table_conv`` kernel."""
    x = r * inv_h
    node = x.detach().floor().clamp_(0, coefficients.shape[0] - 1)
    local = x - node
    t = local.clamp(max=1.0)[:, None]
    c0, c1, c2, c3 = coefficients[node.long()].unbind(1)
    w = c0 + t * (c1 + t * (c2 + t * c3))
    slope = (c1 + t * (2.0 * c2 + 3.0 * t * c3)) * (inv_h * (local <= 1.0).to(r.dtype))[:, None]
    return w, slope


class _TableConv(torch.autograd.Function):
    """out = Σ_j x_j ∘ W(r_ij) c_ij with W from a cubic Hermite table, computed per pair inside the kernel.

    Backward (upstream g; G = outer(g, x)): ∂L/∂x = the same convolution with i and j swapped; ∂L/∂r_q =
    c_q Σ_f G_qf dW_qf/dr; ∂L/∂c_q = Σ_f G_qf W_qf, both from one kernel pass (``table_grads``) that recomputes
    W and dW/dr. A backward that must be differentiable (create_graph: Hessians, force training through a
    table) or is batched uses :func:`table_rows` and the conv/outer functions instead. The table itself gets no
    gradient (tabulated models are frozen copies).
    """

    @staticmethod
    def forward(ctx, x, r, scale, coefficients, inv_h, pair_i, pair_j):
        ctx.save_for_backward(x, r, scale, coefficients, pair_i, pair_j)
        ctx.inv_h = inv_h
        module = EXTENSION.state["module"]
        return module.table_conv(x, coefficients, inv_h, r, scale, pair_i, pair_j, x.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, r, scale, coefficients, pair_i, pair_j = ctx.saved_tensors
        need_x, need_r, need_c = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() or wrapped(grad, x, r, scale):
            none = _NONE.to(x.dtype)
            w, slope = table_rows(coefficients, ctx.inv_h, r)
            grad_x = _conv(grad, w * scale[:, None], none, pair_j, pair_i) if need_x else None
            g_w = _outer(grad, x, none, pair_i, pair_j, r.shape[0])
            grad_r = scale * (g_w * slope).sum(1) if need_r else None
            grad_c = (g_w * w).sum(1) if need_c else None
            return grad_x, grad_r, grad_c, None, None, None, None
        module = EXTENSION.state["module"]
        grad_x = None
        if need_x:
            grad_x = module.table_conv(grad, coefficients, ctx.inv_h, r, scale, pair_j, pair_i, x.shape[0])
        grad_r = grad_c = None
        if need_r or need_c:
            grad_r, grad_c = module.table_grads(grad, x, coefficients, ctx.inv_h, r, scale, pair_i, pair_j)
        return grad_x, grad_r if need_r else None, grad_c if need_c else None, None, None, None, None


def fused_table_cfconv(
    x: torch.Tensor,
    coefficients: torch.Tensor,
    spacing: float,
    r: torch.Tensor,
    fcut: torch.Tensor,
    pair_i: torch.Tensor,
    pair_j: torch.Tensor,
) -> torch.Tensor:
    """m_i = Σ_j x_j ∘ W(r_ij) f_c(r_ij) with W a :class:`~atomnet.nn.tabulated.TabulatedFilter` table, through
    the fused kernels (call :func:`usable` first): no (n_pairs, F) array in the forward or the backward.

    Shapes: x (n_atoms, F), coefficients (n_segments, 4, F), r and fcut (h,) with h = n_pairs or n_pairs / 2
    (mirrored), pair_i/pair_j (n_pairs,) int64 → (n_atoms, F). Differentiable in x, r and fcut.
    """
    return _TableConv.apply(
        x.contiguous(),
        r.contiguous(),
        fcut.contiguous(),
        coefficients.detach().contiguous(),
        1.0 / spacing,
        pair_i,
        pair_j,
    )


def fused_cfconv(
    x: torch.Tensor,
    filters: torch.Tensor,
    pair_i: torch.Tensor,
    pair_j: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """m_i = Σ_j x_j ∘ W_ij (· c_ij) through the fused kernels (call :func:`usable` first).

    Shapes: x (n_atoms, F), filters (h, F) with h = n_pairs or n_pairs / 2 (mirrored), pair_i/pair_j
    (n_pairs,) int64, scale (h,) or None → (n_atoms, F). ``scale`` (the cutoff f_c(r_ij) of SchNet's filters) is
    differentiable like the other inputs.
    """
    if scale is None:
        scale = _NONE.to(filters.dtype)
    return _Conv.apply(x.contiguous(), filters.contiguous(), scale.contiguous(), pair_i, pair_j)


if __name__ == "__main__":  # python -m atomnet.nn.fused: build this kernel ahead (atomnet.native builds all)
    built = load(verbose="--verbose" in sys.argv)
    print(f"fused cfconv kernel: {'ready in ' + str(kernel_dir()) if built else 'not available'}")
    raise SystemExit(0)
