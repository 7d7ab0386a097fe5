"""Molecular dynamics with atomnet potentials through ASE integrators, and the ``atomnet md`` command.

Ensembles: ``nve`` (velocity Verlet), ``langevin`` (ASE Langevin), ``nvt`` (Nosé–Hoover chain,
``ase.md.nose_hoover_chain``). Initial velocities: Maxwell–Boltzmann at ``temperature_K`` with a seed, total
momentum (and, for molecules, angular momentum) removed.

Outputs in ``out``: ``md.extxyz`` (frames with energy, forces, per-atom energies, momenta and
``info["step"]``), ``md.log`` (columns time/ps, Epot/eV, Ekin/eV, Etot/eV, T/K), both streamed and flushed per
frame / record, ``md.restart.npz`` (the exact float64 state of the newest frame, replaced atomically) and
``md.png`` (energies and temperature over time, written at the end through a temporary file and a rename).

Restart (``atomnet md ... --restart``, ``run_md(..., restart=True)``): a killed or finished run continues from
the last complete frame of its trajectory to ``steps`` in all, appending to the trajectory and the log (the
partial frame and the records after that frame are dropped first, so nothing is duplicated). Positions and
momenta come from ``md.restart.npz`` when it holds that frame (or the one before, if the kill fell between
the two writes), so an NVE run continues bit for bit; otherwise from the frame itself (8 decimals in Å and
ASE momentum units). Langevin and Nosé–Hoover runs continue with fresh thermostat state and random stream:
statistically the same ensemble, not the same trajectory.
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

from atomnet.errors import AtomNetError
from atomnet.files import atomic_output, save_figure

ENSEMBLES = ("nve", "langevin", "nvt")
LOG_HEADER = "time_ps Epot_eV Ekin_eV Etot_eV T_K"
#: exact state next to the trajectory: md.extxyz -> md.restart.npz
STATE_SUFFIX = ".restart.npz"


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
    start_step: int = 0
    """step this call started from (0, or the restart point)"""
    restart_exact: bool | None = None
    """on restart: whether the state came bit for bit from the ``.restart.npz`` file"""

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


def _log_line(record) -> str:
    t, ep, ek, et, temp = record
    return f"{t:.6f} {ep:.8f} {ek:.8f} {et:.8f} {temp:.3f}\n"


def write_log(path: Path, records: np.ndarray) -> None:
    """Write the MD log (columns of :data:`LOG_HEADER`) atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(f"# {LOG_HEADER}\n" + "".join(_log_line(r) for r in records))


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


# --- restart ---------------------------------------------------------------------------------------------


def state_path(trajectory: str | os.PathLike) -> Path:
    """The exact-state file of a trajectory: ``md.extxyz`` -> ``md.restart.npz``."""
    trajectory = Path(trajectory)
    return trajectory.with_name(trajectory.name.rsplit(".", 1)[0] + STATE_SUFFIX)


def _save_state(path: Path, step: int, atoms: Atoms) -> None:
    """Positions (Å) and momenta (ASE units) of ``atoms`` at ``step`` in float64, atomically."""
    with atomic_output(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            step=np.int64(step),
            numbers=atoms.numbers,
            positions=atoms.positions,
            momenta=atoms.get_momenta(),
            cell=atoms.cell.array,
            pbc=atoms.pbc,
        )


def _load_state(path: Path) -> dict | None:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception:  # noqa: BLE001 - missing or unreadable: restart from the frame's own values
        return None


def complete_frames(path: str | os.PathLike) -> list[tuple[int, int]]:
    """(start, end) byte offsets of the complete frames of an extxyz file, in order: a frame counts when its
    atom-count line, comment line and every atom line are there, each ended by a newline."""
    frames: list[tuple[int, int]] = []
    pos = 0
    with open(path, "rb") as f:
        while True:
            head = f.readline()
            try:
                n = int(head) if head.endswith(b"\n") else -1
            except ValueError:
                n = -1
            if n < 0:
                return frames
            end = pos + len(head)
            for _ in range(n + 1):  # comment line and n atom lines
                line = f.readline()
                if not line.endswith(b"\n"):
                    return frames
                end += len(line)
            frames.append((pos, end))
            pos = end


def _read_frame(path: Path, start: int, end: int) -> Atoms | None:
    """The frame at bytes [start, end) if it parses and carries a step number and momenta, else ``None``."""
    import io

    from ase.io import read

    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode("utf-8", errors="replace")
    try:
        atoms = read(io.StringIO(text), format="extxyz")
    except Exception:  # noqa: BLE001 - a damaged frame: the caller tries the one before
        return None
    if "step" not in atoms.info or "momenta" not in atoms.arrays:
        return None
    return atoms


@dataclass
class RestartPoint:
    """Where a run continues: ``atoms`` (positions, momenta, cell) at ``step``; ``end`` is the byte offset
    in the trajectory after that frame; ``exact``: state from the ``.restart.npz`` file (float64) rather than
    the frame's 8 decimals."""

    step: int
    atoms: Atoms
    end: int
    exact: bool


def restart_point(trajectory: str | os.PathLike) -> RestartPoint:
    """The last complete frame of ``trajectory`` written by :func:`run_md`, with the exact state if the
    ``.restart.npz`` file holds that frame or the one before (then the newer frame is dropped).

    Raises :class:`AtomNetError` (one line) if the file is missing or has no complete frame with a step and
    momenta.
    """
    trajectory = Path(trajectory)
    if not trajectory.is_file():
        raise AtomNetError(f"{trajectory}: no trajectory to restart from (run without --restart first)")
    frames = complete_frames(trajectory)
    state = _load_state(state_path(trajectory))
    parsed: list[tuple[int, Atoms]] = []
    for k in range(len(frames) - 1, -1, -1):  # newest first; skip damaged frames
        atoms = _read_frame(trajectory, *frames[k])
        if atoms is None:
            continue
        parsed.append((k, atoms))
        if state is not None and int(state["step"]) == int(atoms.info["step"]):
            same = np.array_equal(state["numbers"], atoms.numbers) and np.allclose(
                state["positions"], atoms.positions, rtol=0, atol=1e-6
            )
            if same:
                atoms.positions = state["positions"]
                atoms.set_momenta(state["momenta"])
                return RestartPoint(int(state["step"]), atoms, frames[k][1], exact=True)
        if len(parsed) == 2:  # the state file is written right after each frame: it is one of the last two
            break
    if not parsed:
        raise AtomNetError(
            f"{trajectory}: no complete frame with a step number and momenta to restart from "
            f"({len(frames)} complete frames; written by atomnet md?)"
        )
    k, atoms = parsed[0]
    return RestartPoint(int(atoms.info["step"]), atoms, frames[k][1], exact=False)


def _truncate_log(path: Path, last_step: int, timestep_fs: float) -> list[tuple[float, ...]]:
    """Keep the complete records of the log up to ``last_step`` (rewritten atomically); returns them."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines(keepends=True):
            values = line.split()
            if line.startswith("#") or not line.endswith("\n") or len(values) != 5:
                continue
            try:
                record = tuple(float(v) for v in values)
            except ValueError:
                continue
            if round(record[0] * 1e3 / timestep_fs) <= last_step:
                records.append(record)
    write_log(path, np.array(records, dtype=float).reshape(-1, 5))
    return records


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
    restart: bool = False,
) -> MDResult:
    """Run MD of ``atoms`` (modified in place) with ``calculator`` up to step ``steps``.

    Args:
        ensemble: ``"nve"``, ``"langevin"`` or ``"nvt"``.
        temperature_K: initial (Maxwell–Boltzmann) and thermostat temperature, K.
        timestep_fs: fs. friction: Langevin friction, 1/fs.
        trajectory: extxyz file, one frame every ``traj_interval`` steps (streamed, flushed per frame), with
            momenta, ``info["step"]`` and ``info["timestep_fs"]``; the exact state of the newest frame goes to
            :func:`state_path` (``md.restart.npz``).
        log: text log, one record every ``log_interval`` steps (streamed, flushed per record).
        plot: PNG of energies and temperature (written at the end).
        init_velocity: draw Maxwell–Boltzmann velocities (else keep the atoms' momenta).
        restart: continue from the last complete frame of ``trajectory`` (see :func:`restart_point`) to step
            ``steps``, appending to the trajectory and the log; ``atoms`` must have the same atomic numbers.

    Returns:
        :class:`MDResult` with the logged time series (on restart: the kept records too) and the speed (steps
        per second of this call, timed after the first force evaluation of a fresh run).
    """
    from ase.io import write
    from tqdm import tqdm

    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
    records: list[tuple[float, ...]] = []
    start, point = 0, None
    if restart:
        if trajectory is None:
            raise AtomNetError("restart needs the trajectory of the run to continue")
        point = restart_point(trajectory)
        if not np.array_equal(point.atoms.numbers, atoms.numbers):
            raise AtomNetError(
                f"{trajectory}: its frames are {point.atoms.get_chemical_formula()}, "
                f"not {atoms.get_chemical_formula()} (the structure given)"
            )
        dt_file = point.atoms.info.get("timestep_fs")
        if dt_file is not None and not np.isclose(float(dt_file), timestep_fs):
            raise AtomNetError(f"{trajectory}: run with --timestep {dt_file}, not {timestep_fs}")
        start = point.step
        atoms.positions = point.atoms.positions
        atoms.set_momenta(point.atoms.get_momenta())
        atoms.cell, atoms.pbc = point.atoms.cell, point.atoms.pbc
        os.truncate(trajectory, point.end)  # drop a partial frame and any frame after the restart point
        if log is not None:
            records = _truncate_log(Path(log), start, timestep_fs)
    elif init_velocity:
        init_velocities(atoms, temperature_K, seed)
    if "momenta" not in atoms.arrays:
        atoms.set_momenta(atoms.get_momenta())  # zeros, but written to the trajectory for a restart
    atoms.calc = calculator
    atoms.info["timestep_fs"] = timestep_fs
    dyn = make_integrator(atoms, ensemble, timestep_fs, temperature_K, friction, seed=seed)
    if start:
        dyn.nsteps = start  # ASE then does not observe the start again: no duplicate frame or record
        if ensemble == "langevin":  # a new random stream, not the first one again
            dyn.rng = np.random.default_rng([seed, start])
    mode = "a" if restart else "w"
    traj_fh = open(trajectory, mode) if trajectory is not None else None  # noqa: SIM115
    log_fh = open(log, mode) if log is not None else None  # noqa: SIM115
    if log_fh is not None and not restart:
        log_fh.write(f"# {LOG_HEADER}\n")
    state_file = state_path(trajectory) if trajectory is not None else None
    bar = tqdm(total=max(steps - start, 0), disable=not progress, unit="step", desc=f"MD {ensemble}")
    n = len(atoms)

    def observe() -> None:
        step = dyn.nsteps
        if step % log_interval == 0:
            epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
            temp = ekin / (1.5 * ase_units.kB * n)
            records.append((step * timestep_fs * 1e-3, epot, ekin, epot + ekin, temp))
            if log_fh is not None:
                log_fh.write(_log_line(records[-1]))
                log_fh.flush()
        if traj_fh is not None and step % traj_interval == 0:
            atoms.info["step"] = step
            write(traj_fh, atoms, format="extxyz")
            traj_fh.flush()
            _save_state(state_file, step, atoms)
        if step:
            bar.update(1)
        else:  # speed is timed from here: the first evaluation may include a torch.compile
            clock["start"] = time.perf_counter()

    dyn.attach(observe, interval=1)
    clock = {"start": time.perf_counter()}
    try:
        dyn.run(max(steps - start, 0))
    finally:
        elapsed = time.perf_counter() - clock["start"]
        bar.close()
        for fh in (traj_fh, log_fh):
            if fh is not None:
                fh.close()
        arr = np.array(records, dtype=float).reshape(-1, 5)
        rate = (dyn.nsteps - start) / max(elapsed, 1e-12)
        exact = None if point is None else point.exact
        result = MDResult(*arr.T, n_atoms=n, steps_per_second=rate, start_step=start, restart_exact=exact)
        if trajectory is not None:
            result.files["trajectory"] = Path(trajectory)
        if log is not None:
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
        help="always tabulate the filters of the distance (grid SPACING in Å, default 0.005); by default "
        "they are tabulated where that is faster and below the exact model's float32 round-off",
    )
    parser.add_argument(
        "--exact-filters",
        action="store_true",
        help="never tabulate the filters (evaluate the filter networks at every step)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="continue the run in --out (killed or finished) from the last complete frame of md.extxyz up "
        "to --steps in all, appending to md.extxyz and md.log",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from atomnet.calculator import AtomNetCalculator
    from atomnet.data.ase_io import read_structure

    if args.threads:
        torch.set_num_threads(args.threads)
    atoms = read_structure(args.structure)
    kwargs = {
        "skin": args.skin,
        "compile": args.compile,
        "tabulate": False if args.exact_filters else "auto" if args.tabulate is None else args.tabulate,
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
        restart=args.restart,
    )
    if args.restart:
        source = "exact state of md.restart.npz" if result.restart_exact else "the frame's 8-decimal values"
        print(f"restarted from step {result.start_step} of {out / 'md.extxyz'} ({source})")
    line = (
        f"{args.steps} steps, {result.steps_per_second:.1f} steps/s, mean T {result.temperature.mean():.1f} K"
    )
    if args.ensemble == "nve":
        line += f", energy drift {result.drift:.3e} eV/atom/ps"
    print(f"{line}; wrote {', '.join(str(p) for p in result.files.values())}")
    print(f"model: {'; '.join(sorted(set(calc.tabulation)))}")
    return 0
