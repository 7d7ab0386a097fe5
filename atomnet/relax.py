"""``atomnet relax MODEL STRUCTURE``: geometry optimisation with ASE's optimisers, optionally of the cell.

    atomnet relax schnet-md17-ethanol ethanol.xyz --fmax 0.01 --optimizer BFGS --out relaxed.xyz
    atomnet relax my-model.pt crystal.cif --cell --fmax 0.02 --out relaxed.cif

Positions move until the largest atomic force is below ``fmax`` (eV/Å). With ``--cell`` (periodic structures)
the cell relaxes too, through ASE's ``FrechetCellFilter`` (Tadmor's Fréchet derivative of the energy with
respect to the cell): ``fmax`` then also bounds the stress times the volume, and hydrostatic pressure can be set
with ``--pressure`` (GPa). Writes the relaxed structure (format from the suffix), the optimiser trajectory
(``.traj``) and a convergence plot (energy and max force per step, PNG).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OPTIMIZERS = ("BFGS", "LBFGS", "FIRE", "BFGSLineSearch")


@dataclass
class RelaxResult:
    """Energies (eV) and max forces (eV/Å; with a cell filter, of the filter's generalised forces) per step."""

    atoms: object
    energies: list[float] = field(default_factory=list)
    fmax: list[float] = field(default_factory=list)
    converged: bool = False

    @property
    def steps(self) -> int:
        return max(len(self.energies) - 1, 0)


def relax(
    atoms,
    calculator,
    fmax: float = 0.01,
    optimizer: str = "BFGS",
    steps: int = 1000,
    cell: bool = False,
    pressure_GPa: float = 0.0,
    trajectory: str | Path | None = None,
) -> RelaxResult:
    """Relax ``atoms`` (a copy is made) with ``calculator``; returns the relaxed copy and the history."""
    from ase import optimize, units
    from ase.filters import FrechetCellFilter

    from atomnet.errors import AtomNetError

    if optimizer not in OPTIMIZERS:
        raise AtomNetError(f"unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if not fmax > 0:
        raise AtomNetError(f"--fmax must be > 0 eV/Å, got {fmax}")
    atoms = atoms.copy()
    atoms.calc = calculator
    if cell and not (atoms.pbc.all() and atoms.cell.rank == 3):
        raise AtomNetError("--cell needs a structure periodic in all three directions with a full cell")
    target = FrechetCellFilter(atoms, scalar_pressure=pressure_GPa * units.GPa) if cell else atoms
    result = RelaxResult(atoms=atoms)

    def record() -> None:
        result.energies.append(float(atoms.get_potential_energy()))
        result.fmax.append(float(np.sqrt((target.get_forces() ** 2).sum(axis=1).max())))

    opt = getattr(optimize, optimizer)(
        target, trajectory=None if trajectory is None else str(trajectory), logfile=None
    )
    opt.attach(record, interval=1)
    result.converged = bool(opt.run(fmax=fmax, steps=steps))
    return result


def plot_relaxation(result: RelaxResult, path: str | Path, title: str = "") -> Path:
    """Energy relative to the start and max force (log scale) per optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomnet.files import save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = np.arange(len(result.energies))
    ax1.plot(steps, np.asarray(result.energies) - result.energies[0], "o-", ms=3)
    ax1.set(xlabel="step", ylabel="E − E(start) / eV", title=title or "energy")
    ax2.semilogy(steps, result.fmax, "o-", ms=3)
    ax2.set(xlabel="step", ylabel="max force / eV/Å", title="convergence")
    fig.tight_layout()
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="pretrained name, model file or checkpoint")
    parser.add_argument("structure", help="structure file readable by ase.io.read (first frame is used)")
    parser.add_argument("--fmax", type=float, default=0.01, help="force criterion, eV/Å (default 0.01)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="BFGS")
    parser.add_argument("--steps", type=int, default=1000, help="maximum optimiser steps")
    parser.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    parser.add_argument("--pressure", type=float, default=0.0, help="hydrostatic pressure with --cell, GPa")
    parser.add_argument("--out", default="relaxed.xyz", help="relaxed structure (format from the suffix)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--energy-unit", default=None, help="model energy unit (default: from the file)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def calculator_for(args: argparse.Namespace):
    """The ASE calculator of a relax/vibrate command line (model, dtype, device, energy unit)."""
    import torch

    from atomnet.calculator import AtomNetCalculator

    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {"energy_unit": args.energy_unit} if args.energy_unit else {}
    return AtomNetCalculator.from_checkpoint(
        args.model, device=args.device, dtype=getattr(torch, args.dtype), **kwargs
    )


def run(args: argparse.Namespace) -> int:
    from ase.io import write

    from atomnet.data.ase_io import read_structure
    from atomnet.files import atomic_output

    atoms = read_structure(args.structure)
    calc = calculator_for(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    traj = out.with_suffix(".traj")
    result = relax(atoms, calc, args.fmax, args.optimizer, args.steps, args.cell, args.pressure, traj)
    with atomic_output(out, suffix=out.suffix) as tmp:
        write(tmp, result.atoms, format=None if out.suffix else "extxyz")
    png = plot_relaxation(result, out.with_suffix(".png"), title=Path(args.structure).name)
    state = "converged" if result.converged else f"NOT converged in {args.steps} steps"
    print(
        f"{state}: {result.steps} steps, E {result.energies[-1]:.6f} eV "
        f"({result.energies[-1] - result.energies[0]:+.6f}), max force {result.fmax[-1]:.4g} eV/Å; "
        f"wrote {out}, {traj}, {png}"
    )
    return 0 if result.converged else 1
