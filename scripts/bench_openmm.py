"""OpenMM NVE with the atomnet force vs ``atomnet md`` NVE: steps/s for MD17 ethanol on one torch thread.

Both integrate the same start (velocities from :func:`atomnet.md.init_velocities`, 0.5 fs, the pretrained
``schnet-md17-ethanol``); runs are interleaved so that load from other jobs hits every engine alike.

    python scripts/bench_openmm.py --steps 1000 --repeats 5 [--dtype float64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import openmm
import torch
from ase import units as ase_units
from ase.io import read
from openmm import unit

from atomnet.calculator import AtomNetCalculator
from atomnet.interfaces.openmm import add_atomnet_force, system_from_atoms
from atomnet.md import init_velocities, run_md

MODEL = "schnet-md17-ethanol"
FRAMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md17" / "ethanol_dft_1200.xyz"


def openmm_steps_per_second(atoms, platform: str, steps: int, dtype: torch.dtype, dt_fs: float) -> float:
    system = system_from_atoms(atoms)
    add_atomnet_force(system, MODEL, atoms.numbers, dtype=dtype)
    integrator = openmm.VerletIntegrator(dt_fs * unit.femtosecond)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(atoms.positions / 10)  # Å -> nm
    ctx.setVelocities(atoms.get_velocities() * (ase_units.fs * 1e3) / 10)  # Å/ASE time -> nm/ps
    integrator.step(1)  # timed after the first force evaluation, like run_md
    start = time.perf_counter()
    integrator.step(steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    atoms = read(FRAMES, index=0)
    init_velocities(atoms, 300.0, seed=0)
    speeds: dict[str, list[float]] = {"atomnet md": [], "OpenMM Reference": [], "OpenMM CPU": []}
    for rep in range(args.repeats):
        ase_atoms = atoms.copy()
        ase_atoms.set_velocities(atoms.get_velocities())
        calc = AtomNetCalculator.from_checkpoint(MODEL, dtype=dtype)
        res = run_md(
            calc,
            ase_atoms,
            "nve",
            timestep_fs=args.timestep,
            steps=args.steps,
            init_velocity=False,
            progress=False,
        )
        speeds["atomnet md"].append(res.steps_per_second)
        for platform in ("Reference", "CPU"):
            speeds[f"OpenMM {platform}"].append(
                openmm_steps_per_second(atoms, platform, args.steps, dtype, args.timestep)
            )
        print(f"run {rep}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in speeds.items()) + " steps/s")
    print(
        f"median of {args.repeats} x {args.steps} steps ({args.dtype}, {args.threads} thread(s)): "
        + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in speeds.items())
        + " steps/s"
    )


if __name__ == "__main__":
    main()
