"""Is an explanation right? Atom-perturbation curves, deletion fidelity and model-randomisation checks.

**Target.** Relevance explains the learned part of the energy (the reference energies mean + atomref[Z] are
reported apart), so perturbations are scored on f(M) = E(M) − Σ_{atoms present} reference_i (eV).

**Perturbations.** ``delete``: the atoms leave the structure (the rest is evaluated as a smaller molecule).
``mask``: the atoms stay as ghosts, geometry unchanged, with their embedding x⁰_i replaced by the zero vector
(the baseline of integrated gradients; no learned "mask" token); a ghost's reference still counts as present.

**Curves** (region perturbation, Samek et al. 2015, arXiv 1509.06321): atoms are removed in order of relevance,
most relevant first (MoRF: largest signed relevance first) or least relevant first (LeRF), and f is recorded at
the fractions 0, 1/s, …, 1 of the atoms (k = round(fraction · n)). Δ_k = f(M) − f(M^(k)) is the drop of the
learned energy. Signs: E is negative and relevance signed; an atom with large positive relevance raises f, so
removing it first makes Δ large and positive. AOPC = mean over the fractions of Δ (higher is better for MoRF),
the LeRF−MoRF gap is AOPC(MoRF) − AOPC(LeRF) (larger is better), and the random baseline averages ``n_random``
seeded random orders.

**Deletion fidelity**: for random atom subsets S (sizes uniform in 1 … n−1), the Pearson correlation over all
subsets and molecules between Σ_{i∈S} R_i and f(M) − f(M ∖ S).

**Model randomisation** (Adebayo et al. 2018): the output network, then the interaction blocks from the last to
the first, then the embedding are re-initialised one after the other (cascading); the Spearman rank
correlation of each step's relevance with the trained model's is reported (a faithful method changes).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from atomnet import keys
from atomnet.data.batch import batch_from_atoms
from atomnet.errors import ExplanationError
from atomnet.explain.analyzer import analyze_many, as_potential, create_analyzer
from atomnet.explain.contributions import reference_energies
from atomnet.explain.propagation import embedding_leaf

PERTURBATIONS = ("delete", "mask")


def learned_energies(potential, structures, masks: Sequence[np.ndarray] | None = None, chunk: int = 256):
    """f = E − Σ reference of the present atoms, (n_structures,) eV; ``masks[k]`` (n_atoms_k,) in {0, 1}
    multiplies structure k's embeddings (0: ghost)."""
    out = []
    model = potential.model
    for start in range(0, len(structures), chunk):
        part = structures[start : start + chunk]
        batch = batch_from_atoms(part, cutoff=potential.cutoff, dtype=potential.dtype)
        with torch.no_grad():
            if masks is None:
                energy = model(batch)[keys.ENERGY]
            else:
                scale = torch.as_tensor(np.concatenate(masks[start : start + chunk]), dtype=potential.dtype)
                with embedding_leaf(model, batch, scale=scale[:, None]):
                    energy = model(batch)[keys.ENERGY]
            ref = reference_energies(model, batch)
            ref_sum = ref.new_zeros(batch.n_molecules).index_add(0, batch.molecule, ref)
        out.append((energy - ref_sum).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _removed(atoms, drop: np.ndarray, perturbation: str):
    """(structure, embedding mask or None) with the atoms ``drop`` removed."""
    if perturbation == "delete":
        keep = np.setdiff1d(np.arange(len(atoms)), drop)
        return atoms[keep], None
    mask = np.ones(len(atoms))
    mask[drop] = 0.0
    return atoms, mask


def perturbed_energies(
    potential, atoms_list, drops: list[list[np.ndarray]], perturbation: str
) -> list[np.ndarray]:
    """f after each removal of ``drops[m][k]`` (atom indices) from molecule m; an empty molecule scores 0."""
    if perturbation not in PERTURBATIONS:
        raise ExplanationError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    structures, masks, where = [], [], []
    for m, atoms in enumerate(atoms_list):
        for k, drop in enumerate(drops[m]):
            if perturbation == "delete" and len(drop) >= len(atoms):
                continue  # nothing left: f = 0
            s, mask = _removed(atoms, np.asarray(drop, dtype=int), perturbation)
            structures.append(s)
            masks.append(mask)
            where.append((m, k))
    values = learned_energies(potential, structures, None if perturbation == "delete" else masks)
    out = [np.zeros(len(d)) for d in drops]
    for (m, k), v in zip(where, values, strict=True):
        out[m][k] = v
    return out


@dataclass
class Curves:
    """Perturbation curves of one method: ``fractions`` (s+1,), per-molecule Δ curves (n_molecules, s+1) eV for
    MoRF, LeRF and the random baseline, and their AOPC per molecule."""

    method: str
    perturbation: str
    fractions: np.ndarray
    morf: np.ndarray
    lerf: np.ndarray
    random: np.ndarray

    def aopc(self, which: str) -> np.ndarray:
        return getattr(self, which).mean(axis=1)

    def summary(self) -> dict:
        """Mean ± standard error over molecules of AOPC (MoRF, LeRF, random) and the LeRF−MoRF gap, eV."""

        def stat(x):
            return {
                "mean": float(np.mean(x)),
                "sem": float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0,
            }

        gap = self.aopc("morf") - self.aopc("lerf")
        return {
            "method": self.method,
            "perturbation": self.perturbation,
            "aopc_morf": stat(self.aopc("morf")),
            "aopc_lerf": stat(self.aopc("lerf")),
            "aopc_random": stat(self.aopc("random")),
            "gap_lerf_morf": stat(gap),
            "n_molecules": int(self.morf.shape[0]),
        }


def perturbation_curves(
    potential,
    atoms_list,
    relevances: Sequence[np.ndarray],
    method: str = "",
    perturbation: str = "delete",
    steps: int = 10,
    n_random: int = 5,
    seed: int = 0,
) -> Curves:
    """MoRF, LeRF and random-order curves for given relevances (one array per molecule)."""
    potential = as_potential(potential)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    rng = np.random.default_rng(seed)
    base = learned_energies(potential, list(atoms_list))
    orders = {"morf": [], "lerf": [], "random": []}
    for atoms, r in zip(atoms_list, relevances, strict=True):
        n = len(atoms)
        ks = np.rint(fractions * n).astype(int)
        desc = np.argsort(-np.asarray(r), kind="stable")
        orders["morf"].append([desc[:k] for k in ks])
        orders["lerf"].append([desc[::-1][:k] for k in ks])
        perms = [rng.permutation(n) for _ in range(n_random)]
        orders["random"].append([p[:k] for p in perms for k in ks])
    curves = {}
    for name, drops in orders.items():
        values = perturbed_energies(potential, list(atoms_list), drops, perturbation)
        delta = [base[m] - v for m, v in enumerate(values)]
        if name == "random":
            delta = [d.reshape(n_random, -1).mean(0) for d in delta]
        curves[name] = np.stack(delta)
    return Curves(method, perturbation, fractions, curves["morf"], curves["lerf"], curves["random"])


def deletion_fidelity(
    potential, atoms_list, relevances, n_subsets: int = 20, perturbation: str = "delete", seed: int = 0
) -> dict:
    """Pearson correlation of Σ_{i∈S} R_i with f(M) − f(M ∖ S) over random subsets S of every molecule."""
    potential = as_potential(potential)
    rng = np.random.default_rng(seed)
    base = learned_energies(potential, list(atoms_list))
    drops, sums = [], []
    for atoms, r in zip(atoms_list, relevances, strict=True):
        n = len(atoms)
        subsets = [rng.permutation(n)[: rng.integers(1, n)] for _ in range(n_subsets)] if n > 1 else []
        drops.append(subsets)
        sums.append([float(np.sum(np.asarray(r)[s])) for s in subsets])
    values = perturbed_energies(potential, list(atoms_list), drops, perturbation)
    x = np.concatenate([np.asarray(s) for s in sums])
    y = np.concatenate([base[m] - v for m, v in enumerate(values)])
    corr = float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and np.std(x) > 0 and np.std(y) > 0 else float("nan")
    return {"pearson": corr, "n_subsets": int(len(x)), "relevance_sums": x, "energy_drops": y}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by order; NaN for constant input)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def randomisation_steps(model) -> list[tuple[str, list]]:
    """(name, modules) re-initialised cumulatively: output, interaction blocks last to first, embedding; for
    a network on a fixed-size input (CMNet, no interaction blocks) its dense layers from the last to the
    first, as in Adebayo et al.'s cascade."""
    blocks = list(getattr(model, "interactions", []))
    if not blocks and not hasattr(model, "embedding"):
        dense = [(n, m) for n, m in model.output.named_modules() if isinstance(m, torch.nn.Linear)]
        return [(f"output.{n}", [m]) for n, m in reversed(dense)]
    steps = [("output", [model.output])]
    for k in reversed(range(len(blocks))):
        steps.append((f"interactions.{k}", [blocks[k]]))
    steps.append(("embedding", [model.embedding]))
    return steps


def model_randomisation(potential, atoms_list, method: str, seed: int = 0, **params) -> list[dict]:
    """Cascading re-initialisation; per step the mean (over molecules) Spearman correlation of the relevance
    with the trained model's. The potential itself is not changed (a copy is randomised)."""
    potential = as_potential(potential)
    reference = [
        e.relevance for e in analyze_many(create_analyzer(method, potential, **params), list(atoms_list))
    ]
    copy_ = copy.deepcopy(potential)
    torch.manual_seed(seed)
    rows = [{"step": "trained", "spearman": 1.0}]
    for name, modules in randomisation_steps(copy_.model):
        for block in modules:
            for mod in block.modules():
                if hasattr(mod, "reset_parameters") and mod is not copy_.model.standardize:
                    mod.reset_parameters()
        out = analyze_many(create_analyzer(method, copy_, **params), list(atoms_list))
        corr = [spearman(r, e.relevance) for r, e in zip(reference, out, strict=True) if len(r) > 2]
        rows.append({"step": name, "spearman": float(np.nanmean(corr)) if corr else float("nan")})
    return rows


# --- input invariance (Kindermans et al. 2017, arXiv 1711.00867) ----------------------------------------------


def input_shift_copy(potential, shift: float | torch.Tensor = 1.0):
    """A copy computing the same function with every input shifted by a constant vector c.

    x⁰ → x⁰ + c, and the shift is compensated in the next layers' biases: each interaction block's first
    dense layer of x (SchNet's in2f gets a bias −W c; DTNN's W_cf bias −W_cf c) and the output network's first
    layer (b − W c). The residual path carries x^t + c through every block, so the function is unchanged.
    For a network on a fixed-size input (CMNet) the input vector is shifted (its ``offset``) and the first
    dense layer compensates (b − W c), exactly the construction of Kindermans et al.
    """
    from torch import nn

    pot = copy.deepcopy(as_potential(potential))
    model = pot.model
    features = getattr(model, "features", None)
    if features is not None and hasattr(features, "offset"):
        c = torch.full_like(features.offset, float(shift)) if not torch.is_tensor(shift) else shift
        with torch.no_grad():
            features.offset += c
            first = model.output[0]
            first.bias -= first.weight @ c
        return pot
    feats = model.embedding.weight.shape[1]
    c = (
        torch.full((feats,), float(shift), dtype=model.embedding.weight.dtype)
        if not torch.is_tensor(shift)
        else shift
    )
    with torch.no_grad():
        model.embedding.weight[1:] += c
        for block in model.interactions:
            name = "in2f" if hasattr(block, "in2f") else "cf"
            old = getattr(block, name)
            new = nn.Linear(old.in_features, old.out_features, bias=True).to(old.weight.dtype)
            new.weight.copy_(old.weight)
            new.bias.copy_((old.bias if old.bias is not None else 0) - old.weight @ c)
            setattr(block, name, new)
        first = model.output[0]
        first.bias -= first.weight @ c
    return pot


def input_invariance(
    potential, atoms_list, methods: Sequence, shift: float = 1.0, fit: Sequence | None = None
) -> list[dict]:
    """For every method (a name, or ``(name, params)``): the largest change of relevance between the model
    and its input-shifted copy, relative to the largest |relevance| (0: invariant), and whether it is below
    1e-6. Methods that learn from data (patterns) are fitted on ``fit`` for each model separately."""
    pot = as_potential(potential)
    shifted = input_shift_copy(pot, shift)
    rows = []
    for entry in methods:
        name, params = (entry, {}) if isinstance(entry, str) else entry
        label = " ".join([name] + [f"{k}={v}" for k, v in params.items()])
        out = []
        for model in (pot, shifted):
            analyzer = create_analyzer(name, model, **params)
            if analyzer.method.needs_fit:
                if fit is None:
                    raise ExplanationError(
                        f"input_invariance: method {name!r} needs training structures (fit=)"
                    )
                analyzer.fit(list(fit))
            out.append([e.relevance for e in analyze_many(analyzer, list(atoms_list))])
        a, b = out
        scale = max(float(np.abs(np.concatenate(a)).max()), 1e-30)
        change = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) / scale
        rows.append({"method": name, "label": label, "relative_change": change, "invariant": change < 1e-6})
    return rows
