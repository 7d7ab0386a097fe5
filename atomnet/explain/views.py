"""Chemistry views of explanations: relevance by element and chemical environment over a data set, and local
chemical potential maps (Schütt et al., Nat. Commun. 8, 13890, 2017).

**Environment** of an atom (a geometric guess, no bond orders): its element, the number of atoms within
1.6 Å, and for C, N and O a hybridisation from that count and the geometry — C: 4 → sp3, 3 → sp2, 2 → sp;
N: 3 → sp3 if pyramidal (angle sum < 350°) else sp2, 2 → sp if linear (> 160°) else sp2, 1 → sp; O: 2 → sp3,
1 → sp2. Labels read like ``C sp3 (4)``, ``H (1)``.

**Probe map** Ω_M^Z(r): the learned energy (atomic energy − reference) of a probe atom of element Z at r, in the
molecule's plane (the plane of its two largest principal axes through its centre). The probe sees the molecule,
the molecule does not see the probe and probes do not see each other (one-directional pairs, as the paper's
test charge), so every grid point is evaluated in one forward pass, and the molecule's own energies are those
of the molecule alone.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from atomnet import keys
from atomnet.data.batch import batch_from_atoms
from atomnet.explain.analyzer import as_potential
from atomnet.explain.contributions import reference_energies
from atomnet.explain.plots import principal_axes

BOND = 1.6  #: Å, neighbours counted for the environment label


def _angle(a, b, c) -> float:
    u, v = a - b, c - b
    cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def environments(numbers: np.ndarray, positions: np.ndarray) -> list[str]:
    """Environment label of every atom (see the module docstring)."""
    from ase.data import chemical_symbols

    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    labels = []
    for i, z in enumerate(numbers):
        nb = np.flatnonzero(d[i] < BOND)
        k, sym, hyb = len(nb), chemical_symbols[z], ""
        if sym == "C":
            hyb = {4: "sp3", 3: "sp2", 2: "sp"}.get(k, "")
        elif sym == "N":
            if k == 3:
                total = sum(
                    _angle(positions[a], positions[i], positions[b])
                    for a, b in ((nb[0], nb[1]), (nb[1], nb[2]), (nb[0], nb[2]))
                )
                hyb = "sp3" if total < 350 else "sp2"
            elif k == 2:
                hyb = "sp" if _angle(positions[nb[0]], positions[i], positions[nb[1]]) > 160 else "sp2"
            elif k == 1:
                hyb = "sp"
        elif sym == "O":
            hyb = {2: "sp3", 1: "sp2"}.get(k, "")
        labels.append(f"{sym} {hyb} ({k})".replace("  ", " ") if hyb else f"{sym} ({k})")
    return labels


def relevance_statistics(explanations) -> dict[str, dict[str, dict]]:
    """Relevance grouped by element and by environment over many explanations: for every group the count,
    mean, standard deviation, median and quartiles (in the explanations' unit), and the values themselves."""
    from ase.data import chemical_symbols

    groups: dict[str, dict[str, list]] = {"element": {}, "environment": {}}
    for e in explanations:
        envs = environments(np.asarray(e.numbers), np.asarray(e.positions))
        for z, env, r in zip(e.numbers, envs, e.relevance, strict=True):
            groups["element"].setdefault(chemical_symbols[z], []).append(float(r))
            groups["environment"].setdefault(env, []).append(float(r))
    out: dict[str, dict[str, dict]] = {}
    for kind, by in groups.items():
        out[kind] = {}
        for name, values in sorted(by.items()):
            v = np.asarray(values)
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            out[kind][name] = {
                "count": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                "median": float(med), "q1": float(q1), "q3": float(q3), "values": v,
            }  # fmt: skip
    return out


def plot_statistics(stats: dict, path, unit: str = "eV", title: str = ""):
    """Box plots of relevance per element (left) and per environment (right)."""
    import matplotlib.pyplot as plt

    from atomnet.files import save_figure

    envs = stats["environment"]
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(5 + 0.55 * len(envs), 4.5),
        gridspec_kw={"width_ratios": [max(len(stats["element"]), 1), max(len(envs), 1)]},
    )
    for ax, kind in zip(axes, ("element", "environment"), strict=True):
        names = list(stats[kind])
        ax.boxplot([stats[kind][n]["values"] for n in names], showfliers=False)
        ax.set_xticks(
            range(1, len(names) + 1),
            [f"{n}\nn={stats[kind][n]['count']}" for n in names],
            fontsize=7,
            rotation=0 if kind == "element" else 60,
        )
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_ylabel(f"relevance ({unit})")
        ax.set_title(f"by {kind}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def probe_map(potential, atoms, probe: int = 6, spacing: float = 0.1, margin: float = 2.0):
    """Ω(r) on a grid in the molecular plane: (xs (nx,), ys (ny,), values (ny, nx) eV, positions in plane
    coordinates (n, 3) Å, numbers). ``probe``: atomic number; ``spacing``, ``margin``: Å."""
    pot = as_potential(potential)
    planar = principal_axes(np.asarray(atoms.get_positions(), dtype=float))
    xs = np.arange(planar[:, 0].min() - margin, planar[:, 0].max() + margin + 1e-9, spacing)
    ys = np.arange(planar[:, 1].min() - margin, planar[:, 1].max() + margin + 1e-9, spacing)
    gx, gy = np.meshgrid(xs, ys)
    grid = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1)
    n, g = len(atoms), len(grid)
    from ase import Atoms

    mol = Atoms(numbers=atoms.numbers, positions=planar)
    batch = batch_from_atoms([mol], cutoff=pot.cutoff, dtype=pot.dtype)
    positions = torch.cat([batch.positions, torch.as_tensor(grid, dtype=pot.dtype)])
    d = torch.cdist(positions[n:], positions[:n])  # (g, n)
    probe_i, atom_j = torch.nonzero(d < pot.cutoff, as_tuple=True)
    batch = replace(
        batch,
        numbers=torch.cat([batch.numbers, torch.full((g,), int(probe), dtype=torch.long)]),
        positions=positions,
        molecule=torch.zeros(n + g, dtype=torch.long),
        n_atoms=torch.tensor([n + g]),
        pair_i=torch.cat([batch.pair_i, probe_i + n]),
        pair_j=torch.cat([batch.pair_j, atom_j]),
        mirrored=False,
    )
    with torch.no_grad():
        atomic = pot.model(batch)[keys.ATOMIC_ENERGIES]
        learned = atomic - reference_energies(pot.model, batch)
    values = learned[n:].double().cpu().numpy().reshape(gy.shape)
    return xs, ys, values, planar, np.asarray(atoms.numbers)


def plot_probe_map(xs, ys, values, planar, numbers, path, probe: int = 6, title: str = ""):
    """Contour map of Ω(r) with the molecule's atoms (labelled) on top."""
    import matplotlib.pyplot as plt
    from ase.data import chemical_symbols, covalent_radii

    from atomnet.files import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    lo, hi = np.percentile(values, [2, 98])
    cs = ax.contourf(xs, ys, np.clip(values, lo, hi), levels=24, cmap="viridis")
    ax.contour(xs, ys, np.clip(values, lo, hi), levels=12, colors="k", linewidths=0.4)
    fig.colorbar(cs, ax=ax, label=f"learned energy of a {chemical_symbols[probe]} probe (eV)")
    for k, (x, y, _) in enumerate(planar):
        ax.add_patch(
            plt.Circle((x, y), 0.35 * covalent_radii[numbers[k]] + 0.1, fc="white", ec="k", zorder=3)
        )
        ax.text(x, y, f"{chemical_symbols[numbers[k]]}{k}", ha="center", va="center", fontsize=6, zorder=4)
    ax.set_aspect("equal")
    ax.set_xlabel("Å")
    ax.set_ylabel("Å")
    ax.set_title(title or f"local chemical potential, {chemical_symbols[probe]} probe", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
