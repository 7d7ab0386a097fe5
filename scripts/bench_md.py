"""MD steps per second: atomnet's ASE calculator side by side with schnetpack's SpkCalculator.

Systems: a 21-atom molecule (QM9 gdb 39683, C7H12O2 — aspirin size, inline coordinates) and a periodic box of
343 randomly oriented water molecules (1,029 atoms) at 1 g/cm³. Model for both codes: SchNet with 128 features,
3 interactions, 50 Gaussians, cosine cutoff 5 Å, float32, random weights (speed does not depend on training).
Same torch threads and flush-denormal setting for both; velocity Verlet at 0.5 fs from the same
Maxwell–Boltzmann velocities (300 K); nothing attached to the integrator. Each configuration is timed
``--repeats`` times, interleaved, after warm-up steps; the best run is reported.

atomnet is measured eagerly and with ``compile=True`` (torch.compile; the compilation happens in the warm-up
steps and is not timed), each with the exact filter networks (``tabulate=False``) and with ``tabulate=True``
(cubic Hermite tables of the filters; the script prints their force error next to float32 round-off). The
calculator's default, ``tabulate="auto"``, is one of the two; the script prints which. schnetpack is
measured with ASENeighborList (its default) and with SkinNeighborList(MatScipyNeighborList) using the same
skin as atomnet. ``--model dtnn`` measures atomnet's DTNN alone; ``--png`` draws the table. schnetpack 2.1.1 conflicts with
torch 2.13 in pip's resolver; ``scripts/setup_bench_env.sh`` builds a virtual environment with both (and
the two shims schnetpack needs under torch >= 2.6 are applied below):

    bash scripts/setup_bench_env.sh && .venv-bench/bin/python scripts/bench_md.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import atomnet  # noqa: F401  (before torch, as the atomnet command does: its OpenMP wait setting)

# isort: split
import numpy as np
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from atomnet.calculator import AtomNetCalculator
from atomnet.models import DTNN, SchNet
from atomnet.potential import Potential

HPARAMS = dict(n_atom_basis=128, n_filters=128, n_interactions=3, n_rbf=50, cutoff=5.0)
#: ``--model dtnn``: the shipped dtnn-md17-ethanol architecture (atomnet only: schnetpack 2 has no DTNN)
DTNN_HPARAMS = dict(n_atom_basis=64, n_factors=64, n_interactions=3, cutoff=5.0)

# QM9 gdb 39683 (C7H12O2, 21 atoms), B3LYP geometry from the QM9 xyz file, Å
GDB_39683 = """
C 0.0800688 1.0777418 -0.5038099
C 1.4920673 1.4243261 0.0037143
C 1.3937070 0.0807662 0.7616294
O 0.0675833 -0.1654646 0.2330550
C 2.3711477 -1.0180154 0.3697210
C 1.9058426 -2.4210448 0.8300631
C 2.1540685 -3.2999146 -0.4064307
C 1.9473846 -2.2918389 -1.5373185
O 2.5137614 -1.0769574 -1.0537327
H -0.7226603 1.7488817 -0.1748247
H -0.0105157 0.9102417 -1.5828578
H 2.2634790 1.4462266 -0.7652472
H 1.5622781 2.3126166 0.6327205
H 1.3722072 0.1691029 1.8580411
H 3.3562743 -0.7620854 0.7870243
H 2.4421275 -2.7619871 1.7182407
H 0.8378062 -2.3942279 1.0643474
H 3.1836430 -3.6727094 -0.4198407
H 1.4785896 -4.1569203 -0.4676477
H 2.4612332 -2.5543264 -2.4668895
H 0.8767052 -2.1590749 -1.7496865
"""


def small_molecule() -> Atoms:
    rows = [line.split() for line in GDB_39683.strip().splitlines()]
    return Atoms([r[0] for r in rows], positions=[[float(x) for x in r[1:]] for r in rows])


def water_box(n_side: int = 7, density: float = 1.0, seed: int = 0) -> Atoms:
    """n_side³ randomly oriented H2O on a cubic grid, box length from ``density`` (g/cm³)."""
    rng = np.random.default_rng(seed)
    n = n_side**3
    length = (n * 18.015 / (density * 0.60221408)) ** (1 / 3)  # Å (1 g/cm³ = 0.6022 u/Å³)
    h2o = molecule("H2O")
    h2o.positions -= h2o.get_center_of_mass()
    atoms = Atoms(cell=[length] * 3, pbc=True)
    spacing = length / n_side
    for idx in np.ndindex(n_side, n_side, n_side):
        w = h2o.copy()
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        w.translate((np.array(idx) + 0.5) * spacing)
        atoms += w
    return atoms


def atomnet_calculator(
    skin: float,
    compile: bool = False,
    tabulate: bool = False,
    dtype: torch.dtype = torch.float32,
    model: str = "schnet",
) -> AtomNetCalculator:
    torch.manual_seed(0)
    pot = Potential(SchNet(**HPARAMS) if model == "schnet" else DTNN(**DTNN_HPARAMS))
    return AtomNetCalculator(pot, dtype=dtype, skin=skin, compile=compile, tabulate=tabulate)


def tabulation_error(atoms: Atoms, skin: float, model: str) -> tuple[float, float]:
    """Max |ΔF| (eV/Å) against the exact float64 model: of the float32 tabulated model, and of the float32
    exact model (round-off), on ``atoms``."""
    reference = atomnet_calculator(skin, dtype=torch.float64, model=model).get_forces(atoms.copy())
    errors = []
    for tabulate in (True, False):
        forces = atomnet_calculator(skin, tabulate=tabulate, model=model).get_forces(atoms.copy())
        errors.append(float(np.abs(forces - reference).max()))
    return errors[0], errors[1]


def schnetpack_calculator(model_path: str, neighbor_list: str, skin: float):
    import schnetpack as spk
    import schnetpack.transform as trn
    from schnetpack.interfaces import SpkCalculator

    cutoff = HPARAMS["cutoff"]
    if neighbor_list == "ase":
        nbl = trn.ASENeighborList(cutoff=cutoff)
    else:
        nbl = trn.SkinNeighborList(trn.MatScipyNeighborList(cutoff=cutoff), cutoff_skin=skin)
    del spk
    return SpkCalculator(
        model_path, nbl, energy_unit="eV", position_unit="Ang", device="cpu", dtype=torch.float32
    )


def import_schnetpack():
    """Import schnetpack 2.1.1 under torch >= 2.6: two shims (see module docstring)."""
    import typing

    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):  # removed from torch; schnetpack imports it
        dataloader.T_co = typing.TypeVar("T_co", covariant=True)
    # SpkCalculator loads a pickled nn.Module; torch >= 2.6 defaults to weights_only=True
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    import schnetpack

    return schnetpack


def save_schnetpack_model(path: str) -> None:
    import schnetpack as spk

    torch.manual_seed(0)
    cutoff = HPARAMS["cutoff"]
    representation = spk.representation.SchNet(
        n_atom_basis=HPARAMS["n_atom_basis"],
        n_filters=HPARAMS["n_filters"],
        n_interactions=HPARAMS["n_interactions"],
        radial_basis=spk.nn.GaussianRBF(n_rbf=HPARAMS["n_rbf"], cutoff=cutoff),
        cutoff_fn=spk.nn.CosineCutoff(cutoff),
    )
    model = spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=HPARAMS["n_atom_basis"], output_key="energy"),
            spk.atomistic.Forces(energy_key="energy", force_key="forces"),
        ],
    )
    torch.save(model, path)


def steps_per_second(calc, atoms: Atoms, steps: int, warmup: int) -> float:
    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.run(warmup)
    start = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - start
    assert np.isfinite(atoms.get_potential_energy())
    return steps / elapsed


def speed_plot(table: dict[tuple[str, str], float], systems: list[str], names: list[str], path: str) -> None:
    """One panel per system: steps/s of every configuration as horizontal bars, atomnet in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomnet.files import save_figure

    fig, axes = plt.subplots(
        1, len(systems), figsize=(6 * len(systems), 0.5 * len(names) + 1.5), squeeze=False
    )
    for ax, system in zip(axes[0], systems, strict=True):
        rates = [table[system, n] for n in names]
        colors = ["tab:blue" if n.startswith("atomnet") else "tab:gray" for n in names]
        ax.barh(range(len(names)), rates, color=colors)
        for k, rate in enumerate(rates):
            ax.text(rate, k, f" {rate:.1f}", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.2 * max(rates))
        ax.set_xlabel("MD steps per second (higher is better)")
        ax.set_title(system, fontsize=10)
    fig.tight_layout()
    print(f"wrote {save_figure(fig, path)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flush-denormal", type=int, choices=(0, 1), default=1)
    parser.add_argument("--skin", type=float, default=0.5, help="Verlet skin, Å (both codes)")
    parser.add_argument("--steps-small", type=int, default=300)
    parser.add_argument("--steps-large", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-schnetpack", action="store_true")
    parser.add_argument("--model", choices=("schnet", "dtnn"), default="schnet", help="dtnn: atomnet only")
    parser.add_argument("--png", default=None, help="also draw the steps/s as bars into this PNG")
    parser.add_argument(
        "--json", default=None, help="also write the steps/s by system and configuration here"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd atomnet column")
    parser.add_argument(
        "--no-tabulate", action="store_true", help="skip the tabulated-filter atomnet columns"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(bool(args.flush_denormal))
    systems = {"C7H12O2 (21 atoms)": (small_molecule(), args.steps_small)}
    box = water_box()
    systems[f"water box ({len(box)} atoms, PBC)"] = (box, args.steps_large)

    spk_version = None
    tmp = tempfile.TemporaryDirectory()
    if not args.no_schnetpack and args.model == "schnet":
        try:
            spk_version = import_schnetpack().__version__
            model_path = os.path.join(tmp.name, "spk_schnet.pt")
            save_schnetpack_model(model_path)
        except Exception as exc:  # report and measure atomnet alone
            print(f"schnetpack unavailable ({type(exc).__name__}: {exc}); measuring atomnet alone")
            spk_version = None

    def configs():
        yield "atomnet", lambda: atomnet_calculator(args.skin, model=args.model)
        if not args.no_compile:
            yield "atomnet compiled", lambda: atomnet_calculator(args.skin, compile=True, model=args.model)
        if not args.no_tabulate:
            yield "atomnet tabulated", lambda: atomnet_calculator(args.skin, tabulate=True, model=args.model)
            if not args.no_compile:
                yield (
                    "atomnet compiled tabulated",
                    lambda: atomnet_calculator(args.skin, compile=True, tabulate=True, model=args.model),
                )
        if spk_version:
            yield "schnetpack ASENeighborList", lambda: schnetpack_calculator(model_path, "ase", args.skin)
            yield "schnetpack Skin+MatScipy", lambda: schnetpack_calculator(model_path, "skin", args.skin)

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, schnetpack {spk_version}, "
        f"threads {args.threads}, flush_denormal {bool(args.flush_denormal)}, skin {args.skin} Å, "
        f"{args.model} {HPARAMS if args.model == 'schnet' else DTNN_HPARAMS}, float32, "
        f"{platform.machine()} ({os.cpu_count()} CPUs)"
    )
    torch.manual_seed(0)
    default = AtomNetCalculator(
        Potential(SchNet(**HPARAMS) if args.model == "schnet" else DTNN(**DTNN_HPARAMS))
    )
    column = "atomnet tabulated" if default.tabulated else "atomnet"
    print(f"default AtomNetCalculator (tabulate='auto'): {default.tabulation[0]} -> the {column!r} column")
    table: dict[tuple[str, str], float] = {}
    for system, (atoms, steps) in systems.items():
        calcs = {name: make() for name, make in configs()}
        for _ in range(args.repeats):
            for name, calc in calcs.items():
                rate = steps_per_second(calc, atoms, steps, warmup=max(3, steps // 10))
                table[system, name] = max(table.get((system, name), 0.0), rate)
        for name in calcs:
            print(f"  {system:32s} {name:28s} {table[system, name]:9.2f} steps/s", flush=True)
        if not args.no_tabulate:
            tab, round_off = tabulation_error(atoms, args.skin, args.model)
            print(
                f"  {system:32s} max |F - F_exact,float64|: tabulated float32 {tab:.2e} eV/Å, "
                f"exact float32 {round_off:.2e} eV/Å",
                flush=True,
            )

    names = [n for n, _ in configs()]
    ours = [n for n in names if n.startswith("atomnet")]
    peers = [n for n in names if n not in ours]
    baseline = "best schnetpack" if peers else "atomnet"  # without schnetpack: ratios to eager atomnet
    compared = ours if peers else ours[1:]
    print(
        "\n| system | " + " | ".join(names) + " | " + " | ".join(f"{n} / {baseline}" for n in compared) + " |"
    )
    print("|---" * (len(names) + len(compared) + 1) + "|")
    for system in systems:
        reference = max(table[system, n] for n in (peers or ["atomnet"]))
        rates = " | ".join(f"{table[system, n]:.2f}" for n in names)
        ratios = " | ".join(f"{table[system, n] / reference:.2f}x" for n in compared)
        print(f"| {system} | {rates} | {ratios} |")
    if args.png:
        speed_plot(table, list(systems), names, args.png)
    if args.json:
        from atomnet.baselines.commands import write_json

        rates = {system: {n: table[system, n] for n in names} for system in systems}
        write_json(args.json, {"steps_per_s": rates, "threads": args.threads, "schnetpack": spk_version})
    print("\ncommand: " + " ".join([os.path.basename(sys.executable), *sys.argv]))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
