"""The slow reference of relevant walks (tests and benchmarks only): one masked forward/backward per walk."""

from __future__ import annotations

import torch

from atomnet import keys
from atomnet.explain.methods import get_method
from atomnet.explain.propagation import attach


def slow_walk_relevance(pot, batch, walk, rule="lrp-gamma", **params):
    """Schnake et al.'s reference: one masked forward/backward per walk, h ← h·m + (1−m)·h.detach() after
    the embedding and after every interaction block, m selecting atom i_t."""
    model = pot.model
    method = get_method(rule)
    comp = method.composite(method.resolve(params))
    calls = {"t": 0}

    def masked(out, atom):
        m = torch.zeros(out.shape[0], 1, dtype=out.dtype)
        m[atom] = 1.0
        return out * m + (1 - m) * out.detach()

    def after_block(module, args, out):
        calls["t"] += 1
        return masked(out, walk[calls["t"]])

    with torch.enable_grad(), attach(model, comp, batch) as state:
        handles = [model.embedding.register_forward_hook(lambda mod, a, out: masked(out, walk[0]))]
        handles += [b.register_forward_hook(after_block) for b in model.interactions]
        try:
            energy = model(batch)[keys.ENERGY]
            (g,) = torch.autograd.grad(energy, state.leaves, grad_outputs=energy.detach())
        finally:
            for h in handles:
                h.remove()
    return g.sum().item()
