"""Gradient baselines on the input layer x⁰ (and on positions): the methods LRP is compared with.

x⁰ is the element embedding x_i⁰ (SchNet, DTNN) or the fixed-size input vector of CMNet (Coulomb-matrix
entries in channels); in the second case per-entry values (summed over channels, or the norm for
``gradient``) are mapped to atoms by :func:`~atomnet.explain.propagation.to_atoms` (M_ij half to i, half to
j; padding entries belong to no atom: for integrated gradients their share is added to ``unexplained``).

- ``gradient``: ‖∂E/∂x_i⁰‖₂, the sensitivity of the energy to atom i's embedding (Simonyan et al. 2014).
- ``force-norm``: ‖∂E/∂R_i‖₂ = ‖F_i‖, eV/Å, from the same :func:`~atomnet.potential.energy_and_forces` path.
- ``gradient-x-input``: Σ_f x⁰_if ∂E/∂x⁰_if (Shrikumar et al. 2016). Not conserving.
- ``integrated-gradients`` (Sundararajan et al., ICML 2017): IG_i = Σ_f x⁰_if ∫₀¹ ∂E/∂x⁰_if(α x⁰) dα with the
  baseline x⁰ = 0 (every atom's embedding zero; the geometry and so the filters are kept). Completeness:
  Σ_i IG_i = E(x⁰) − E(0), so ``unexplained`` = E(0), the baseline energy, up to the quadrature error. The
  integral uses ``steps`` Gauss–Legendre nodes (``quadrature=gauss-legendre``, error falls faster than any
  power of 1/steps for these smooth networks) or the midpoint Riemann sum of the paper (``riemann``). All
  steps of a small batch run together (the molecules repeated, up to 1,024 atoms per pass).
  ``baseline=offset``: the baseline is the input layer's constant offset c instead of 0 (for CMNet's
  input-shifted copy, whose inputs are x + c, this is the shifted baseline of Kindermans et al. 2017 that
  makes integrated gradients input-shift invariant; for embeddings it is 0). IG_i = Σ (x − c) ∫ ∂E/∂x.
- ``smoothgrad`` (Smilkov et al. 2017): the average of ``base`` (gradient-x-input, gradient or force-norm)
  over ``samples`` copies with Gaussian noise of σ Å on every position (seeded; the pair list of the
  unperturbed structure is kept: filters vanish smoothly at the cutoff).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from atomnet import keys
from atomnet.data.batch import AtomsBatch
from atomnet.explain.methods import Attribution, Method, register, require
from atomnet.explain.propagation import Propagation, embedding_leaf, to_atoms, to_entries
from atomnet.potential import energy_and_forces


def embedding_gradient(
    model, batch: AtomsBatch, scale=None, about_offset: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], Propagation]:
    """(energy (n_molecules,), [x⁰], [∂E/∂x⁰], state): one input and gradient per leaf (rows × features);
    with ``scale`` (a number or an (n_atoms, 1) tensor) the model sees scale·x⁰ and the gradient is taken
    there. ``state`` maps leaf-shaped values to atoms (:func:`~atomnet.explain.propagation.to_atoms`)."""
    with torch.enable_grad(), embedding_leaf(model, batch, scale, about_offset) as state:
        energy = model(batch)[keys.ENERGY]
        grads = torch.autograd.grad(energy.sum(), state.leaves)
    return energy.detach(), [x.detach() for x in state.leaves], list(grads), state


def repeat_batch(batch: AtomsBatch, k: int) -> AtomsBatch:
    """``k`` copies of a batch in one batch, copy after copy; a mirrored layout stays mirrored (all first
    halves of the pair lists, then all second halves)."""
    n, m, p = batch.numbers.shape[0], batch.n_molecules, batch.pair_i.shape[0]
    offsets = (torch.arange(k) * n).repeat_interleave(p)
    order = torch.arange(k * p)
    if batch.mirrored:
        h = p // 2
        starts = torch.arange(k)[:, None] * p
        order = torch.cat([(starts + torch.arange(h)).flatten(), (starts + h + torch.arange(h)).flatten()])

    def rep(t, dims=1):
        return None if t is None else t.repeat(k, *([1] * (dims - 1)))

    shifts = rep(batch.cell_shifts, 2)
    return replace(
        batch,
        numbers=rep(batch.numbers),
        positions=rep(batch.positions, 2),
        molecule=batch.molecule.repeat(k) + (torch.arange(k) * m).repeat_interleave(n),
        n_atoms=rep(batch.n_atoms),
        pair_i=(batch.pair_i.repeat(k) + offsets)[order],
        pair_j=(batch.pair_j.repeat(k) + offsets)[order],
        cell=rep(batch.cell, 3),
        pbc=rep(batch.pbc, 2),
        cell_shifts=None if shifts is None else shifts[order],
        targets={},
    )


def quadrature(kind: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes α_k and weights w_k on [0, 1] with Σ_k w_k f(α_k) ≈ ∫₀¹ f(α) dα."""
    if kind == "gauss-legendre":
        u, w = np.polynomial.legendre.leggauss(steps)
        return (u + 1.0) / 2.0, w / 2.0
    return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)


#: integrated gradients evaluates copies of small batches together, up to this many atoms per pass
ATOMS_PER_PASS = 1024


@register
class Gradient(Method):
    name = "gradient"
    units = "eV per input unit"  # per embedding feature, or per Coulomb-matrix channel
    conserving = False
    defaults: dict = {}

    def attribute(self, model, batch, params):
        energy, _, grads, state = embedding_gradient(model, batch)
        entries = to_entries(state, grads, "norm")
        return Attribution(energy, to_atoms(state, grads, reduce="norm")[0], None, entries=entries)


@register
class ForceNorm(Method):
    name = "force-norm"
    units = "eV/Å"
    conserving = False
    defaults: dict = {}

    def attribute(self, model, batch, params):
        out = energy_and_forces(model, batch, forces=True)
        return Attribution(out[keys.ENERGY], torch.linalg.vector_norm(out[keys.FORCES], dim=1), None)


@register
class GradientXInput(Method):
    name = "gradient-x-input"
    conserving = False
    defaults: dict = {}

    def attribute(self, model, batch, params):
        energy, x0, grads, state = embedding_gradient(model, batch)
        values = [x * g for x, g in zip(x0, grads, strict=True)]
        return Attribution(energy, to_atoms(state, values)[0], None, entries=to_entries(state, values))


@register
class IntegratedGradients(Method):
    name = "integrated-gradients"
    defaults = {"steps": 16, "quadrature": "gauss-legendre", "baseline": "zero"}

    def check(self, params):
        require(params["steps"] >= 1, self.name, f"steps must be >= 1, got {params['steps']}")
        kinds = ("gauss-legendre", "riemann")
        require(params["quadrature"] in kinds, self.name, f"quadrature must be one of {kinds}")
        bases = ("zero", "offset")
        require(params["baseline"] in bases, self.name, f"baseline must be one of {bases}")

    def attribute(self, model, batch, params):
        nodes, weights = quadrature(params["quadrature"], params["steps"])
        alphas = np.concatenate([[1.0, 0.0], nodes])  # the input itself, the baseline, the nodes
        n = batch.numbers.shape[0]
        per_pass = max(1, ATOMS_PER_PASS // n)  # copies of the batch evaluated together
        w_all = np.concatenate([[0.0, 0.0], weights])  # the input and the baseline carry no weight
        energies, x0, total, first = [], [], [], None
        for start in range(0, len(alphas), per_pass):
            chunk = alphas[start : start + per_pass]
            big = repeat_batch(batch, len(chunk)) if len(chunk) > 1 else batch
            scale = torch.as_tensor(chunk, dtype=batch.positions.dtype).repeat_interleave(n)[:, None]
            energy, xs, grads, state = embedding_gradient(model, big, scale, params["baseline"] == "offset")
            energies.append(energy.view(len(chunk), batch.n_molecules))
            w = torch.as_tensor(w_all[start : start + len(chunk)], dtype=batch.positions.dtype)
            parts = [(g.view(len(chunk), -1, g.shape[1]) * w[:, None, None]).sum(0) for g in grads]
            if first is None:  # copy 0 of the first pass is the input itself (α = 1)
                first, x0, total = state, [x[: x.shape[0] // len(chunk)] for x in xs], parts
            else:
                total = [a + b for a, b in zip(total, parts, strict=True)]
        energy = torch.cat(energies)
        if params["baseline"] == "offset":
            offsets = [own[2] if own is not None else 0.0 for own in first.owners]
            x0 = [x - c for x, c in zip(x0, offsets, strict=True)]
        values = [x * g for x, g in zip(x0, total, strict=True)]
        relevance, padding = to_atoms(first, values, rows=batch.n_molecules)
        entries = to_entries(first, values, rows=batch.n_molecules)
        return Attribution(energy[0], relevance, energy[1] + padding, entries=entries)


@register
class SmoothGrad(Method):
    name = "smoothgrad"
    defaults = {"sigma": 0.05, "samples": 16, "seed": 0, "base": "gradient-x-input"}
    conserving = False

    def check(self, params):
        require(params["sigma"] >= 0, self.name, f"sigma must be >= 0 Å, got {params['sigma']}")
        require(params["samples"] >= 1, self.name, f"samples must be >= 1, got {params['samples']}")
        bases = ("gradient-x-input", "gradient", "force-norm")
        require(params["base"] in bases, self.name, f"base must be one of {bases}")

    def attribute(self, model, batch, params):
        from atomnet.explain.methods import METHODS

        base = METHODS[params["base"]]
        gen = torch.Generator().manual_seed(int(params["seed"]))
        total = None
        for _ in range(params["samples"]):
            noise = torch.randn(batch.positions.shape, generator=gen, dtype=torch.float64)
            noisy = replace(batch, positions=batch.positions + params["sigma"] * noise.to(batch.positions))
            r = base.attribute(model, noisy, {}).relevance
            total = r if total is None else total + r
        with torch.no_grad():
            energy = model(batch)[keys.ENERGY]
        return Attribution(energy, total / params["samples"], None)

    def units_for(self, params: dict) -> str:
        from atomnet.explain.methods import METHODS

        return METHODS[params["base"]].units
