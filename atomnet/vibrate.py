"""``atomnet vibrate MODEL STRUCTURE``: harmonic frequencies and normal modes from the exact Hessian.

    atomnet relax schnet-md17-ethanol ethanol.xyz --fmax 1e-4 --out ethanol_min.xyz
    atomnet vibrate schnet-md17-ethanol ethanol_min.xyz --out vib/

The Hessian H = ∂²E/∂R∂R comes from double backpropagation through the model
(:func:`atomnet.potential.hessian`: exact, no finite-difference step to choose, one backward pass per block of
rows), not from displaced structures as ASE's ``Vibrations`` does. Frequencies and modes are the eigenpairs of
the mass-weighted Hessian M^-1/2 H M^-1/2 (ASE's ``VibrationsData``, masses from the structure): ω² in
eV/(Å² amu), reported as energies ħω (meV) and wavenumbers (cm⁻¹); imaginary frequencies (a saddle point, or a
structure not at a minimum) are printed with an ``i``. The six (five for linear molecules) translations and
rotations come out near zero, up to how well the structure is relaxed.

Writes ``vibrations.txt`` (the table), ``vibrations.json`` (frequencies, energies, Hessian in eV/Å²) and
``mode_NN.traj`` (an animation of each mode, ASE trajectory).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def vibrations(atoms, potential, energy_unit: str = "eV", rows_per_pass: int = 16):
    """``ase.vibrations.VibrationsData`` of ``atoms`` with the exact Hessian of ``potential`` (eV/Å²).

    ``potential``: a :class:`~atomnet.potential.Potential`; evaluated in its own dtype (use float64 for
    vibrations: float32 round-off on second derivatives is ~1e-3 eV/Å²).
    """
    import torch
    from ase.vibrations import VibrationsData

    from atomnet import units
    from atomnet.data.batch import batch_from_atoms
    from atomnet.potential import hessian

    batch = batch_from_atoms([atoms], cutoff=potential.cutoff).to(potential.device, potential.dtype)
    h = hessian(potential.model, batch, rows_per_pass) * units.energy_factor(energy_unit)
    h = 0.5 * (h + h.T)  # symmetric up to round-off; symmetrise before diagonalising
    return VibrationsData.from_2d(atoms, h.to(torch.float64).cpu().numpy())


def mode_table(vib) -> list[dict]:
    """One row per mode: index, energy (meV) and wavenumber (cm⁻¹); imaginary ones flagged."""
    rows = []
    for k, (e, f) in enumerate(zip(vib.get_energies(), vib.get_frequencies(), strict=True)):
        imaginary = abs(e.imag) > abs(e.real)
        rows.append(
            {
                "mode": k,
                "energy_meV": float(1000 * (e.imag if imaginary else e.real)),
                "wavenumber_cm-1": float(f.imag if imaginary else f.real),
                "imaginary": bool(imaginary),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'mode':>4}  {'meV':>10}  {'cm^-1':>10}"]
    for r in rows:
        i = "i" if r["imaginary"] else " "
        lines.append(f"{r['mode']:>4}  {r['energy_meV']:>9.3f}{i}  {r['wavenumber_cm-1']:>9.2f}{i}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="pretrained name, model file or checkpoint")
    parser.add_argument("structure", help="structure file readable by ase.io.read (relax it first)")
    parser.add_argument("--out", default="vibrations", help="output folder")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--energy-unit", default=None, help="model energy unit (default: from the file)")
    parser.add_argument("--rows-per-pass", type=int, default=16, help="Hessian rows per backward pass")
    parser.add_argument(
        "--temperature", type=float, default=300.0, help="K, amplitude of the mode animations"
    )
    parser.add_argument("--frames", type=int, default=30, help="frames per mode animation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    from ase.io import write

    from atomnet.data.ase_io import read_structure
    from atomnet.errors import AtomNetError
    from atomnet.files import atomic_output
    from atomnet.relax import calculator_for

    if args.rows_per_pass < 1:
        raise AtomNetError(f"--rows-per-pass must be >= 1, got {args.rows_per_pass}")
    atoms = read_structure(args.structure)
    calc = calculator_for(args)  # checks elements, overlaps, units like every other command
    atoms.calc = calc
    fmax = float(np.sqrt((atoms.get_forces() ** 2).sum(axis=1).max()))
    vib = vibrations(atoms, calc.potentials[0], calc.energy_unit, args.rows_per_pass)
    rows = mode_table(vib)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    with atomic_output(out / "vibrations.txt", ".txt") as tmp:
        tmp.write_text(table + "\n")
    record = {
        "structure": str(args.structure),
        "model": str(args.model),
        "max_force_eV/A": fmax,
        "modes": rows,
        "hessian_eV/A2": vib.get_hessian_2d().tolist(),
    }
    with atomic_output(out / "vibrations.json", ".json") as tmp:
        tmp.write_text(json.dumps(record))
    for k in range(len(rows)):
        frames = list(vib.iter_animated_mode(k, temperature=args.temperature, frames=args.frames))
        with atomic_output(out / f"mode_{k:02d}.traj", ".traj") as tmp:
            write(tmp, frames, format="traj")
    print(table)
    if fmax > 0.01:
        print(f"warning: max force {fmax:.3g} eV/Å: the structure is not at a minimum (atomnet relax first)")
    print(f"wrote {out / 'vibrations.txt'}, {out / 'vibrations.json'}, {len(rows)} mode_NN.traj in {out}")
    return 0
