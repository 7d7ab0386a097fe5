"""Molecular dynamics with atomnet potentials through ASE integrators, and the ``atomnet md`` command.

Ensembles: ``nve`` (velocity Verlet), ``langevin`` (ASE Langevin), ``nvt`` (Nosé–Hoover chain,
``ase.md.nose_hoover_chain``). Initial velocities: Maxwell–Boltzmann at ``temperature_K`` with a seed, total
momentum (and, for molecules, angular momentum) removed.

Outputs in ``out``: ``md.extxyz`` (frames with energy, forces, per-atom energies), ``md.log`` (columns
time/ps, Epot/eV, Ekin/eV, Etot/eV, T/K) and ``md.png`` (energies and temperature over time). The log and PNG
are written at the end (also after Ctrl-C) through a temporary file and a rename.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase import units as ase_units

from atomnet.files import atomic_output, save_figure

ENSEMBLES = ("nve", "langevin", "nvt")
LOG_HEADER = "time_ps Epot_eV Ekin_eV Etot_eV T_K"


@dataclass
class MDResult:
    """Time series of a run. Shapes (n_records,): time in ps, energies in eV, temperature in K."""

    time_ps: np.ndarray
    epot: np.ndarray
    ekin: np.ndarray
    etot: np.ndarray
    temperature: np.ndarray
    n_atoms: int
    steps_per_second: float
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def drift(self) -> float:
        """Total-energy drift in eV/atom/ps (see :func:`energy_drift`)."""
        return energy_drift(self.time_ps, self.etot, self.n_atoms)


def energy_drift(time_ps: np.ndarray, etot: np.ndarray, n_atoms: int) -> float:
    """Slope of a least-squares line through E_tot(t), per atom: eV/atom/ps (signed)."""
    time_ps, etot = np.asarray(time_ps, dtype=float), np.asarray(etot, dtype=float)
    if len(time_ps) < 2:
        return 0.0
    slope = np.polyfit(time_ps - time_ps[0], etot - etot[0], 1)[0]
    return float(slope / n_atoms)


def make_integrator(
    atoms: Atoms,
    ensemble: str,
    timestep_fs: float,
    temperature_K: float,
    friction_per_fs: float = 0.01,
    tdamp_fs: float | None = None,
    seed: int = 0,
):
    """The ASE integrator for ``ensemble``; friction in 1/fs, thermostat damping time in fs."""
    dt = timestep_fs * ase_units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(
            atoms,
            dt,
            temperature_K=temperature_K,
            friction=friction_per_fs / ase_units.fs,
            fixcm=False,  # exact NVT sampling (ase >= 3.28 deprecates fixcm=True)
            rng=np.random.default_rng(seed),
        )
    if ensemble == "nvt":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        tdamp = (tdamp_fs if tdamp_fs is not None else 100 * timestep_fs) * ase_units.fs
        return NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=tdamp)
    raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")


def init_velocities(atoms: Atoms, temperature_K: float, seed: int = 0) -> None:
    """Maxwell–Boltzmann velocities at ``temperature_K``; zero total momentum (and rotation for molecules)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def write_log(path: Path, records: np.ndarray) -> None:
    """Write the MD log (columns of :data:`LOG_HEADER`) atomically."""
    lines = [f"# {LOG_HEADER}"] + [
        f"{t:.6f} {ep:.8f} {ek:.8f} {et:.8f} {temp:.3f}" for t, ep, ek, et, temp in records
    ]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_log(path: str | os.PathLike) -> np.ndarray:
    """Read an MD log: (n_records, 5) array of time/ps, Epot, Ekin, Etot (eV), T (K)."""
    return np.loadtxt(path, ndmin=2)


def plot_md(result: MDResult, path: str | os.PathLike) -> Path:
    """PNG of Epot, Ekin, Etot (eV, relative to the first Etot) and T (K) over time; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_e, ax_t) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    e0 = result.etot[0] if len(result.etot) else 0.0
    ax_e.plot(result.time_ps, result.epot - e0, label="E_pot")
    ax_e.plot(result.time_ps, result.ekin, label="E_kin")
    ax_e.plot(result.time_ps, result.etot - e0, label=f"E_tot (drift {result.drift:.2e} eV/atom/ps)")
    ax_e.set_ylabel(f"energy − E_tot(0) = {e0:.4f} / eV")
    ax_e.legend(loc="best", fontsize=8)
    ax_t.plot(result.time_ps, result.temperature, color="C3")
    ax_t.set_ylabel("T / K")
    ax_t.set_xlabel("time / ps")
    fig.tight_layout()
    return save_figure(fig, path)


def run_md(
    calculator,
    atoms: Atoms,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    friction: float = 0.01,
    trajectory: str | os.PathLike | None = None,
    log: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    seed: int = 0,
    log_interval: int = 1,
    traj_interval: int = 10,
    init_velocity: bool = True,
    progress: bool = True,
) -> MDResult:
    """Run ``steps`` MD steps of ``atoms`` (modified in place) with ``calculator``.

    Args:
        ensemble: ``"nve"``, ``"langevin"`` or ``"nvt"``.
        temperature_K: initial (Maxwell–Boltzmann) and thermostat temperature, K.
        timestep_fs: fs. friction: Langevin friction, 1/fs.
        trajectory: extxyz file, one frame every ``traj_interval`` steps (streamed, flushed per frame).
        log: text log, one record every ``log_interval`` steps (written at the end, atomically).
        plot: PNG of energies and temperature (written at the end).
        init_velocity: draw Maxwell–Boltzmann velocities (else keep the atoms' momenta).

    Returns:
        :class:`MDResult` with the logged time series and the speed (steps per second, timed after the
        first force evaluation).
    """
    from ase.io import write
    from tqdm import tqdm

    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
    atoms.calc = calculator
    if init_velocity:
        init_velocities(atoms, temperature_K, seed)
    dyn = make_integrator(atoms, ensemble, timestep_fs, temperature_K, friction, seed=seed)
    records: list[tuple[float, float, float, float, float]] = []
    traj_fh = open(trajectory, "w") if trajectory is not None else None  # noqa: SIM115
    bar = tqdm(total=steps, disable=not progress, unit="step", desc=f"MD {ensemble}")
    n = len(atoms)

    def observe() -> None:
        step = dyn.nsteps
        if step % log_interval == 0:
            epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
            temp = ekin / (1.5 * ase_units.kB * n)
            records.append((step * timestep_fs * 1e-3, epot, ekin, epot + ekin, temp))
        if traj_fh is not None and step % traj_interval == 0:
            write(traj_fh, atoms, format="extxyz")
            traj_fh.flush()
        if step:
            bar.update(1)
        else:  # speed is timed from here: the first evaluation may include a torch.compile
            clock["start"] = time.perf_counter()

    dyn.attach(observe, interval=1)
    clock = {"start": time.perf_counter()}
    try:
        dyn.run(steps)
    finally:
        elapsed = time.perf_counter() - clock["start"]
        bar.close()
        if traj_fh is not None:
            traj_fh.close()
        arr = np.array(records, dtype=float).reshape(-1, 5)
        result = MDResult(*arr.T, n_atoms=n, steps_per_second=dyn.nsteps / max(elapsed, 1e-12))
        if trajectory is not None:
            result.files["trajectory"] = Path(trajectory)
        if log is not None:
            write_log(Path(log), arr)
            result.files["log"] = Path(log)
        if plot is not None and len(arr):
            result.files["plot"] = plot_md(result, plot)
    return result


# --- the `atomnet md` command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="atomnet model file (or training checkpoint)")
    parser.add_argument("structure", help="structure file readable by ase.io.read (first frame is used)")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default="nve")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (initial velocities, thermostat)")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="md_out", help="output folder (md.extxyz, md.log, md.png)")
    parser.add_argument("--log-interval", type=int, default=1, help="steps between log records")
    parser.add_argument("--traj-interval", type=int, default=10, help="steps between trajectory frames")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--skin", type=float, default=0.5, help="Verlet skin, Å")
    parser.add_argument(
        "--energy-unit", default=None, help="model energy unit (default: from the file, else eV)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (one-off 10-60 s; faster steps, mostly for small molecules)",
    )
    parser.add_argument(
        "--tabulate",
        nargs="?",
        type=float,
        const=True,  # the flag alone: the calculator's default spacing
        default=None,
        metavar="SPACING",
        help="tabulated filters of the distance (grid SPACING in Å, default 0.005): much faster steps for "
        "large systems, forces within float32 round-off of the exact model; best with --compile",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch
    from ase.io import read

    from atomnet.calculator import AtomNetCalculator
    from atomnet.errors import AtomNetError

    if args.threads:
        torch.set_num_threads(args.threads)
    structure = Path(args.structure)
    if not structure.is_file():
        raise FileNotFoundError(f"{structure}: structure file not found")
    try:
        atoms = read(structure, index=0)
    except Exception as exc:
        raise AtomNetError(f"{structure}: cannot read structure ({str(exc).strip()[:200]})") from None
    atoms.calc = None
    kwargs = {
        "skin": args.skin,
        "compile": args.compile,
        "tabulate": False if args.tabulate is None else args.tabulate,
    }
    if args.energy_unit:
        kwargs["energy_unit"] = args.energy_unit
    calc = AtomNetCalculator.from_checkpoint(
        args.model, device=args.device, dtype=getattr(torch, args.dtype), **kwargs
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run_md(
        calc,
        atoms,
        ensemble=args.ensemble,
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        steps=args.steps,
        friction=args.friction,
        trajectory=out / "md.extxyz",
        log=out / "md.log",
        plot=out / "md.png",
        seed=args.seed,
        log_interval=args.log_interval,
        traj_interval=args.traj_interval,
        progress=not args.no_progress,
    )
    line = (
        f"{args.steps} steps, {result.steps_per_second:.1f} steps/s, mean T {result.temperature.mean():.1f} K"
    )
    if args.ensemble == "nve":
        line += f", energy drift {result.drift:.3e} eV/atom/ps"
    print(f"{line}; wrote {', '.join(str(p) for p in result.files.values())}")
    return 0
