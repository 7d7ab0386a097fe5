"""Time and peak memory of one energy + forces evaluation through ``AtomNetCalculator`` for periodic water boxes
of growing size: both should grow linearly with the number of atoms (no O(N²) allocation in the calculator
path). Each size runs in its own process so that its peak RSS is its own.

    python scripts/scale_calculator.py --sizes 1000 5000 20000 50000 --threads 2 \
        --json docs/reliability/scale.json --png docs/reliability/scale.png
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MODEL = "schnet-md17-ethanol"


def water_box(n_atoms: int, seed: int = 0):
    """About ``n_atoms`` atoms of liquid-density water (1 g/cm³): randomly oriented molecules on a cubic grid
    of 3.1 Å spacing (no overlaps), periodic."""
    import numpy as np
    from ase import Atoms
    from ase.build import molecule

    k = max(1, round((n_atoms / 3) ** (1 / 3)))
    spacing = 3.104  # Å: 29.9 Å³ per molecule
    rng = np.random.default_rng(seed)
    h2o = molecule("H2O")
    grid = np.stack(np.meshgrid(*(3 * [np.arange(k)]), indexing="ij"), -1).reshape(-1, 3) * spacing
    positions, numbers = [], []
    for r in grid:
        w = h2o.copy()
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        positions.append(w.positions - w.positions.mean(0) + r)
        numbers.append(w.numbers)
    return Atoms(
        numbers=np.concatenate(numbers), positions=np.concatenate(positions), cell=[k * spacing] * 3, pbc=True
    )


def measure(n_atoms: int, threads: int, dtype: str, tabulate: bool = False) -> dict:
    """One size, in this process: build, warm-up evaluation, timed evaluation, peak RSS."""
    import torch

    from atomnet.calculator import AtomNetCalculator

    torch.set_num_threads(threads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    atoms = water_box(n_atoms)
    calc = AtomNetCalculator.from_checkpoint(MODEL, dtype=getattr(torch, dtype), skin=0.0, tabulate=tabulate)
    atoms.calc = calc
    t0 = time.perf_counter()
    atoms.get_forces()  # includes the first neighbour-list build
    first = time.perf_counter() - t0
    atoms.positions += 1e-3  # a new step: the list is rebuilt (skin 0)
    t0 = time.perf_counter()
    atoms.get_forces()
    step = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    n_pairs = int(calc.pairs.built.pair_i.numel())
    return {
        "n_atoms": len(atoms),
        "n_pairs": n_pairs,
        "seconds_first": first,
        "seconds_step": step,
        "us_per_atom": 1e6 * step / len(atoms),
        "peak_rss_MiB": peak / 1024,
        "peak_rss_before_MiB": base / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000, 50000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument(
        "--tabulate", action="store_true", help="tabulated filters (AtomNetCalculator option)"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--png", default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.threads, args.dtype, args.tabulate)))
        return
    rows = []
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--threads",
            str(args.threads),
            "--dtype",
            args.dtype,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{r['n_atoms']:>7} atoms {r['n_pairs']:>9} pairs: {r['seconds_step']:.3f} s/step "
            f"({r['us_per_atom']:.1f} µs/atom), peak RSS {r['peak_rss_MiB']:.0f} MiB "
            f"({1024 * (r['peak_rss_MiB'] - r['peak_rss_before_MiB']) / r['n_atoms']:.1f} KiB/atom above start)",
            flush=True,
        )
    record = {
        "model": MODEL,
        "threads": args.threads,
        "dtype": args.dtype,
        "tabulate": args.tabulate,
        "rows": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2))
    if args.png:
        plot(record, args.png)


def plot(record: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomnet.files import save_figure

    rows = record["rows"]
    n = [r["n_atoms"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.loglog(n, [r["seconds_step"] for r in rows], "o-", label="measured")
    ax1.loglog(n, [rows[0]["seconds_step"] * x / n[0] for x in n], "k--", lw=0.8, label="linear")
    ax1.set(xlabel="atoms", ylabel="s per energy + forces", title="time")
    ax1.legend()
    extra = [r["peak_rss_MiB"] - r["peak_rss_before_MiB"] for r in rows]
    ax2.loglog(n, extra, "o-", label="measured")
    ax2.loglog(n, [extra[-1] * x / n[-1] for x in n], "k--", lw=0.8, label="linear")
    ax2.set(xlabel="atoms", ylabel="peak RSS above start / MiB", title="memory")
    ax2.legend()
    fig.suptitle(f"AtomNetCalculator, {record['model']}, periodic water, {record['threads']} threads")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
