"""Pictures of explanations: molecules drawn with ASE's matplotlib renderer (``ase.visualize.plot``), atoms
coloured by relevance on a diverging scale centred at zero, a colour bar in the relevance's unit and the
predicted energy in the title. matplotlib is imported here only (STYLE principle 2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atomnet.explain.explanation import Explanation
from atomnet.files import save_figure

CMAP = "RdBu_r"  #: negative relevance blue, positive red, zero white


def principal_axes(positions: np.ndarray) -> np.ndarray:
    """Positions rotated so the molecule's largest extents lie in the drawing plane (x, y), Å."""
    centred = positions - positions.mean(0)
    if len(positions) < 2:
        return centred
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    rot = vt if vt.shape[0] == 3 else np.eye(3)
    if np.linalg.det(rot) < 0:
        rot[2] = -rot[2]
    return centred @ rot.T


def symmetric_norm(values: np.ndarray):
    """A colour normalisation centred at zero: [−m, m] with m = max |value| (or 1e-12 if all vanish)."""
    from matplotlib.colors import Normalize

    m = float(np.nanmax(np.abs(values))) if np.size(values) else 0.0
    m = m if m > 0 else 1e-12
    return Normalize(-m, m)


def draw_molecule(ax, numbers, positions, values, norm, labels: bool = True, cmap: str = CMAP):
    """Draw one molecule on ``ax`` with atoms coloured by ``values``; returns the 2D image positions of the
    atoms (for overlays such as arrows), in the axes' data coordinates."""
    import matplotlib.pyplot as plt
    from ase import Atoms
    from ase.data import chemical_symbols, covalent_radii
    from ase.visualize.plot import Matplotlib

    atoms = Atoms(numbers=numbers, positions=principal_axes(np.asarray(positions, dtype=float)))
    colours = plt.get_cmap(cmap)(norm(np.asarray(values, dtype=float)))[:, :3]
    writer = Matplotlib(atoms, ax, radii=0.45, colors=[tuple(c) for c in colours], show_unit_cell=0)
    writer.write()
    xy = writer.positions[: len(atoms), :2]
    # bonds from covalent radii (drawn under the atoms)
    radii = covalent_radii[atoms.numbers]
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    for i, j in zip(*np.nonzero(np.triu(d < 1.2 * (radii[:, None] + radii[None]), k=1)), strict=True):
        ax.plot(*xy[[i, j]].T, color="0.35", lw=2.0, zorder=0.5)
    if labels:
        for k, (x, y) in enumerate(xy):
            ax.text(x, y, f"{chemical_symbols[atoms.numbers[k]]}{k}", ha="center", va="center", fontsize=6)
    ax.set_axis_off()
    return xy


def _colorbar(fig, ax, norm, label: str):
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=norm, cmap=plt.get_cmap(CMAP)), ax=ax, shrink=0.7, label=label)


def _title(e: Explanation, index: int | None = None) -> str:
    from ase import Atoms

    head = f"#{index} " if index is not None else ""
    formula = Atoms(numbers=e.numbers).get_chemical_formula()
    return f"{head}{formula}  E = {e.energy:.3f} eV\n{e.method}"


def _panel(fig, ax, e: Explanation, index: int | None) -> None:
    """One molecule coloured by its relevance, with title and zero-centred colour bar."""
    norm = symmetric_norm(e.relevance)
    draw_molecule(ax, e.numbers, e.positions, e.relevance, norm)
    ax.set_title(_title(e, index), fontsize=9)
    _colorbar(fig, ax, norm, f"relevance ({e.units})")


def plot_explanations(
    explanations: Sequence[Explanation],
    path: str | os.PathLike,
    indices: Sequence[int] | None = None,
    columns: int = 4,
    max_panels: int = 24,
) -> Path:
    """One panel per molecule (the first ``max_panels``), each with its own zero-centred colour bar."""
    import matplotlib.pyplot as plt

    shown = list(explanations)[:max_panels]
    if not shown:
        raise ValueError("no explanations to draw")
    indices = list(indices) if indices is not None else list(range(len(shown)))
    cols = min(columns, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        ax.set_axis_off()
    for k, (ax, e) in enumerate(zip(axes.flat, shown, strict=False)):
        _panel(fig, ax, e, indices[k])
    fig.tight_layout()
    return save_figure(fig, path)


def plot_comparison(
    rows: Sequence[Sequence[Explanation]], path: str | os.PathLike, indices: Sequence[int] | None = None
) -> Path:
    """The same molecules under several methods: one row per molecule, one column per method."""
    import matplotlib.pyplot as plt

    rows = [list(r) for r in rows]
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.8 * n_rows), squeeze=False)
    indices = list(indices) if indices is not None else list(range(n_rows))
    for r, row in enumerate(rows):
        for c, e in enumerate(row):
            _panel(fig, axes[r, c], e, indices[r])
    fig.tight_layout()
    return save_figure(fig, path)


def _labels(numbers) -> list[str]:
    from ase.data import chemical_symbols

    return [f"{chemical_symbols[z]}{k}" for k, z in enumerate(numbers)]


def plot_walks(
    explanation,
    pairs: np.ndarray,
    orders: np.ndarray | None,
    path: str | os.PathLike,
    top: int = 20,
) -> Path:
    """Three panels: the molecule with the ``top`` most relevant walks as arrows (colour = relevance on a
    zero-centred scale, width ∝ |relevance|; atoms coloured by their LRP relevance), the pair-relevance heat
    map (atoms labelled by element and index) and the relevance per body order."""
    import matplotlib.pyplot as plt

    e = explanation
    order = np.argsort(-np.abs(e.relevance))[:top]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [1.3, 1.1, 0.8]})
    ax = axes[0]
    atom_norm = symmetric_norm(e.atom_relevance)
    xy = draw_molecule(ax, e.numbers, e.positions, e.atom_relevance, atom_norm, labels=True)
    walk_norm = symmetric_norm(e.relevance[order])
    cmap = plt.get_cmap(CMAP)
    biggest = float(np.abs(e.relevance[order]).max()) if len(order) else 1.0
    rng = np.random.default_rng(0)
    for k in order[::-1]:  # most relevant drawn last (on top)
        w, r = e.walks[k], e.relevance[k]
        jitter = rng.normal(scale=0.06 * np.ptp(xy) / max(len(xy), 1) ** 0.5, size=2)
        for a, b in zip(w[:-1], w[1:], strict=True):
            if a == b:
                continue
            ax.annotate(
                "",
                xy=xy[b] + jitter,
                xytext=xy[a] + jitter,
                arrowprops=dict(
                    arrowstyle="-|>",
                    color=cmap(walk_norm(r)),
                    lw=0.5 + 3.0 * abs(r) / (biggest or 1.0),
                    shrinkA=6,
                    shrinkB=6,
                    connectionstyle="arc3,rad=0.15",
                    alpha=0.9,
                ),
                zorder=3,
            )
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=walk_norm, cmap=cmap), ax=ax, shrink=0.7, label="walk relevance (eV)")
    kind = "all" if e.complete else "top"
    ax.set_title(
        f"{len(order)} most relevant walks ({kind} {len(e.relevance):,} listed)\nE = {e.energy:.3f} eV, {e.rule}",
        fontsize=9,
    )
    ax = axes[1]
    norm = symmetric_norm(pairs)
    im = ax.imshow(pairs, cmap=CMAP, norm=norm)
    labels = _labels(e.numbers)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_title("pair relevance: walks visiting exactly {i, j} (diagonal: {i})", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.7, label="eV")
    ax = axes[2]
    if orders is not None:
        ks = np.arange(1, len(orders) + 1)
        ax.bar(ks, orders, color=[cmap(symmetric_norm(orders)(v)) for v in orders], edgecolor="k")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(ks, [f"{k}-body" for k in ks])
        ax.set_ylabel("relevance (eV)")
        ax.set_title("relevance by number of distinct atoms visited", fontsize=9)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "body orders need the full walk list\n(not with --top-k)", ha="center", va="center")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(curves: Sequence, path: str | os.PathLike, title: str = "") -> Path:
    """Mean perturbation curves (Δ learned energy vs fraction of atoms removed) of every method: MoRF solid,
    LeRF dashed, and the random baseline (grey, of the first method's run)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = plt.get_cmap("tab10")
    for k, c in enumerate(curves):
        ax.plot(c.fractions, c.morf.mean(0), color=colours(k), lw=2, label=f"{c.method} MoRF")
        ax.plot(c.fractions, c.lerf.mean(0), color=colours(k), lw=1.2, ls="--", label=f"{c.method} LeRF")
    if curves:
        ax.plot(curves[0].fractions, curves[0].random.mean(0), color="0.5", lw=2, label="random order")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("fraction of atoms removed")
    ax.set_ylabel("drop of the learned energy f(M) − f(M⁽ᵏ⁾) (eV)")
    ax.set_title(title or f"atom perturbation ({curves[0].perturbation if curves else ''})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_fidelity(results: dict, path: str | os.PathLike) -> Path:
    """Scatter of Σ_{i∈S} R_i against the energy drop per method, with the Pearson r in the legend."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.6), squeeze=False)
    for ax, (method, res) in zip(axes[0], results.items(), strict=True):
        ax.scatter(res["relevance_sums"], res["energy_drops"], s=6, alpha=0.6)
        ax.set_title(f"{method}\nPearson r = {res['pearson']:.3f}", fontsize=9)
        ax.set_xlabel("Σ relevance of S")
        ax.set_ylabel("f(M) − f(M ∖ S) (eV)")
    fig.tight_layout()
    return save_figure(fig, path)


def entry_matrix(e: Explanation) -> tuple[np.ndarray, list[str]]:
    """The entry relevance of a Coulomb-matrix network as a symmetric (n, n) matrix over the molecule's
    sorted real slots (padding dropped), and the atom label of each row (``Explanation.features`` holds the
    upper triangle with diagonal of the sorted matrix)."""
    if e.features is None:
        raise ValueError(f"{e.method}: this explanation has no entry relevance (not a feature-vector model)")
    d = len(e.features)
    size = int(round((np.sqrt(8 * d + 1) - 1) / 2))
    iu = np.triu_indices(size)
    full = np.zeros((size, size))
    full[iu] = e.features
    full = full + np.triu(full, 1).T
    diag = e.feature_atoms[iu[0] == iu[1]]
    real = np.flatnonzero(diag[:, 0] >= 0)
    labels = [_labels(e.numbers)[a] for a in diag[real, 0]]
    return full[np.ix_(real, real)], labels


def plot_entries(explanations: Sequence[Explanation], path: str | os.PathLike) -> Path:
    """For each explanation of a Coulomb-matrix network: the molecule coloured by atom relevance and, beside
    it, the relevance of every entry M_ij of its sorted matrix (the "pixels"; an off-diagonal entry is shown
    in both triangles and counts once)."""
    import matplotlib.pyplot as plt

    shown = list(explanations)
    fig, axes = plt.subplots(len(shown), 2, figsize=(9.5, 4.0 * len(shown)), squeeze=False)
    for r, e in enumerate(shown):
        _panel(fig, axes[r, 0], e, None)
        matrix, labels = entry_matrix(e)
        norm = symmetric_norm(matrix)
        ax = axes[r, 1]
        ax.imshow(matrix, cmap=CMAP, norm=norm)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"relevance of the sorted Coulomb-matrix entries\n{e.method}", fontsize=9)
        _colorbar(fig, ax, norm, f"relevance ({e.units})")
    fig.tight_layout()
    return save_figure(fig, path)
