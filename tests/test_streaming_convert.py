"""Streaming ``atomnet data convert`` of extxyz / ASE-db files: the same store as the in-memory path, the errors
of ``read_ase`` with global frame numbers across blocks, nothing left behind on failure, bounded memory."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import ase
import ase.db
import ase.io
import h5py
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

import atomnet.data.ase_io as ase_io
import atomnet.data.store as store_mod
from atomnet.cli import main
from atomnet.data.ase_io import convert_ase, read_ase
from atomnet.data.store import Store
from atomnet.errors import DataFormatError

ROOT = Path(__file__).resolve().parents[1]
N = 10
SMALL = {
    "block_frames": 3,
    "chunk_atoms": 7,
}  # blocks of 3 frames, chunks of at most 7 atoms (one frame or two)


def frames(no_energy=(), no_forces=(), periodic=(), ids=False, symbols=None) -> list[ase.Atoms]:
    """N frames alternating water and methane, energy -(k+1) eV and random forces, except where told."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(N):
        atoms = ase.Atoms(
            symbols or ("H2O" if k % 2 else "CH4"), positions=rng.normal(0, 1.5, (3 if k % 2 else 5, 3))
        )
        if k in periodic:
            atoms.cell, atoms.pbc = np.diag([6.0, 7.0, 8.0]), True
        results = {}
        if k not in no_energy:
            results["energy"] = -1.0 - k - rng.random()
        if k not in no_forces:
            results["forces"] = rng.normal(size=(len(atoms), 3))
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        if ids:
            atoms.info["id"] = 1000 + 7 * k
        out.append(atoms)
    return out


def write(path: Path, images) -> Path:
    if path.suffix == ".db":
        with ase.db.connect(path, append=False) as db:
            for atoms in images:
                db.write(atoms)
    else:
        ase.io.write(path, images, format="extxyz")
    return path


def contents(path: Path) -> dict:
    """Every dataset (dtype, shape, bytes, attributes, contiguous and uncompressed) and the file attributes
    but ``created_utc``."""
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            assert obj.chunks is None and obj.compression is None, name  # memory-mappable
            out[name] = (obj.dtype.str, obj.shape, obj[()].tobytes(), sorted(obj.attrs.items()))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
        out["/"] = sorted((k, str(v)) for k, v in f.attrs.items() if k != "created_utc")
    return out


def convert(*argv) -> int:
    return main(["data", "convert", *map(str, argv), "--no-progress"])


CASES = {
    "plain": ("xyz", {}, []),
    "periodic": ("xyz", {"periodic": (3, 4, 8)}, []),
    "no-forces": ("xyz", {"no_forces": range(N)}, []),
    "file-ids": ("xyz", {"ids": True}, []),
    "skip-incomplete": (
        "xyz",
        {"no_energy": (4,), "no_forces": (7,), "periodic": (4,)},
        ["--skip-incomplete"],
    ),
    "db": ("db", {"periodic": (0, 5), "no_energy": (5,)}, ["--skip-incomplete"]),
    "limit": ("xyz", {"no_energy": (8,)}, ["--limit", "6"]),
}


@pytest.mark.parametrize("case", CASES)
def test_streaming_store_equals_the_in_memory_one(tmp_path, case, capsys):
    suffix, options, flags = CASES[case]
    src = write(tmp_path / f"frames.{suffix}", frames(**options))
    assert convert(src, tmp_path / "memory.h5", "--in-memory", *flags) == 0
    assert convert(src, tmp_path / "stream.h5", *flags) == 0
    expected = contents(tmp_path / "memory.h5")
    assert contents(tmp_path / "stream.h5") == expected
    index = f":{flags[1]}" if "--limit" in flags else ":"
    convert_ase(
        src,
        tmp_path / "small.h5",
        index=index,
        skip_incomplete="--skip-incomplete" in flags,
        progress=False,
        source=str(src),
        **SMALL,
    )
    assert contents(tmp_path / "small.h5") == expected  # blocks of 3 frames give the same store
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [src.name, "memory.h5", "stream.h5", "small.h5"]
    )


def test_streaming_values_are_the_frames_values(tmp_path):
    """Independent of both paths: the store holds the frames' numbers in internal units, cells only for a file
    with a periodic frame, ids the kept frame numbers."""
    images = frames(no_energy=(4,), periodic=(2,))
    src = write(tmp_path / "f.xyz", images)
    images = ase.io.read(src, ":")  # the values as the file holds them (8 decimals)
    convert_ase(src, tmp_path / "s.h5", skip_incomplete=True, progress=False, **SMALL)
    kept = [k for k in range(N) if k != 4]
    with Store(tmp_path / "s.h5") as s:
        np.testing.assert_array_equal(s.file["ids"][()], kept)
        np.testing.assert_array_equal(s.property("energy"), [images[k].get_potential_energy() for k in kept])
        np.testing.assert_array_equal(
            s.property("forces"), np.concatenate([images[k].get_forces() for k in kept]).astype(np.float32)
        )
        np.testing.assert_array_equal(s.offsets, np.cumsum([0] + [len(images[k]) for k in kept]))
        assert s.file["pbcs"][()].any(axis=1).tolist() == [k == 2 for k in kept]
        assert s.attrs["meta.skipped_incomplete_frames"] == "1"


@pytest.mark.parametrize(
    "edit, skip, message",
    [
        ("missing energy", False, r"f\.xyz \(frame 4\): no energy 'energy'.*it is in 9 of 10 frames"),
        ("NaN coordinate", False, r"f\.xyz \(frame 5, atom 1\): NaN/inf coordinates"),
        ("bad atom line", False, r"f\.xyz \(frame 7\): cannot read with ASE"),
        ("NaN energy", True, r"f\.xyz \(frame 8\): NaN/inf energy 'energy'"),
        ("element X", True, r"f\.xyz \(molecule 7\): atomic number 0 outside 1\.\.118"),
    ],
)
def test_errors_mid_file_name_the_global_frame_and_leave_nothing(tmp_path, capsys, edit, skip, message):
    """Frames 3-5 are the second block: the frame numbers are the file's, the molecule number is the store's
    (frame 8 is molecule 7 once frame 4, without energy, is skipped)."""
    images = frames(no_energy=(4,))
    if edit == "NaN energy":
        images[8].calc.results["energy"] = np.nan
    if edit == "element X":
        images[8].numbers[0] = 0
    path = write(tmp_path / "f.xyz", images)
    lines = path.read_text().splitlines()
    starts = np.cumsum([0] + [len(a) + 2 for a in images])
    if edit == "NaN coordinate":
        cols = lines[starts[5] + 3].split()
        cols[2] = "nan"
        lines[starts[5] + 3] = " ".join(cols)
    if edit == "bad atom line":
        lines[starts[7] + 3] = "H 1.0 2.0"  # the second atom line: ASE cannot read it
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=message):
        convert_ase(path, tmp_path / "out.h5", skip_incomplete=skip, progress=False, **SMALL)
    assert os.listdir(tmp_path) == ["f.xyz"]  # no store, no temporary folder
    if edit != "element X":  # read_ase alone does not check elements (write_store does)
        with pytest.raises(DataFormatError, match=message):
            read_ase(path, skip_incomplete=skip)
    capsys.readouterr()
    assert convert(path, tmp_path / "out.h5", *(["--skip-incomplete"] if skip else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("frame" in err or "molecule" in err), err
    assert os.listdir(tmp_path) == ["f.xyz"]


def test_interrupted_streaming_leaves_nothing_and_keeps_an_old_store(tmp_path, monkeypatch):
    src = write(tmp_path / "f.xyz", frames())
    out = tmp_path / "out.h5"
    convert_ase(src, out, progress=False)
    before = contents(out)
    original_add, calls = ase_io.FrameRules.add, []

    def add(self, block):
        calls.append(len(block))
        if len(calls) == 2:
            raise KeyboardInterrupt  # while reading the second block
        return original_add(self, block)

    monkeypatch.setattr(ase_io.FrameRules, "add", add)
    with pytest.raises(KeyboardInterrupt):
        convert_ase(src, out, progress=False, **SMALL)
    monkeypatch.undo()
    original_write, writes = store_mod._write_dataset, []

    def failing(*args):
        writes.append(args[1])
        if len(writes) == 9:
            raise OSError("disk full")  # while copying the kept frames into the store
        original_write(*args)

    monkeypatch.setattr(store_mod, "_write_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        convert_ase(src, out, progress=False, **SMALL)
    assert sorted(os.listdir(tmp_path)) == ["f.xyz", "out.h5"] and contents(out) == before


def test_progress_bar_over_frames(tmp_path, capsys):
    src = write(tmp_path / "f.xyz", frames())
    capsys.readouterr()
    assert main(["data", "convert", str(src), str(tmp_path / "a.h5")]) == 0
    err = capsys.readouterr().err
    assert "reading f.xyz" in err and f"{N}/{N}" in err and "frame" in err
    assert convert(src, tmp_path / "b.h5") == 0
    assert "reading" not in capsys.readouterr().err


def test_db_rows_are_read_page_by_page(tmp_path):
    src = write(tmp_path / "f.db", frames(periodic=(1,)))
    whole = read_ase(src)
    pages = list(ase_io._db_rows(src, None, page=3))
    assert len(pages) == N and [len(a) for a in pages] == whole.n_atoms.tolist()
    assert len(list(ase_io._db_rows(src, 4, page=3))) == 4


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    """Peak RSS of the conversion (child process, ``os.wait4``) of a 16 MB and a 56 MB extxyz. The in-memory
    path must at least hold the float64 positions and forces of every atom (48 bytes per atom): for the extra
    atoms of the larger file that is the independent expectation. The streaming path's extra peak memory must be
    a small fraction of it (its buffers are fixed: blocks of frames, chunks of atoms)."""
    script = load_script("streaming_convert")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peaks, atoms = [], []
    for mb in (16, 56):
        src = tmp_path / f"w{mb}.extxyz"
        info = script.write_water_extxyz(src, mb * 10**6)
        peaks.append(
            script.measure(script.convert_argv(src, tmp_path / f"w{mb}.h5"), env, tmp_path)["peak_rss_mib"]
        )
        atoms.append(info["atoms"])
        src.unlink()
    in_memory_needs = 48 * (atoms[1] - atoms[0]) / 2**20  # MiB, a lower bound for the in-memory path
    assert in_memory_needs > 20
    growth = peaks[1] - peaks[0]
    print(
        f"peaks {peaks} MiB for {atoms} atoms; growth {growth:.1f} MiB, in-memory needs >= {in_memory_needs:.0f}"
    )
    assert growth < 0.25 * in_memory_needs
    assert sys.platform != "linux" or peaks[1] < 2048
