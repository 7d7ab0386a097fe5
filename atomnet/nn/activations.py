"""Activation functions as modules (so explanation rules can attach to them by type)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LN2 = math.log(2.0)


class ShiftedSoftplus(nn.Module):
    """ssp(x) = ln(½ eˣ + ½) = softplus(x) − ln 2, so that ssp(0) = 0 (Schütt et al. 2017)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x).sub_(LN2)  # in place: softplus's backward needs its input, not its output


class Tanh(nn.Tanh):
    """tanh, named in atomnet so DTNN's nonlinearities are found by type like the others."""
