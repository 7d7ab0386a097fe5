"""Peak memory and wall time of ``atomnet data convert`` on a generated extxyz of >= 1 GB (streaming path).

The extxyz holds periodic boxes of random water molecules (10 Å cell, ``energy=`` in the header, a ``forces``
column), written frame by frame with numpy-formatted text (bounded memory, no ASE). Every conversion runs
in a child process; its peak RSS is ``ru_maxrss`` from ``os.wait4`` of that child alone. A conversion of a
20-frame file gives the baseline (Python, torch, ASE, h5py imported). Optionally a smaller file is
converted by the streaming path and by the in-memory path (``--in-memory``: ``read_ase`` + ``write_store``),
and by the atomnet of another git revision (``--before REV``, e.g. the commit before streaming) for
comparison. Writes JSON (``--json``); the generated files are deleted at the end (``--keep`` keeps them).

    python scripts/streaming_convert.py --gb 1.0 --compare-mb 150 --before <rev> --dir /tmp/streaming \\
        --json docs/scale/streaming_convert.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: header of every frame: a 10 Å periodic box; {n}, {energy} filled in
HEADER = (
    '{n}\nLattice="10.0 0.0 0.0 0.0 10.0 0.0 0.0 0.0 10.0" Properties=species:S:1:pos:R:3:forces:R:3 '
    'energy={energy:.10f} pbc="T T T"\n'
)


def write_water_extxyz(path: str | Path, target_bytes: int, n_water: int = 64, seed: int = 0) -> dict:
    """Write frames of ``n_water`` random water molecules (positions uniform in the 10 Å box, forces normal in
    eV/Å, energy about -10 eV per molecule) until the file holds ``target_bytes``. One frame is in memory at a
    time. Returns ``{"bytes", "frames", "atoms"}``."""
    rng = np.random.default_rng(seed)
    n = 3 * n_water
    species = np.tile(np.array(["O", "H", "H"]), n_water)
    frames = written = 0
    with open(path, "w") as fh:
        while written < target_bytes:
            columns = np.column_stack([rng.uniform(0.0, 10.0, (n, 3)), rng.normal(0.0, 1.0, (n, 3))])
            rows = np.char.mod("%.8f", columns)
            body = "\n".join(f"{s} {' '.join(r)}" for s, r in zip(species, rows, strict=True))
            text = HEADER.format(n=n, energy=-10.0 * n_water - rng.random()) + body + "\n"
            fh.write(text)
            written += len(text)
            frames += 1
    return {"bytes": os.path.getsize(path), "frames": frames, "atoms": frames * n}


#: A small launcher between the caller and the measured command. Linux carries a process's peak RSS across
#: fork and exec, so a command started straight from a large process (pytest after hundreds of tests) would report
#: that process's peak; started from this launcher it inherits only the launcher's few MiB. It prints the
#: command's ``ru_maxrss`` (KiB) and exit code.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def measure(argv: list[str], env: dict | None = None, cwd: str | Path | None = None) -> dict:
    """Run ``argv`` (``argv[0]`` an absolute path) as a child process through :data:`LAUNCHER`; its wall time (s)
    and peak RSS (MiB, ``ru_maxrss`` of that child from ``os.wait4``). A failing command raises RuntimeError."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, *map(str, argv)], env=env, cwd=cwd, capture_output=True
    )
    wall = time.perf_counter() - start
    fields = proc.stdout.decode().split()
    code = int(fields[1]) if len(fields) == 2 else proc.returncode or 1
    if code != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({code}): {proc.stderr.decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(int(fields[0]) / 1024, 1)}


def convert_argv(source: Path, output: Path, *flags: str) -> list[str]:
    """``atomnet data convert SOURCE OUTPUT --no-progress [flags]`` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "atomnet.cli",
        "data",
        "convert",
        str(source),
        str(output),
        "--no-progress",
        *flags,
    ]


def export_revision(rev: str, folder: Path) -> Path:
    """The ``atomnet`` package of git revision ``rev`` unpacked under ``folder`` (for PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "atomnet"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def run(gb: float, compare_mb: float, before: str | None, folder: Path) -> dict:
    """Generate, convert and measure (see the module docstring); returns the report."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    report: dict = {"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count()}

    small = folder / "baseline.extxyz"
    info = write_water_extxyz(small, 20 * 14_500)  # about 20 frames
    report["baseline"] = {"file": info, **measure(convert_argv(small, folder / "baseline.h5"), env, folder)}

    if compare_mb:
        mid = folder / "compare.extxyz"
        t0 = time.perf_counter()
        info = write_water_extxyz(mid, int(compare_mb * 1e6))
        entry = {"file": {**info, "generate_s": round(time.perf_counter() - t0, 1)}}
        entry["streaming"] = measure(convert_argv(mid, folder / "compare_stream.h5"), env, folder)
        entry["in_memory"] = measure(
            convert_argv(mid, folder / "compare_memory.h5", "--in-memory"), env, folder
        )
        if before:
            old = export_revision(before, folder / "before")
            entry["before"] = {
                "revision": before,
                **measure(
                    convert_argv(mid, folder / "compare_before.h5"), {**env, "PYTHONPATH": str(old)}, folder
                ),
            }
        entry["stores_equal"] = _same_store(folder / "compare_stream.h5", folder / "compare_memory.h5")
        report["compare"] = entry
        for name in ("compare.extxyz", "compare_stream.h5", "compare_memory.h5", "compare_before.h5"):
            (folder / name).unlink(missing_ok=True)

    big = folder / "big.extxyz"
    t0 = time.perf_counter()
    info = write_water_extxyz(big, int(gb * 1e9))
    report["big"] = {"file": {**info, "generate_s": round(time.perf_counter() - t0, 1)}}
    report["big"]["streaming"] = measure(convert_argv(big, folder / "big.h5"), env, folder)
    report["big"]["store_bytes"] = os.path.getsize(folder / "big.h5")
    report["big"]["stray_files"] = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    return report


def _same_store(a: Path, b: Path) -> bool:
    """Whether two stores have equal datasets (dtype, shape, bytes, attributes) and file attributes but
    ``created_utc``."""
    import h5py

    def contents(path: Path) -> dict:
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    out.__setitem__(
                        name, (obj.dtype.str, obj.shape, obj[()].tobytes(), sorted(obj.attrs.items()))
                    )
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
            out["/"] = sorted((k, str(v)) for k, v in f.attrs.items() if k != "created_utc")
        return out

    return contents(a) == contents(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the big extxyz (GB, default 1.0)")
    parser.add_argument(
        "--compare-mb", type=float, default=150.0, help="size of the file converted both ways (MB; 0: none)"
    )
    parser.add_argument("--before", help="git revision whose atomnet converts the comparison file too")
    parser.add_argument(
        "--dir", default=None, help="work folder for the generated files (default: a temp dir)"
    )
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="streaming_convert."))
    try:
        report = run(args.gb, args.compare_mb, args.before, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
