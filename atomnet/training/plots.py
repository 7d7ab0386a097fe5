"""Parity plot and error histogram (matplotlib, Agg backend; imported only here).

Inputs are the arrays of :func:`atomnet.training.evaluate.predict` (eV, eV/Å); plots show kcal/mol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atomnet.files import save_figure
from atomnet.units import KCAL_PER_MOL

EV_TO_KCAL = 1.0 / KCAL_PER_MOL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(pred: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(name, reference, prediction, unit) per panel, in kcal/mol (energies relative to the mean reference);
    one more panel per extra target of a multitask model, in its own unit."""
    e_ref = pred["energy_ref"] * EV_TO_KCAL
    shift = e_ref.mean()
    panels = [("energy", e_ref - shift, pred["energy"] * EV_TO_KCAL - shift, "kcal/mol (minus mean)")]
    if "forces" in pred:
        panels.append(
            (
                "force components",
                pred["forces_ref"].reshape(-1) * EV_TO_KCAL,
                pred["forces"].reshape(-1) * EV_TO_KCAL,
                "kcal/mol/Å",
            )
        )
    units = pred.get("property_units", {})
    for name in pred.get("properties", []):
        panels.append((str(name), pred[f"{name}_ref"], pred[str(name)], str(units.get(str(name), ""))))
    return panels


def _grid(plt, n: int, height: float):
    """A figure with ``n`` panels, at most 4 per row (unused axes hidden)."""
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def parity_plot(pred: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Predicted vs reference energy (and force components), with MAE in the legend. Returns ``path``."""
    plt = _pyplot()
    panels = _panels(pred)
    fig, axes = _grid(plt, len(panels), 4.3)
    for ax, (name, ref, est, unit) in zip(axes.flat, panels, strict=False):
        lo, hi = float(min(ref.min(), est.min())), float(max(ref.max(), est.max()))
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, zorder=0)
        ax.scatter(ref, est, s=4, alpha=0.5, lw=0)
        mae = float(np.mean(np.abs(est - ref)))
        ax.set_title(f"{name}: MAE {mae:.3f} {unit.split(' ')[0]}")
        ax.set_xlabel(f"reference [{unit}]")
        ax.set_ylabel(f"predicted [{unit}]")
        ax.set_aspect("equal", adjustable="datalim")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def error_histogram(pred: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Histograms of prediction − reference for energies and force components. Returns ``path``."""
    plt = _pyplot()
    panels = _panels(pred)
    fig, axes = _grid(plt, len(panels), 3.6)
    for ax, (name, ref, est, unit) in zip(axes.flat, panels, strict=False):
        ax.hist(est - ref, bins=60, color="C1")
        ax.set_xlabel(f"{name} error [{unit.split(' ')[0]}]")
        ax.set_ylabel("count")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def learning_curve_plot(
    curves: dict[str, tuple[list[int], list[float]]], path: str | Path, ylabel: str, title: str = ""
) -> Path:
    """Test MAE vs training-set size on log-log axes; ``curves`` maps label → (sizes, maes).

    The one learning-curve plot of atomnet (neural networks and KRR). Written atomically (temp + rename).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4))
    for label, (n, mae) in curves.items():
        order = np.argsort(n)
        ax.loglog(np.asarray(n)[order], np.asarray(mae)[order], "o-", label=label)
    ax.set_xlabel("training set size N")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
