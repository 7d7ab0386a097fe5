#!/usr/bin/env python
"""Generate the embedded ethanol GFN2-xTB MD data set (data/ethanol_xtb.extxyz).

Langevin MD of ethanol with ASE; energies and forces from GFN2-xTB via the
``tblite`` ASE calculator. Output is extended XYZ in ASE units:
energy in eV (header key ``energy``), forces in eV/Angstrom (per-atom
``forces`` column), positions in Angstrom.

Labels are recomputed at the *rounded* positions that are written to disk, so
the stored geometry and labels are exactly consistent.

Usage:
    python scripts/generate_xtb_ethanol.py --frames 2000 --temperature 500 \
        --seed 42 --out data/ethanol_xtb.extxyz
"""

from __future__ import annotations

import os

# Ethanol is tiny: OpenMP threads only add overhead (~20x slower on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.constraints import FixCom  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import Stationary, ZeroRotation  # noqa: E402
from tqdm import tqdm  # noqa: E402

POS_FMT = "%.6f"
FORCE_FMT = "%.6f"


def make_calc():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def format_frame(symbols, pos, forces, energy, idx, temperature, step):
    lines = [str(len(symbols))]
    lines.append(
        "Properties=species:S:1:pos:R:3:forces:R:3 "
        f"energy={energy!r} frame={idx} md_step={step} "
        f"config_type=md_{temperature:g}K "
        'energy_unit=eV force_unit=eV/Ang method=GFN2-xTB pbc="F F F"'
    )
    for s, p, f in zip(symbols, pos, forces, strict=True):
        lines.append(s + " " + " ".join(POS_FMT % x for x in p) + " " + " ".join(FORCE_FMT % x for x in f))
    return "\n".join(lines) + "\n"


def thermalize(atoms, temperature_K, rng):
    try:  # ASE >= 3.29
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # older ASE
        from ase.md.velocitydistribution import (
            MaxwellBoltzmannDistribution as thermalize_momenta,
        )
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--temperature", type=float, default=500.0, help="K")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="data/ethanol_xtb.extxyz")
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--friction", type=float, default=0.01, help="1/fs")
    ap.add_argument("--interval", type=int, default=10, help="MD steps between frames")
    ap.add_argument("--equil", type=int, default=2000, help="equilibration steps")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    atoms = molecule("CH3CH2OH")
    atoms.calc = make_calc()
    thermalize(atoms, args.temperature, rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())  # instead of deprecated Langevin(fixcm=True)
    dyn = Langevin(
        atoms,
        timestep=args.timestep * units.fs,
        temperature_K=args.temperature,
        friction=args.friction / units.fs,
        fixcm=False,
        rng=rng,
    )

    t0 = time.perf_counter()
    for _ in tqdm(range(args.equil), desc="equilibrate", leave=False):
        dyn.run(1)

    symbols = atoms.get_chemical_symbols()
    chunks = []
    energies = []
    # unconstrained copy: stored forces are the raw tblite forces (FixCom
    # would otherwise project out the net force)
    lab = Atoms(symbols, positions=atoms.positions)
    lab.calc = make_calc()
    for i in tqdm(range(args.frames), desc="frames"):
        dyn.run(args.interval)
        # label exactly the geometry that is written (rounded to POS_FMT)
        pos = np.array([[float(POS_FMT % x) for x in row] for row in atoms.positions])
        lab.positions = pos
        e = float(lab.get_potential_energy())
        f = lab.get_forces()
        energies.append(e)
        step = args.equil + (i + 1) * args.interval
        chunks.append(format_frame(symbols, pos, f, e, i, args.temperature, step))
    elapsed = time.perf_counter() - t0

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(chunks))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

    e = np.array(energies)
    print(
        f"tblite {version('tblite')}: wrote {len(e)} frames to {args.out} "
        f"({os.path.getsize(out) / 1e6:.2f} MB) in {elapsed:.1f} s; "
        f"energy range [{e.min():.4f}, {e.max():.4f}] eV (span {e.max() - e.min():.3f} eV)"
    )


if __name__ == "__main__":
    main()
