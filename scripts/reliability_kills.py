"""Kill atomnet with SIGKILL at random points and check what it leaves behind ("Interrupted work").

Three experiments, each against an uninterrupted run of the same command as the independent reference:

* ``atomnet data convert data/ethanol_xtb.extxyz out.h5`` killed at random times and inside the write window
  (when the temporary store appears): afterwards there is no ``out.h5`` or a complete one equal to the
  reference; the killed process may leave its hidden temporary file, never a store; a rerun converts.
* ``atomnet train`` (tiny SchNet on 60 xTB frames) killed mid-epoch, then ``atomnet train --resume
  <run>/last.ckpt``: last.ckpt loads after every kill, and the resumed run's weights (last.ckpt, model.pt),
  optimiser and scheduler equal the reference's.
* ``atomnet md`` (shipped ``schnet-md17-ethanol``, NVE, float64) killed mid-run, then ``--restart``:
  trajectory and log byte for byte those of the reference, final positions and momenta equal.

Plus kills of :class:`atomnet.training.checkpoints.AtomicCheckpointIO` in the middle of writing a 100 MB
checkpoint: the file at the path is always a complete earlier version.

    python scripts/reliability_kills.py --out docs/reliability          # about 8 minutes on 2 shared cores

writes ``kill_points.json`` (every kill point and its outcome) and ``kill_points.png``. The tests in
``tests/test_interrupted.py`` run the same functions with fewer kill points.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
XTB = ROOT / "data" / "ethanol_xtb.extxyz"
POLL_S = 0.0005


# --- processes ------------------------------------------------------------------------------------------


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start(args: list[str], cwd: Path, log_name: str | None = None) -> subprocess.Popen:
    """``python -m atomnet.cli *args`` in ``cwd`` (one thread), output to ``cwd/<log_name>`` or nowhere."""
    out = open(cwd / log_name, "w") if log_name else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "atomnet.cli", *args],
            cwd=cwd,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log_name:
            out.close()


def kill(proc: subprocess.Popen | None) -> None:
    """SIGKILL ``proc`` (if still running) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    if proc is not None:
        proc.wait()


def run(args: list[str], cwd: Path, log_name: str | None = None, timeout: float = 600) -> int:
    """Run ``atomnet *args`` to the end; its exit status."""
    proc = start(args, cwd, log_name)
    try:
        return proc.wait(timeout=timeout)
    finally:
        kill(proc)


def run_in_process(args: list[str], log: Path) -> int:
    """``atomnet *args`` in this process (no interpreter start-up), output to ``log``; torch's thread count
    is restored afterwards."""
    import contextlib

    import torch

    from atomnet.cli import main

    threads = torch.get_num_threads()
    try:
        with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            return main(args)
    finally:
        torch.set_num_threads(threads)


# --- data convert -----------------------------------------------------------------------------------------


def store_contents(path: Path) -> dict:
    """Every dataset (values and attributes) and file attribute of a store except the creation time; opening
    goes through :class:`atomnet.data.store.Store`, which validates the layout."""
    from atomnet.data.store import Store

    with Store(path) as store:
        content = {f"@{k}": v for k, v in store.attrs.items() if k != "created_utc"}

        def visit(name, obj):
            if hasattr(obj, "shape"):
                content[name] = obj[()]
                content[f"{name}@"] = {k: str(v) for k, v in obj.attrs.items()}

        store.file.visititems(visit)
    return content


def same_contents(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


def _temps(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of a file, ``None`` if absent: a rename onto the path changes it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _store_state(path: Path, reference: dict) -> str:
    """``no store``, ``complete`` (opens, validates, equals the reference) or ``corrupt: <why>``."""
    if not path.exists():
        return "no store"
    try:
        return "complete" if same_contents(store_contents(path), reference) else "corrupt: differs"
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        return f"corrupt: {exc}"


def convert_args(out: Path, source: Path, limit: int | None) -> list[str]:
    return ["data", "convert", str(source), str(out), "--no-progress"] + (
        ["--limit", str(limit)] if limit else []
    )


def convert_reference(workdir: Path, source: Path = XTB, limit: int | None = None) -> dict:
    """An uninterrupted ``atomnet data convert`` in a subprocess: its contents and timeline (seconds from
    the start: temporary store appears, store appears, process ends)."""
    folder = workdir / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out.h5"
    t0 = time.perf_counter()
    proc = start(convert_args(out, source, limit), folder)
    tmp_at = done_at = None
    try:
        while proc.poll() is None:
            t = time.perf_counter() - t0
            if done_at is None and out.exists():
                done_at = t
            if tmp_at is None and (_temps(folder, "out.h5") or done_at is not None):
                tmp_at = t
            time.sleep(POLL_S)
        end = time.perf_counter() - t0
    finally:
        kill(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"reference conversion failed with exit status {proc.returncode}")
    return {"contents": store_contents(out), "tmp_at": tmp_at, "done_at": done_at, "end": end}


def convert_kill(
    folder: Path,
    delay: float | None = None,
    write_delay: float | None = None,
    source: Path = XTB,
    limit: int | None = None,
) -> dict:
    """Start ``atomnet data convert`` into ``folder/out.h5`` and SIGKILL it ``delay`` s after the start, or
    ``write_delay`` s after its temporary store appears (the write window). Returns the kill point, the
    phase it fell in and the hidden temporary files left (``stray``); see :func:`_store_state` for the
    store."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out.h5"
    before = _identity(out)
    earlier = set(_temps(folder, "out.h5"))  # left by processes killed before: not this one's
    t0 = time.perf_counter()
    proc = start(convert_args(out, source, limit), folder)
    seen_tmp = None
    try:
        while proc.poll() is None:
            t = time.perf_counter() - t0
            # the write starts: a new temporary file (or, were the store written in place, out.h5 changes)
            if seen_tmp is None and (set(_temps(folder, "out.h5")) - earlier or _identity(out) != before):
                seen_tmp = t
            due = delay if write_delay is None else (None if seen_tmp is None else seen_tmp + write_delay)
            if due is not None and t >= due:
                break
            time.sleep(POLL_S)
        t_kill = time.perf_counter() - t0
        finished = proc.poll() is not None
    finally:
        kill(proc)
    after = _identity(out)
    if finished:
        phase = "finished"
    elif after is not None and after != before:
        phase = "after rename"
    elif seen_tmp is not None:
        phase = "writing"
    else:
        phase = "reading"
    return {
        "t_kill": t_kill,
        "kind": "random" if write_delay is None else "write window",
        "phase": phase,
        "store_before": before is not None,
        "stray": _temps(folder, "out.h5"),
    }


def convert_rerun(folder: Path, reference: dict, source: Path = XTB, limit: int | None = None) -> dict:
    """Convert again into ``folder/out.h5`` (after kills): exit status and whether it equals the reference."""
    status = run(convert_args(folder / "out.h5", source, limit), folder)
    return {"status": status, "outcome": _store_state(folder / "out.h5", reference["contents"])}


def convert_experiment(
    workdir: Path,
    n_random: int,
    n_write: int,
    seed: int = 0,
    rerun_each: bool = False,
    limit: int | None = None,
    random_before_write: bool = False,
) -> dict:
    """The reference conversion alone (its timeline sets the kill times), then ``n_write`` kills in the
    write window (0-90 % of the reference's write time after the temporary file appears) and ``n_random``
    at uniform random times over 0-95 % of the reference's duration (``random_before_write``: over 0-70 % of
    the time before its temporary file appeared, so a run up to 30 % faster than the reference is still
    killed before it ends), in random order; a rerun after each
    kill (``rerun_each``; then every other kill starts without a store, the others replace the rerun's) or
    once at the end."""
    rng = np.random.default_rng(seed)
    folder = workdir / "killed"
    reference = convert_reference(workdir, XTB, limit)
    window = reference["done_at"] - reference["tmp_at"]
    plan = [("write", float(rng.uniform(0, 0.9 * window))) for _ in range(n_write)]
    span = 0.7 * reference["tmp_at"] if random_before_write else 0.95 * reference["end"]
    plan += [("random", float(rng.uniform(0, span))) for _ in range(n_random)]
    order = rng.permutation(len(plan))
    kills, reruns = [], []
    for i in order:
        kind, t = plan[i]
        if rerun_each and kills:
            reruns.append(convert_rerun(folder, reference, limit=limit))
            if len(kills) % 2 == 0:  # every other kill interrupts a first conversion, not a replacement
                (folder / "out.h5").unlink()
        if kind == "write":
            point = convert_kill(folder, write_delay=t, limit=limit)
        else:
            point = convert_kill(folder, delay=t, limit=limit)
        kills.append({**point, "outcome": _store_state(folder / "out.h5", reference["contents"])})
    reruns.append(convert_rerun(folder, reference, limit=limit))
    return {
        "reference": {k: reference[k] for k in ("tmp_at", "done_at", "end")},
        "kills": kills,
        "reruns": reruns,
    }


# --- training ---------------------------------------------------------------------------------------------


def train_config(workdir: Path, max_epochs: int = 8, n_frames: int = 60) -> Path:
    """A tiny SchNet config on the first ``n_frames`` xTB frames (store written here); the plateau scheduler
    halves the learning rate after every epoch without improvement (patience 0), EMA and warm-up on."""
    import yaml

    from atomnet.data.ase_io import read_ase
    from atomnet.data.store import write_store

    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / f"ethanol{n_frames}.h5"
    if not store.exists():
        write_store(read_ase(XTB, index=f"0:{n_frames}", energy_unit="eV"), store, progress=False)
    cfg = {
        "model": dict(
            name="schnet", n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10
        ),
        "data": {"path": str(store.resolve()), "split": [40, 10, 10], "batch_size": 1},
        "optim": {
            "lr": 5e-3,
            "scheduler": "plateau",
            "plateau_patience": 0,
            "warmup_steps": 3,
            "ema_decay": 0.9,
        },
        "train": {
            "max_epochs": max_epochs,
            "out_dir": str(workdir / "runs"),
            "progress_bar": False,
            "plots": False,
            "num_threads": 1,
        },
    }
    path = workdir / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def max_abs_diff(a, b) -> float:
    """Largest |a − b| over nested dicts/lists of tensors and numbers (inf if the structures differ)."""
    import torch

    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return float("inf")
        return max([max_abs_diff(a[k], b[k]) for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return float("inf")
        return max([max_abs_diff(x, y) for x, y in zip(a, b, strict=True)], default=0.0)
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def compare_runs(a: Path, b: Path) -> dict:
    """max |Δ| between two run folders: model.pt weights, last.ckpt weights, optimiser and scheduler states."""
    la, lb = _load(a / "last.ckpt"), _load(b / "last.ckpt")
    return {
        "epochs": [la["epoch"], lb["epoch"]],
        "model_pt": max_abs_diff(_load(a / "model.pt")["state_dict"], _load(b / "model.pt")["state_dict"]),
        "last_ckpt": max_abs_diff(la["state_dict"], lb["state_dict"]),
        "optimizer": max_abs_diff(la["optimizer_states"], lb["optimizer_states"]),
        "scheduler": max_abs_diff(la["lr_schedulers"], lb["lr_schedulers"]),
    }


def _watch_checkpoints(proc, path: Path, count: int, t0: float) -> list[float]:
    """Times (s from t0) at which ``path`` was rewritten, until ``count`` writes or the process ends."""
    times, last = [], None
    while proc.poll() is None and len(times) < count:
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != last:
            times.append(time.perf_counter() - t0)
            last = stamp
        time.sleep(POLL_S * 4)
    return times


def train_kill(cfg: Path, run_dir: Path, after: int, fraction: float, in_process: bool = False) -> dict:
    """Train into ``run_dir``, SIGKILL it ``fraction`` of an epoch after the ``after``-th write of last.ckpt
    (epoch length: mean interval between the writes so far) and resume with ``--resume run_dir/last.ckpt``
    (in a subprocess, or in this process with ``in_process``).
    Returns the kill point, whether last.ckpt loaded after the kill, and the resume's exit status."""
    t0 = time.perf_counter()
    proc = start(["train", str(cfg), "--run-dir", str(run_dir)], cfg.parent, f"{run_dir.name}.log")
    last = run_dir / "last.ckpt"
    try:
        writes = _watch_checkpoints(proc, last, max(after, 2), t0)
        if proc.poll() is not None or len(writes) < 2:
            raise RuntimeError(f"training ended before {after} checkpoints; raise max_epochs")
        epoch_s = (writes[-1] - writes[0]) / (len(writes) - 1)
        time.sleep(fraction * epoch_s)
        t_kill = time.perf_counter() - t0
        alive = proc.poll() is None
    finally:
        kill(proc)
    try:
        at_kill = _load(last)
        loads, ckpt_epoch = True, int(at_kill["epoch"])
    except Exception:  # noqa: BLE001 - a checkpoint that does not load is the finding
        loads, ckpt_epoch = False, None
    stray = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))
    resume, log = ["train", "--resume", str(last)], cfg.parent / f"{run_dir.name}-resume.log"
    status = run_in_process(resume, log) if in_process else run(resume, cfg.parent, log.name)
    return {
        "t_kill": t_kill,
        "epoch_s": epoch_s,
        "fraction": fraction,
        "killed_running": alive,
        "ckpt_loads": loads,
        "ckpt_epoch": ckpt_epoch,
        "stray": stray,
        "resume_status": status,
    }


def train_experiment(
    workdir: Path, kill_points: list[tuple[int, float]], max_epochs: int = 8, in_process: bool = False
) -> dict:
    """Reference run (in parallel with the first killed run) and one killed + resumed run per
    (checkpoint writes before the kill, fraction of an epoch) in ``kill_points``."""
    cfg = train_config(workdir, max_epochs)
    reference = workdir / "A"
    ref = start(["train", str(cfg), "--run-dir", str(reference)], workdir, "A.log")
    results = []
    try:
        for k, (after, fraction) in enumerate(kill_points):
            results.append(train_kill(cfg, workdir / f"B{k}", after, fraction, in_process))
            if ref.wait() != 0:
                raise RuntimeError("the reference training failed (see A.log)")
            if results[-1]["resume_status"] == 0:
                results[-1].update(compare_runs(reference, workdir / f"B{k}"))
    finally:
        kill(ref)
    return {"max_epochs": max_epochs, "kills": results}


# --- checkpoint writes ------------------------------------------------------------------------------------

WRITER = """
import sys, torch
from atomnet.training.checkpoints import AtomicCheckpointIO
io, path, n = AtomicCheckpointIO(), sys.argv[1], int(sys.argv[2])
for version in range(1, 10**6):
    content = {"version": version, "w": torch.full((n,), float(version))}
    print(version, flush=True)  # a write starts
    io.save_checkpoint(content, path)
"""


def checkpoint_write_kill(folder: Path, fraction: float, n_floats: int = 25_000_000) -> dict:
    """Rewrite a checkpoint of ``n_floats`` float32 (100 MB) with :class:`AtomicCheckpointIO` in a loop;
    SIGKILL the writer ``fraction`` of a write cycle after the fourth write starts (cycle: mean time between
    starts so far). Returns whether the file at the path is a complete version (a 100 MB tensor filled with
    its version number) and which temporary files remain (one shows the kill fell inside a write)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "last.ckpt"
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(n_floats)],
        cwd=folder,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        starts = []
        while len(starts) < 4:
            if not proc.stdout.readline():
                raise RuntimeError("the checkpoint writer ended early")
            starts.append(time.perf_counter() - t0)
        cycle = (starts[-1] - starts[0]) / (len(starts) - 1)
        time.sleep(fraction * cycle)
        t_kill = time.perf_counter() - t0
    finally:
        kill(proc)
        proc.stdout.close()
    try:
        content = torch.load(path, weights_only=True)
        complete = (
            bool((content["w"] == float(content["version"])).all()) and content["w"].numel() == n_floats
        )
        version = int(content["version"])
    except Exception:  # noqa: BLE001 - a file that does not load is the finding
        complete, version = False, None
    stray = sorted(p.name for p in folder.iterdir() if p.name != "last.ckpt")
    for name in stray:
        (folder / name).unlink()
    return {
        "t_kill": t_kill,
        "cycle_s": cycle,
        "fraction": fraction,
        "complete": complete,
        "version": version,
        "stray": stray,
    }


# --- md ---------------------------------------------------------------------------------------------------


def md_args(structure: Path, out: Path, steps: int) -> list[str]:
    return [
        "md",
        "schnet-md17-ethanol",
        str(structure),
        "--dtype",
        "float64",
        "--steps",
        str(steps),
        "--traj-interval",
        "10",
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
    ]


def md_structure(workdir: Path) -> Path:
    from ase.build import molecule
    from ase.io import write

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "ethanol.xyz"
    write(path, molecule("CH3CH2OH"))
    return path


def md_kill(
    structure: Path, out: Path, steps: int, after_frames: int, delay: float, in_process: bool = False
) -> dict:
    """``atomnet md`` into ``out``, SIGKILLed ``delay`` s after its trajectory holds ``after_frames``
    frames, then ``--restart`` (in a subprocess, or in this process with ``in_process``). Returns the kill point (frames and bytes on disk) and the restart's status."""
    from atomnet.md import complete_frames

    traj = out / "md.extxyz"
    t0 = time.perf_counter()
    proc = start(md_args(structure, out, steps), structure.parent, f"{out.name}.log")
    try:
        while proc.poll() is None:
            if traj.exists() and len(complete_frames(traj)) >= after_frames:
                break
            time.sleep(0.002)
        time.sleep(delay)
        alive = proc.poll() is None
        t_kill = time.perf_counter() - t0
    finally:
        kill(proc)
    frames = complete_frames(traj)
    partial = traj.stat().st_size - (frames[-1][1] if frames else 0)
    again, log = [*md_args(structure, out, steps), "--restart"], structure.parent / f"{out.name}-restart.log"
    status = run_in_process(again, log) if in_process else run(again, structure.parent, log.name)
    return {
        "t_kill": t_kill,
        "killed_running": alive,
        "frames_at_kill": len(frames),
        "partial_bytes_at_kill": partial,
        "restart_status": status,
        "restart_line": log.read_text().splitlines()[:1],
        "restart_step": _restart_step(log),
    }


def _restart_step(log: Path) -> int | None:
    """N of the line "restarted from step N of ..." that ``atomnet md --restart`` prints."""
    for line in log.read_text().splitlines():
        if line.startswith("restarted from step "):
            return int(line.split()[3])
    return None


def compare_md(a: Path, b: Path) -> dict:
    """Trajectories and logs byte for byte; max |Δ| of the final exact positions (Å) and momenta."""
    sa, sb = np.load(a / "md.restart.npz"), np.load(b / "md.restart.npz")
    return {
        "trajectory_identical": (a / "md.extxyz").read_bytes() == (b / "md.extxyz").read_bytes(),
        "log_identical": (a / "md.log").read_bytes() == (b / "md.log").read_bytes(),
        "final_step": [int(sa["step"]), int(sb["step"])],
        "positions": float(np.abs(sa["positions"] - sb["positions"]).max()),
        "momenta": float(np.abs(sa["momenta"] - sb["momenta"]).max()),
    }


def md_experiment(
    workdir: Path, kill_points: list[tuple[int, float]], steps: int = 400, in_process: bool = False
) -> dict:
    """The reference run (in parallel with the first killed one) and one killed + restarted run per
    (frames written before the kill, delay in s)."""
    structure = md_structure(workdir)
    reference = workdir / "A"
    ref = start(md_args(structure, reference, steps), workdir, "A.log")
    results = []
    try:
        for k, (after, delay) in enumerate(kill_points):
            out = workdir / f"B{k}"
            results.append(md_kill(structure, out, steps, after, delay, in_process))
            if ref.wait() != 0:
                raise RuntimeError("the reference MD failed (see A.log)")
            if results[-1]["restart_status"] == 0:
                results[-1].update(compare_md(reference, out))
    finally:
        kill(ref)
    return {"steps": steps, "kills": results}


# --- figure -----------------------------------------------------------------------------------------------


def _outcome(kill_point: dict) -> str:
    """no store / previous store intact / new store / corrupt / finished before the kill, for the figure."""
    if kill_point["phase"] == "finished":
        return "finished before the kill"
    if kill_point["outcome"] == "no store":
        return "no store"
    if kill_point["outcome"] != "complete":
        return "corrupt"
    return "new store" if kill_point["phase"] in ("after rename", "finished") else "previous store intact"


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomnet.files import save_figure

    floor = 1e-18  # exactly zero differences are drawn on the floor of the log axes, labelled 0

    def log_axis(ax):
        ax.set_yscale("log")
        ax.set_ylim(floor / 10, 10)
        ax.set_yticks([floor, 1e-12, 1e-6, 1], ["0 (bit-identical)", "1e-12", "1e-6", "1"])

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax_c, ax_w, ax_t, ax_m = axes.ravel()
    conv = report["convert"]
    ref = conv["reference"]
    ax_c.axvspan(0, ref["tmp_at"], color="0.9", label="reading (reference run)")
    ax_c.axvspan(ref["tmp_at"], ref["done_at"] + 0.02, color="C1", alpha=0.4, label="writing the store")
    styles = {
        "no store": ("o", "C0"),
        "previous store intact": ("D", "C9"),
        "new store": ("s", "C2"),
        "corrupt": ("x", "C3"),
        "finished before the kill": ("+", "0.5"),
    }
    for k, kill_point in enumerate(conv["kills"]):
        marker, color = styles[_outcome(kill_point)]
        y = 1 if kill_point["kind"] == "write window" else 0
        ax_c.scatter(kill_point["t_kill"], y + 0.06 * (k % 4), marker=marker, color=color, s=45, zorder=3)
    for outcome, (marker, color) in styles.items():
        ax_c.scatter([], [], marker=marker, color=color, label=outcome)
    ax_c.set_yticks([0.1, 1.1], ["random time", "in the write\nwindow"])
    ax_c.set_ylim(-0.5, 2.0)
    ax_c.set_xlabel("kill time / s after start")
    ok = sum(_outcome(k) != "corrupt" for k in conv["kills"])
    ax_c.set_title(
        f"data convert (2,000 frames): {ok}/{len(conv['kills'])} kills leave no or a complete store"
    )
    ax_c.legend(fontsize=7, loc="upper left", ncol=2)

    writes = report.get("checkpoint_writes", [])
    for w in writes:
        marker, color = ("s", "C2") if w["complete"] else ("x", "C3")
        y = 1 if w["stray"] else 0
        ax_w.scatter(w["fraction"], y, marker=marker, color=color, s=45)
    ax_w.scatter([], [], marker="s", color="C2", label="last.ckpt complete (earlier version)")
    ax_w.scatter([], [], marker="x", color="C3", label="last.ckpt truncated")
    ax_w.set_yticks([0, 1], ["between writes", "inside a write\n(temp file left)"])
    ax_w.set_ylim(-0.6, 1.8)
    ax_w.set_xlim(0, 1)
    ax_w.set_xlabel("kill point / fraction of a write cycle (100 MB checkpoint)")
    ax_w.set_title(f"AtomicCheckpointIO: {len(writes)} kills")
    ax_w.legend(fontsize=7, loc="upper left")

    train = report["train"]["kills"]
    x = [k["ckpt_epoch"] + 1 + k["fraction"] for k in train if "model_pt" in k]
    for key, marker in (("model_pt", "o"), ("last_ckpt", "s"), ("optimizer", "^"), ("scheduler", "v")):
        ys = [max(k[key], floor) for k in train if key in k]
        ax_t.scatter(x, ys, marker=marker, label=f"{key} max |Δ|", alpha=0.6, s=45)
    log_axis(ax_t)
    ax_t.set_xlabel(f"kill point / epochs (of {report['train']['max_epochs']})")
    ax_t.set_title(f"train, killed mid-epoch, --resume: {len(train)} kills")
    ax_t.legend(fontsize=7, loc="upper left", ncol=2)

    md = report["md"]["kills"]
    x = [k["restart_step"] for k in md if "positions" in k]
    for key, marker in (("positions", "o"), ("momenta", "s")):
        ys = [max(k[key], floor) for k in md if key in k]
        ax_m.scatter(x, ys, marker=marker, label=f"final {key} max |Δ|", alpha=0.6, s=45)
    log_axis(ax_m)
    ax_m.set_xlabel(f"restart step (of {report['md']['steps']})")
    same = sum(bool(k.get("trajectory_identical")) and bool(k.get("log_identical")) for k in md)
    ax_m.set_title(f"md NVE float64, --restart: {len(md)} kills, {same} byte-identical traj + log")
    ax_m.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/reliability", help="folder of kill_points.json / .png")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--convert-random", type=int, default=8)
    parser.add_argument("--convert-write", type=int, default=4)
    parser.add_argument("--train-kills", type=int, default=4)
    parser.add_argument("--md-kills", type=int, default=4)
    parser.add_argument("--checkpoint-kills", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="reliability_kills."))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    report = {"command": "python scripts/reliability_kills.py " + " ".join(argv or sys.argv[1:])}
    try:
        report["convert"] = convert_experiment(
            work / "convert", args.convert_random, args.convert_write, args.seed, rerun_each=True
        )
        points = [(int(rng.integers(2, 5)), float(rng.uniform(0.2, 0.8))) for _ in range(args.train_kills)]
        report["train"] = train_experiment(work / "train", points)
        report["checkpoint_writes"] = [
            checkpoint_write_kill(work / "ckpt", float(rng.uniform(0.05, 0.45)))
            for _ in range(args.checkpoint_kills)
        ]
        points = [(int(rng.integers(5, 20)), float(rng.uniform(0, 0.3))) for _ in range(args.md_kills)]
        report["md"] = md_experiment(work / "md", points)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from atomnet.files import atomic_output

    with atomic_output(out / "kill_points.json", ".json") as tmp:
        tmp.write_text(json.dumps(_jsonable(report), indent=2))
    plot(report, out / "kill_points.png")
    conv = report["convert"]["kills"]
    print(
        f"convert: {len(conv)} kills, outcomes {sorted({k['outcome'] for k in conv})}, phases "
        f"{sorted({k['phase'] for k in conv})}, reruns {[r['outcome'] for r in report['convert']['reruns']]}"
    )
    for k in report["train"]["kills"]:
        print(
            f"train: kill at {k['t_kill']:.2f} s (epoch {k['ckpt_epoch']} + {k['fraction']:.2f}): "
            f"model.pt max|Δ| {k.get('model_pt')}, last.ckpt {k.get('last_ckpt')}, optimizer {k.get('optimizer')}"
        )
    for k in report["checkpoint_writes"]:
        print(f"checkpoint write: kill at {k['t_kill']:.2f} s, complete {k['complete']}, stray {k['stray']}")
    for k in report["md"]["kills"]:
        print(
            f"md: {k['frames_at_kill']} frames at kill, {k['partial_bytes_at_kill']} partial bytes, "
            f"identical trajectory {k.get('trajectory_identical')} log {k.get('log_identical')}, "
            f"max|Δx| {k.get('positions')}, max|Δp| {k.get('momenta')}"
        )
    print(f"wrote {out / 'kill_points.json'} and {out / 'kill_points.png'} in {report['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
