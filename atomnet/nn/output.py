"""Pieces shared by every model: element embedding with input checks, and the standardised per-atom output.

E_i = y_i · std + mean + atomref[Z_i], where y_i is the network's raw per-atom output; ``mean``/``std`` are the
per-atom energy statistics and ``atomref`` the per-element reference energies (eV) of the training set.
They are buffers, so a checkpoint is self-contained.
"""

from __future__ import annotations

import torch
from torch import nn

from atomnet.errors import ModelInputError


def tracing() -> bool:
    """Whether torch is tracing (``torch.compile``, ``torch.export``, ``make_fx``) rather than running:
    checks that read tensor values must be skipped then."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return torch.compiler.is_compiling() or get_proxy_mode() is not None


def wrapped(*tensors: torch.Tensor) -> bool:
    """Whether any tensor is batched or wrapped by a transform (``torch.vmap``, or the batched backward passes of
    ``autograd.grad(is_grads_batched=True)`` in :func:`atomnet.potential.hessian`): those take the plain torch ops,
    which have batching rules (the fused cfconv kernels and atomnet's softplus Function have none)."""
    functorch = torch._C._functorch
    return any(
        functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t) for t in tensors
    )


class AtomEmbedding(nn.Embedding):
    """Learned vector per element, x_i⁰ = a_{Z_i}. Shapes: (n_atoms,) int → (n_atoms, F).

    Raises :class:`ModelInputError` for atomic numbers outside 1..max_z instead of an index error.
    """

    def __init__(self, max_z: int, n_features: int):
        super().__init__(max_z + 1, n_features, padding_idx=0)
        self.max_z = int(max_z)

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        # the check reads values: a graph break under torch.compile and impossible while tracing for export,
        # skipped there (AtomNetCalculator, the caller that compiles, and the exporter check atomic numbers)
        if numbers.numel() and not tracing() and (int(numbers.max()) > self.max_z or int(numbers.min()) < 1):
            bad = numbers[(numbers > self.max_z) | (numbers < 1)].unique().tolist()
            raise ModelInputError(
                f"atomic number(s) {bad} outside the model's range 1..{self.max_z}; "
                "the model cannot embed elements it was not built for"
            )
        return super().forward(numbers)


class Standardize(nn.Module):
    """E_i = y_i · std + mean + atomref[Z_i]. Shapes: (n_atoms,), (n_atoms,) → (n_atoms,) eV."""

    def __init__(self, max_z: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.register_buffer("atomref", torch.zeros(max_z + 1))

    def forward(self, y: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean + self.atomref[numbers]

    @torch.no_grad()
    def set(self, mean: float = 0.0, std: float = 1.0, atomref=None) -> None:
        """Set per-atom ``mean``/``std`` (eV) and optional per-element ``atomref`` (eV, indexed by Z)."""
        self.mean.fill_(float(mean))
        self.std.fill_(float(std))
        if atomref is not None:
            ref = torch.as_tensor(atomref, dtype=self.atomref.dtype)
            self.atomref.zero_()
            n = min(len(ref), len(self.atomref))
            self.atomref[:n] = ref[:n]
