"""Exact Hessian (``atomnet vibrate``, double backpropagation) vs ASE's finite-difference ``Vibrations`` on the
same model: time and agreement of the frequencies, for ethanol relaxed with the shipped MD17 model.

    python scripts/bench_vibrate.py [--model schnet-md17-ethanol] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from ase.build import molecule
from ase.vibrations import Vibrations

from atomnet.calculator import AtomNetCalculator
from atomnet.pretrained import load_model
from atomnet.relax import relax
from atomnet.vibrate import vibrations


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="schnet-md17-ethanol")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calc = AtomNetCalculator.from_checkpoint(args.model, dtype=torch.float64)
    start = molecule("CH3CH2OH")
    start.rattle(0.05, seed=1)
    atoms = relax(start, calc, fmax=1e-4).atoms
    pot = load_model(args.model).double()
    vibrations(atoms, pot)  # warm-up
    t_exact, t_fd = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        exact = vibrations(atoms, pot)
        t_exact.append(time.perf_counter() - t)
        a = atoms.copy()
        a.calc = calc
        folder = tempfile.mkdtemp()
        t = time.perf_counter()
        vib = Vibrations(a, delta=1e-3, nfree=4, name=f"{folder}/vib")
        vib.run()
        fd = vib.get_vibrations()
        t_fd.append(time.perf_counter() - t)
        shutil.rmtree(folder)
    df = np.abs(np.real(exact.get_frequencies()[6:]) - np.real(fd.get_frequencies()[6:])).max()
    dh = np.abs(exact.get_hessian_2d() - fd.get_hessian_2d()).max()
    te, tf = statistics.median(t_exact), statistics.median(t_fd)
    print(
        f"{len(atoms)} atoms: exact Hessian {te:.3f} s, ASE Vibrations (4-point, 1e-3 Å) {tf:.3f} s "
        f"({tf / te:.1f}x); max |Δ frequency| {df:.2e} cm^-1, max |ΔH| {dh:.2e} eV/Å²"
    )


if __name__ == "__main__":
    main()
