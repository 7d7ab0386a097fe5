"""How far tabulated filters move a trained model's predictions, next to float32 round-off.

For each frame of an extxyz file, energies and forces of a pretrained model (or model file) through
``AtomNetCalculator``: the exact model in float64 (reference), the exact model in float32 (round-off) and the
tabulated model (``tabulate=True``) in float64 and float32. Prints mean and max |ΔE| (eV) and |ΔF| (eV/Å).

    python scripts/tabulation_error.py schnet-md17-ethanol ../shared/data/md17/ethanol_dft_1200.xyz --frames 100
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from ase.io import read

from atomnet.calculator import AtomNetCalculator

VARIANTS = {
    "exact float32": dict(dtype=torch.float32),
    "tabulated float64": dict(dtype=torch.float64, tabulate=True),
    "tabulated float32": dict(dtype=torch.float32, tabulate=True),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="pretrained name or model file")
    parser.add_argument("structures", help="extxyz (or any ASE-readable) file")
    parser.add_argument("--frames", type=int, default=100, help="first N frames")
    parser.add_argument(
        "--spacing", type=float, default=None, help="table spacing, Å (default: the module's)"
    )
    args = parser.parse_args(argv)

    frames = read(args.structures, index=f":{args.frames}")
    reference = AtomNetCalculator.from_checkpoint(args.model, dtype=torch.float64)
    calcs = {name: AtomNetCalculator.from_checkpoint(args.model, **kw) for name, kw in VARIANTS.items()}
    de = {name: [] for name in calcs}
    df = {name: [] for name in calcs}
    force_scale = []
    for atoms in frames:
        atoms.calc = None
        reference.calculate(atoms, ["energy", "forces"])
        e0, f0 = reference.results["energy"], reference.results["forces"]
        force_scale.append(np.abs(f0).max())
        for name, calc in calcs.items():
            calc.calculate(atoms, ["energy", "forces"])
            de[name].append(abs(calc.results["energy"] - e0))
            df[name].append(np.abs(calc.results["forces"] - f0).max())
    print(f"{args.model} on {len(frames)} frames of {args.structures}; reference: exact model, float64")
    print(f"max |F| over frames {max(force_scale):.3f} eV/Å")
    print("| variant | mean abs ΔE (eV) | max abs ΔE (eV) | mean of max abs ΔF (eV/Å) | max abs ΔF (eV/Å) |")
    print("|---|---|---|---|---|")
    for name in calcs:
        print(
            f"| {name} | {np.mean(de[name]):.2e} | {np.max(de[name]):.2e} | "
            f"{np.mean(df[name]):.2e} | {np.max(df[name]):.2e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
