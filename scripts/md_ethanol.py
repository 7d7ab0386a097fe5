"""MD of ethanol with a trained atomnet SchNet, starting from the first MD17 frame.

    python scripts/md_ethanol.py --model runs/schnet_md17_ethanol/model.pt --steps 20000 --out md_ethanol

Reads the first frame of ../shared/data/md17/ethanol_dft_1200.xyz (Å; falls back to ase.build.molecule),
runs NVE (or Langevin/NVT) at 0.5 fs through :func:`atomnet.md.run_md` and prints the NVE energy drift in
eV/atom/ps. Outputs in ``--out``: md.extxyz, md.log, md.png. The model file must predict eV (the default of
atomnet training, which converts MD17 kcal/mol once at load time); otherwise pass ``--energy-unit``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from ase.build import molecule
from ase.io import read

from atomnet.calculator import AtomNetCalculator
from atomnet.md import ENSEMBLES, run_md

MD17_ETHANOL = Path(__file__).resolve().parents[2] / "shared" / "data" / "md17" / "ethanol_dft_1200.xyz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="trained atomnet model file or checkpoint")
    parser.add_argument("--structure", default=str(MD17_ETHANOL), help="start structure (first frame)")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default="nve")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--out", default="md_ethanol")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--energy-unit", default=None, help="model energy unit if not eV/not in the file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    path = Path(args.structure)
    atoms = read(path, index=0) if path.is_file() else molecule("CH3CH2OH")
    atoms.calc = None
    kwargs = {"energy_unit": args.energy_unit} if args.energy_unit else {}
    calc = AtomNetCalculator.from_checkpoint(args.model, dtype=getattr(torch, args.dtype), **kwargs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_md(
        calc,
        atoms,
        ensemble=args.ensemble,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        steps=args.steps,
        trajectory=out / "md.extxyz",
        log=out / "md.log",
        plot=out / "md.png",
        seed=args.seed,
    )
    print(
        f"ethanol {args.ensemble} {args.steps} steps x {args.timestep} fs: {result.steps_per_second:.1f} steps/s, "
        f"mean T {result.temperature.mean():.1f} K, E_tot drift {result.drift:.2e} eV/atom/ps, "
        f"neighbour-list builds {calc.n_neighbor_builds}"
    )
    print("wrote", ", ".join(str(p) for p in result.files.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
