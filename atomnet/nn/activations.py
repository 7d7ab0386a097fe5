"""Activation functions as modules (so explanation rules can attach to them by type)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from atomnet.nn.output import tracing, wrapped

LN2 = math.log(2.0)


class _Softplus(torch.autograd.Function):
    """softplus(x) = ln(1 + eˣ) with a backward that is short to differentiate again.

    The value is ``F.softplus`` (linear above x = 20, as torch's). The backward is torch's one-pass
    ``softplus_backward`` when no graph is built (energy training, inference forces); under ``create_graph``
    (force training) it is g · σ(x) from differentiable ops, whose own backward (sigmoid_backward and two
    products) is half the passes of torch's ``softplus_double_backward`` over the (pairs × F) arrays. Above
    x = 20, σ(x) differs from the exact slope 1 of the linear branch by < 2.1e-9, below float32 resolution.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.softplus(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return grad * torch.sigmoid(x)
        return torch.ops.aten.softplus_backward(grad, x, 1.0, 20.0)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """ln(1 + eˣ) (see :class:`_Softplus`); the plain ``F.softplus`` under a compiler, tracer or exporter, for a tensor
    wrapped by a ``torch.func`` transform (``jvp``, ``vmap``) or of a tensor subclass."""
    if _plain(x):
        return F.softplus(x)
    return _Softplus.apply(x)


def _plain(x: torch.Tensor) -> bool:
    if tracing() or torch.jit.is_tracing():
        return True
    return wrapped(x) or type(x) is not torch.Tensor


class ShiftedSoftplus(nn.Module):
    """ssp(x) = ln(½ eˣ + ½) = softplus(x) − ln 2, so that ssp(0) = 0 (Schütt et al. 2017)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softplus(x).sub_(LN2)  # in place: softplus's backward needs its input, not its output


class Tanh(nn.Tanh):
    """tanh, named in atomnet so DTNN's nonlinearities are found by type like the others."""
