"""Generic ASE input/output: extxyz and ASE-db in, extxyz out (the only data module that imports ase).

ASE stores results of a calculator (``energy``, ``forces``; extxyz ``energy=`` in the header and a ``forces``
column become a SinglePointCalculator), other per-frame values in ``atoms.info`` and per-atom arrays in
``atoms.arrays``. ASE's convention is eV and Å, but many files are not (the MD17/rMD17 extxyz files hold kcal/mol and
kcal/mol/Å): state the units with ``energy_unit=``; they are recorded in the table, not converted.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from atomnet.data.spool import Spool
from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError, first_line
from atomnet.files import atomic_output
from atomnet.units import internal_unit, length_factor, unit_factor


def _one_line(e: Exception) -> str:
    """``Type: first line of the message`` (ASE's parsers raise many exception types)."""
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


_PROPERTIES = re.compile(rb"""Properties=["']?([^\s"']+)""")


def _count_rest(lines: Iterator[bytes]) -> int:
    """How many lines are left in ``lines`` (consumed at C speed)."""
    last = deque(enumerate(lines, 1), maxlen=1)
    return last[0][0] if last else 0


def _check_xyz_counts(path: Path) -> int | None:
    """Refuse an (ext)xyz frame whose atom count runs past the end of the file, or whose ``Properties`` declare
    more columns than its atom lines have, before ASE reads it: ASE counts both out one by one, so a header of
    10^18 atoms or a ``pos:R:10^18`` would keep it busy for ever.

    The file is walked line by line (headers are parsed, atom lines skipped), so memory stays bounded. Lines are
    split at ``\\n`` and numbered as ``data.split(b"\\n")`` numbers them. Returns the number of frames (the walk
    stops at a blank line, as ASE does), or ``None`` when a header is not a count: then ASE names the problem.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(size - 1, 0))
        last_newline = size == 0 or fh.read(1) == b"\n"
        fh.seek(0)
        lines = itertools.chain(fh, [b""] if last_newline else [])  # split() ends with b"" after a final \n
        i = frame = 0
        line = next(lines, None)
        while line is not None and line.strip():
            try:
                n = int(line)
            except ValueError:
                return None  # not a count: ASE names the problem
            comment = next(lines, None) if n >= 0 else None
            first = next(lines, None) if n >= 1 and comment is not None else None
            got = (comment is not None) + (first is not None)
            if n >= 0 and got == min(n, 1) + 1:  # skip the other atom lines
                got += _count_rest(itertools.islice(lines, min(n - 1, sys.maxsize))) if n > 1 else 0
            if n < 0 or got < n + 1:
                after = got + (_count_rest(lines) if n < 0 else 0)
                raise DataFormatError(
                    path,
                    f"the frame header says {n} atoms but the file has {max(after - 1, 0)} lines after it",
                    f"frame {frame}, line {i + 1}",
                )
            spec = _PROPERTIES.search(comment) if n else None
            try:
                columns = sum(int(c) for c in spec.group(1).split(b":")[2::3]) if spec else 0
            except ValueError:
                columns = 0  # not a count: ASE names the problem
            if columns and columns > len(first.split()):
                raise DataFormatError(
                    path,
                    f"Properties declare {columns} columns but the atom lines have {len(first.split())}",
                    f"frame {frame}, line {i + 2}",
                )
            i += n + 2
            line = next(lines, None)
            while line is not None and line.lstrip().startswith(b"VEC"):  # lattice vectors of plain xyz
                i += 1
                line = next(lines, None)
            frame += 1
    return frame


def _head_stop(index) -> tuple[bool, int | None]:
    """(whether ``index`` selects frames from the first one, i.e. ``":"`` or ``":N"``; N or ``None``)."""
    if index == ":":
        return True, None
    if isinstance(index, str) and re.fullmatch(r":\d+", index):
        return True, int(index[1:])
    return False, None


def _db_rows(path: Path, stop: int | None, page: int = 1000) -> Iterator[ase.Atoms]:
    """The first ``stop`` (all if ``None``) rows of an ASE SQLite database in id order, as ``ase.io.iread``
    gives them, fetched ``page`` rows at a time (ASE's own reader fetches every row at once)."""
    import ase.db

    last, left = 0, stop
    with ase.db.connect(path, type="db", serial=True) as db:
        while left is None or left > 0:
            limit = page if left is None else min(page, left)
            rows = list(db.select(f"id>{last}", sort="id", limit=limit))
            for row in rows:
                yield row.toatoms()
            if len(rows) < limit:
                return
            last = rows[-1].id
            left = None if left is None else left - len(rows)


def _frames(path: Path, index, format: str | None) -> tuple[Iterator[ase.Atoms], int | None]:
    """The selected frames of ``path`` one by one (``ase.io.iread``; an SQLite ``.db`` row page by row page)
    and their number if known without reading them (for a progress bar).

    A missing file, an (ext)xyz atom count beyond the file (:func:`_check_xyz_counts`, checked here, before
    any frame) and any failure of ASE are one-line :class:`DataFormatError`; ASE's names the first frame it
    cannot read when ``index`` selects frames from the first one (``":"`` or ``":N"``).
    """
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    kind = (format or path.suffix.lstrip(".")).lower()
    head, stop = _head_stop(index)
    total = _check_xyz_counts(path) if kind in ("xyz", "extxyz") else None
    if kind == "db" and head:
        frames = _db_rows(path, stop)
    else:
        frames = ase.io.iread(path, index=index, format=format)
    if head and total is not None and stop is not None:
        total = min(total, stop)
    return _reported(path, frames, head), (total if head else None)


def _reported(path: Path, frames: Iterator[ase.Atoms], name_frame: bool) -> Iterator[ase.Atoms]:
    k = 0
    try:
        for atoms in frames:
            yield atoms
            k += 1
    except Exception as e:  # noqa: BLE001 - ASE raises many types for malformed files
        problem = f"cannot read with ASE ({_one_line(e)})"
        raise DataFormatError(path, problem, f"frame {k}" if name_frame else None) from None


def read_structure(path: str | Path) -> ase.Atoms:
    """The first frame of a structure file, without its calculator, for commands that take one structure
    (relax, vibrate, md, serve); one-line errors for a missing or unreadable file."""
    from atomnet.errors import AtomNetError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: structure file not found")
    try:
        atoms = ase.io.read(path, index=0)
    except Exception as exc:  # noqa: BLE001 - ASE raises many kinds for bad files
        raise AtomNetError(f"{path}: cannot read structure ({str(exc).strip()[:200]})") from None
    atoms.calc = None
    return atoms


def _value(atoms: ase.Atoms, key: str, per_atom: bool):
    """Value of ``key`` from the calculator results, else from arrays (per atom) or info; ``None`` if absent."""
    if atoms.calc is not None and key in getattr(atoms.calc, "results", {}):
        return atoms.calc.results[key]
    if per_atom:
        return atoms.arrays.get(key)
    return atoms.info.get(key)


def _missing_message(what: str, name: str, where: str, present: int, n: int) -> str:
    text = f"no {what} {name!r} ({where})"
    if present:
        text += (
            f"; it is in {present} of {n} frames: pass skip_incomplete=True (atomnet data convert "
            f"--skip-incomplete) to keep only the frames that have it"
        )
    return text


def _structure_problem(path: Path, atoms: ase.Atoms, i: int) -> DataFormatError | None:
    """The error for frame ``i`` if it has no atoms, NaN/inf coordinates or a NaN/inf cell, else ``None``."""
    if len(atoms) == 0:
        return DataFormatError(path, "empty structure (0 atoms)", f"frame {i}")
    pos = atoms.get_positions()
    if not np.isfinite(pos).all():
        where = f"frame {i}, atom {int(np.argmax(~np.isfinite(pos).all(1)))}"
        return DataFormatError(path, "NaN/inf coordinates", where)
    if not np.isfinite(atoms.get_cell().array).all():
        return DataFormatError(path, "NaN/inf in the cell (Lattice)", f"frame {i}")
    return None


def _energy_problem(e, name: str) -> tuple[str | None, str | None, float]:
    """(kind, problem, value) of an energy read from a frame: kind ``"energy type"`` (not one number) or
    ``"energy nan"`` with the message, or ``(None, None, value)``."""
    if np.size(e) != 1 or np.asarray(e).dtype.kind not in "iuf":
        e = np.asarray(e)
        return (
            "energy type",
            f"energy {name!r} is not one number ({e.size} values of dtype {e.dtype})",
            np.nan,
        )
    value = float(np.asarray(e).reshape(-1)[0])
    if not np.isfinite(value):
        return "energy nan", f"NaN/inf energy {name!r}", np.nan
    return None, None, value


def _forces_problem(f, n_atoms: int, name: str) -> str | None:
    """What is wrong with forces read from a frame of ``n_atoms`` atoms (shape, dtype, NaN/inf), or ``None``."""
    if np.shape(f) != (n_atoms, 3):
        return f"forces shape {np.shape(f)}, expected ({n_atoms}, 3)"
    if np.asarray(f).dtype.kind not in "iuf":
        return f"forces of dtype {np.asarray(f).dtype}, expected numbers"
    if not np.isfinite(f).all():
        return f"NaN/inf forces {name!r}"
    return None


#: value problems of kept frames, in the order :func:`read_ase` reports them
_PROBLEM_ORDER = ("energy type", "energy nan", "forces")


@dataclass
class Selection:
    """What :meth:`FrameRules.finish` decided once every frame was seen: which properties are read, which
    frames are kept, whether cells are written and where the ids come from; counts of the kept frames."""

    energy: bool
    forces: bool
    skip_incomplete: bool
    periodic: bool
    file_ids: bool
    n_frames: int
    n_kept: int
    n_atoms_kept: int
    meta: dict[str, str]

    def keep(self, has_energy: np.ndarray, has_forces: np.ndarray) -> np.ndarray:
        """(n,) bool: which of n frames are kept, from whether each has the energy and the forces."""
        keep = np.ones(len(has_energy), dtype=bool)
        if self.skip_incomplete:
            if self.energy:
                keep &= has_energy
            if self.forces:
                keep &= has_forces
        return keep


class FrameRules:
    """The checks of :func:`read_ase`, applied block by block (the one home of them, for :func:`read_ase` and
    the streaming :func:`convert_ase`); frame numbers are global (counted over the selected frames).

    :meth:`add` turns a block of frames into arrays (:func:`_block_arrays`) and notes every problem;
    :meth:`finish` raises, once all frames are seen, exactly the error :func:`read_ase` raises for the whole
    file: empty structures or NaN/inf coordinates or cells (the first frame), then an energy or forces present
    in some frames but missing in others (unless ``skip_incomplete``), nothing left after skipping, an energy
    that is not one number, a NaN/inf energy, then bad forces, each in the first *kept* frame. Which frames are
    kept is only known at the end (a property is read if any frame has it), so problems are noted for each
    class of frame (has the energy, has the forces) and counted per class.
    """

    def __init__(
        self,
        path: Path,
        index,
        energy_key: str | None,
        forces_key: str | None,
        skip_incomplete: bool,
        format: str | None,
    ):
        self.path, self.index, self.skip = path, index, skip_incomplete
        self.format = format
        self.wanted = (
            (
                "energy",
                energy_key or "energy",
                energy_key is not None,
                False,
                "calculator result or info key",
            ),
            (
                "forces",
                forces_key or "forces",
                forces_key is not None,
                True,
                "calculator result or per-atom array",
            ),
        )
        self.n = 0
        self.structure_error: DataFormatError | None = None
        self.present = {"energy": 0, "forces": 0}
        self.first_missing: dict[str, int | None] = {"energy": None, "forces": None}
        #: [has energy, has forces] -> (frames, frames with an integer info['id'], periodic frames, atoms)
        self.counts = np.zeros((2, 2, 4), dtype=np.int64)
        #: (kind, has energy, has forces) -> (first frame, problem)
        self.problems: dict[tuple[str, bool, bool], tuple[int, str]] = {}

    def add(self, frames: list[ase.Atoms]) -> dict[str, np.ndarray]:
        """Check a block of frames (the next ones of the file) and return its arrays (:func:`_block_arrays`)."""
        (_, e_name, _, _, _), (_, f_name, _, _, _) = self.wanted
        energies, forces, presence = [], [], []
        for k, atoms in enumerate(frames):
            i = self.n + k
            if self.structure_error is None:
                self.structure_error = _structure_problem(self.path, atoms, i)
            e, f = (_value(atoms, name, per_atom) for _, name, _, per_atom, _ in self.wanted)
            has = {"energy": e is not None, "forces": f is not None}
            for what, present in has.items():
                if present:
                    self.present[what] += 1
                elif self.first_missing[what] is None:
                    self.first_missing[what] = i
            he, hf = has["energy"], has["forces"]
            presence.append((he, hf))
            value = np.nan
            if he:
                kind, problem, value = _energy_problem(e, e_name)
                if kind:
                    self.problems.setdefault((kind, he, hf), (i, problem))
            energies.append(value)
            problem = _forces_problem(f, len(atoms), f_name) if hf else None
            if problem:
                self.problems.setdefault(("forces", he, hf), (i, problem))
            forces.append(np.asarray(f, dtype=np.float64) if hf and not problem else None)
            file_id = atoms.info.get("id")
            self.counts[int(he), int(hf)] += (
                1,
                isinstance(file_id, (int, np.integer)),
                bool(atoms.get_pbc().any()),
                len(atoms),
            )
        self.n += len(frames)
        has = np.array(presence, dtype=bool).reshape(-1, 2)
        return _block_arrays(frames, np.array(energies, dtype=np.float64), has, forces)

    def finish(self) -> Selection:
        """Raise the error :func:`read_ase` raises for these frames, if any; else what to keep."""
        path, n = self.path, self.n
        if n == 0:
            raise DataFormatError(path, f"no frames selected by index {self.index!r}")
        if self.structure_error is not None:
            raise self.structure_error
        read = [w for w in self.wanted if w[2] or self.present[w[0]] > 0]
        for what, name, _, _, where in read:
            if not self.skip and self.present[what] < n:
                problem = _missing_message(what, name, where, self.present[what], n)
                raise DataFormatError(path, problem, f"frame {self.first_missing[what]}")
        reads = {w[0] for w in read}
        kept = [
            (he, hf)
            for he in (False, True)
            for hf in (False, True)
            if not self.skip or ((he or "energy" not in reads) and (hf or "forces" not in reads))
        ]
        frames, with_id, periodic, atoms = sum(self.counts[int(he), int(hf)] for he, hf in kept)
        if frames == 0:
            names = " and ".join(f"{w[0]} {w[1]!r}" for w in read)
            raise DataFormatError(
                path, f"no frame has {names}: nothing left after skipping incomplete frames"
            )
        for kind in _PROBLEM_ORDER:
            found = [self.problems[(kind, he, hf)] for he, hf in kept if (kind, he, hf) in self.problems]
            if found:
                frame, problem = min(found)
                raise DataFormatError(path, problem, f"frame {frame}")
        meta = {"format": f"ase:{self.format or self.path.suffix.lstrip('.') or 'auto'}"}
        if self.skip:
            meta["skipped_incomplete_frames"] = str(n - int(frames))
        return Selection(
            energy="energy" in reads,
            forces="forces" in reads,
            skip_incomplete=self.skip,
            periodic=bool(periodic),
            file_ids=bool(with_id == frames),
            n_frames=n,
            n_kept=int(frames),
            n_atoms_kept=int(atoms),
            meta=meta,
        )


def _block_arrays(
    frames: list[ase.Atoms], energies: np.ndarray, has: np.ndarray, forces: list
) -> dict[str, np.ndarray]:
    """Columns of a block of n frames with N atoms in all (file units, before the incomplete-frame rule):
    per frame ``n_atoms`` (n,) int64, ``cells`` (n, 3, 3) float64, ``pbcs`` (n, 3) bool, ``file_ids`` (n,)
    int64 (``info['id']``, 0 where it is not an integer) with ``has_id``, ``energy`` (n,) float64 (NaN where
    absent or not a number), ``has_energy`` and ``has_forces`` (n,) bool (``has``: (n, 2), whether the frame
    has each); per atom ``numbers`` (N,) int64, ``positions`` (N, 3) float64 and, if any frame of the block
    has valid forces, ``forces`` (N, 3) float64 (NaN where a frame has none)."""
    ids = [a.info.get("id") for a in frames]
    has_id = np.array([isinstance(i, (int, np.integer)) for i in ids], dtype=bool)
    columns = {
        "n_atoms": np.array([len(a) for a in frames], dtype=np.int64),
        "numbers": np.concatenate([a.get_atomic_numbers() for a in frames]).astype(np.int64),
        "positions": np.concatenate([a.get_positions() for a in frames]).reshape(-1, 3),
        "cells": np.array([a.get_cell().array for a in frames], dtype=np.float64).reshape(-1, 3, 3),
        "pbcs": np.array([a.get_pbc() for a in frames], dtype=bool).reshape(-1, 3),
        "file_ids": np.array([i if h else 0 for i, h in zip(ids, has_id, strict=True)], dtype=np.int64),
        "has_id": has_id,
        "energy": energies,
        "has_energy": has[:, 0].copy(),
        "has_forces": has[:, 1].copy(),
    }
    if any(f is not None for f in forces):
        columns["forces"] = np.concatenate(
            [
                f if f is not None else np.full((len(a), 3), np.nan)
                for f, a in zip(forces, frames, strict=True)
            ]
        ).reshape(-1, 3)
    return columns


#: frames (and at most atoms) read and checked at a time; their arrays are then appended to a spool
BLOCK_FRAMES = 256
BLOCK_ATOMS = 20_000
#: most atoms per chunk when the kept frames are copied from the spool into the store
CHUNK_ATOMS = 1 << 16


def _blocks(frames: Iterator[ase.Atoms], block_frames: int, block_atoms: int) -> Iterator[list[ase.Atoms]]:
    """Consecutive lists of at most ``block_frames`` frames (fewer once they hold ``block_atoms`` atoms)."""
    block, atoms = [], 0
    for a in frames:
        block.append(a)
        atoms += len(a)
        if len(block) >= block_frames or atoms >= block_atoms:
            yield block
            block, atoms = [], 0
    if block:
        yield block


def _spool_frames(
    path: Path,
    index,
    format: str | None,
    rules: FrameRules,
    spool: Spool,
    block_frames: int = BLOCK_FRAMES,
    block_atoms: int = BLOCK_ATOMS,
    progress: bool = False,
) -> None:
    """Read the selected frames block by block, check each block with ``rules`` and append its arrays to
    ``spool`` (a tqdm bar over frames if ``progress``)."""
    from tqdm.auto import tqdm

    frames, total = _frames(path, index, format)
    with tqdm(total=total, desc=f"reading {path.name}", unit="frame", disable=not progress) as bar:
        for block in _blocks(frames, block_frames, block_atoms):
            atom_row = spool.rows("numbers")
            for name, column in rules.add(block).items():
                spool.append(name, column, row=atom_row if name == "forces" else None)
            bar.update(len(block))
            # ASE's SinglePointCalculator refers to itself (a bound method), so only a full garbage
            # collection would free it and its arrays: drop the arrays now
            for atoms in block:
                if atoms.calc is not None:
                    atoms.calc.results, atoms.calc.atoms = {}, None


def _kept_tables(
    spool: Spool,
    sel: Selection,
    source: Path,
    units: dict[str, str],
    length_unit: str,
    max_atoms: int | None = None,
) -> Iterator[MoleculeTable]:
    """The kept frames of the spool as :class:`MoleculeTable` chunks in file order (file units), each of at most
    ``max_atoms`` atoms (at least one frame; ``None``: one table). ``units``: source units of energy, forces."""
    window = sel.n_frames if max_atoms is None else 1 << 16
    atom = 0
    for w in range(0, sel.n_frames, window):
        n_atoms = spool.read("n_atoms", w, min(w + window, sel.n_frames))
        ends = np.cumsum(n_atoms)
        a = 0
        while a < len(n_atoms):
            b = len(n_atoms)
            if max_atoms is not None:
                start = int(ends[a - 1]) if a else 0
                b = max(a + 1, int(np.searchsorted(ends, start + max_atoms, side="right")))
            table = _kept_table(spool, sel, w + a, w + b, atom, n_atoms[a:b], source, units, length_unit)
            if table is not None:
                yield table
            atom += int(n_atoms[a:b].sum())
            a = b


def _kept_table(
    spool: Spool,
    sel: Selection,
    a: int,
    b: int,
    atom: int,
    n_atoms: np.ndarray,
    source: Path,
    units: dict[str, str],
    length_unit: str,
) -> MoleculeTable | None:
    """The kept frames among frames ``a:b`` (their first atom is spool row ``atom``), or ``None``."""
    keep = sel.keep(spool.read("has_energy", a, b), spool.read("has_forces", a, b))
    if not keep.any():
        return None
    stop = atom + int(n_atoms.sum())
    atom_keep = np.repeat(keep, n_atoms)
    properties = {}
    if sel.energy:
        properties["energy"] = spool.read("energy", a, b)[keep]
    if sel.forces:
        properties["forces"] = spool.read("forces", atom, stop)[atom_keep]
    ids = spool.read("file_ids", a, b)[keep] if sel.file_ids else (a + np.flatnonzero(keep)).astype(np.int64)
    return MoleculeTable(
        numbers=spool.read("numbers", atom, stop)[atom_keep],
        positions=spool.read("positions", atom, stop)[atom_keep],
        n_atoms=n_atoms[keep],
        properties=properties,
        units={k: units[k] for k in properties},
        per_atom={"forces"} & set(properties),
        length_unit=length_unit,
        cells=spool.read("cells", a, b)[keep] if sel.periodic else None,
        pbcs=spool.read("pbcs", a, b)[keep] if sel.periodic else None,
        source=str(source),
        ids=ids,
        meta=dict(sel.meta),
    )


def read_ase(
    path: str | Path,
    index: str | int = ":",
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    forces_unit: str | None = None,
    format: str | None = None,
    skip_incomplete: bool = False,
) -> MoleculeTable:
    """Read frames with :func:`ase.io.iread` (extxyz, ASE-db ``.db`` and any format ASE knows).

    A property is never dropped silently: one present in some frames and missing in others is an error naming
    the first frame without it, unless ``skip_incomplete`` keeps only the frames that have every property read
    (their frame numbers become the table's ``ids``; the count skipped is recorded in ``meta``). The checks are
    those of :class:`FrameRules`, shared with the streaming :func:`convert_ase`.

    Args:
        path: file to read.
        index: ASE frame selection (``":"`` all, ``"0:100"``, ``-1``); frame numbers in messages count the
            selected frames.
        energy_key: name of the energy (calculator result, else ``atoms.info``). ``None``: read ``"energy"`` if
            any frame has it (then every frame must), else no energy. A given key missing in a frame is an error.
        forces_key: name of the per-atom forces (calculator result, else ``atoms.arrays``); same rules.
        energy_unit: unit of the energies in the file (``"eV"``, ``"kcal/mol"``, ``"Hartree"``).
        length_unit: unit of positions/cells in the file.
        forces_unit: default ``f"{energy_unit}/{length_unit}"``.
        format: ASE format name, guessed from the file name if ``None``.
        skip_incomplete: keep only the frames that have the energy and forces (when read) instead of failing.

    Returns:
        MoleculeTable with positions (n_atoms_total, 3) in ``length_unit``, ``energy`` (n,) and per-atom ``forces``
        (n_atoms_total, 3) when present, units as stated, cells (n, 3, 3)/pbcs (n, 3) if any frame is periodic.
    """
    path = Path(path)
    rules = FrameRules(path, index, energy_key, forces_key, skip_incomplete, format)
    spool = Spool()
    _spool_frames(path, index, format, rules, spool)
    sel = rules.finish()
    units = {"energy": energy_unit, "forces": forces_unit or f"{energy_unit}/{length_unit}"}
    return next(_kept_tables(spool, sel, path, units, length_unit))


def convert_ase(
    path: str | Path,
    output: str | Path,
    index: str | int = ":",
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    forces_unit: str | None = None,
    format: str | None = None,
    skip_incomplete: bool = False,
    progress: bool = True,
    source: str | None = None,
    block_frames: int = BLOCK_FRAMES,
    block_atoms: int = BLOCK_ATOMS,
    chunk_atoms: int = CHUNK_ATOMS,
) -> Selection:
    """Convert an extxyz / ASE-db / ASE file to an HDF5 store in bounded memory: the same store, byte for byte
    in its datasets and attributes (but ``created_utc``), as ``write_store(read_ase(...))``.

    Frames are read ``block_frames`` at a time (fewer once a block holds ``block_atoms`` atoms), checked by
    :class:`FrameRules` (the errors of :func:`read_ase`, frame numbers global) and appended in file units to raw
    files in a hidden temporary folder next to ``output`` (``.<name>.<random>.tmp``; it needs about
    56 bytes per atom). Once every frame is seen (only then is it known which frames are kept and whether
    cells are written), the kept frames are copied into the store ``chunk_atoms`` atoms at a time by
    :func:`atomnet.data.store.write_store_chunks`, which writes a temporary file and renames it. A failure or
    an interruption leaves neither a store nor a temporary file (SIGKILL excepted: it runs no cleanup).

    Args: as :func:`read_ase`, and
        output: the ``.h5`` store (overwritten once the conversion is complete).
        progress: tqdm bars over the frames read and the molecules written.
        source: provenance recorded in the store (default ``str(path)``).

    Returns:
        The :class:`Selection`: frames read and kept, properties read, ``meta``.
    """
    from atomnet.data.store import write_store_chunks

    path, output = Path(path), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rules = FrameRules(path, index, energy_key, forces_key, skip_incomplete, format)
    units = {"energy": energy_unit, "forces": forces_unit or f"{energy_unit}/{length_unit}"}
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp") as tmp:
        spool = Spool(tmp)
        try:
            _spool_frames(path, index, format, rules, spool, block_frames, block_atoms, progress)
            sel = rules.finish()
            tables = _kept_tables(spool, sel, path, units, length_unit, chunk_atoms)
            write_store_chunks(tables, output, sel.n_kept, sel.n_atoms_kept, progress=progress, source=source)
        finally:
            spool.close()
    return sel


#: calculator results that hold one value per atom (everything else is one value per frame)
PER_ATOM_RESULTS = ("forces", "energies", "charges", "magmoms", "stresses", "dipoles")


def scan_ase(path: str | Path, index: str | int = ":", format: str | None = None) -> dict:
    """Which properties the frames of a file carry, without requiring them to be consistent.

    Returns ``{"frames": n, "properties": {name: {"frames": count, "first_missing": frame or None,
    "source": "calculator" | "info" | "arrays", "per_atom": bool}}}``; ``first_missing`` is the first
    frame without the property. Calculator results (``energy``, ``forces``), ``atoms.info`` keys and
    per-atom arrays other than ``numbers`` and ``positions`` are counted.
    """
    path = Path(path)
    frames, _ = _frames(path, index, format)
    found: dict[str, dict] = {}
    n = 0
    for i, atoms in enumerate(frames):
        n += 1
        names = {}
        if atoms.calc is not None:
            names.update(
                {k: ("calculator", k in PER_ATOM_RESULTS) for k in getattr(atoms.calc, "results", {})}
            )
        names.update({k: ("info", False) for k in atoms.info if k not in names})
        names.update({k: ("arrays", True) for k in atoms.arrays if k not in ("numbers", "positions")})
        for name, (source, per_atom) in names.items():
            entry = found.setdefault(
                name, {"frames": 0, "first_missing": 0 if i else None, "source": source, "per_atom": per_atom}
            )
            entry["frames"] += 1
        for name, entry in found.items():
            if name not in names and entry["first_missing"] is None:
                entry["first_missing"] = i
    return {"frames": n, "properties": found}


def format_scan(scan: dict, path: str | Path) -> str:
    """Text of :func:`scan_ase` for ``atomnet data info``: every property and how many frames have it."""
    n = scan["frames"]
    lines = [
        f"{path}: {n} frames (raw file, scanned; not converted)",
        f"{'property':<20} {'from':<11} {'per atom':<9} {'frames':>14}   first frame without it",
    ]
    incomplete = []
    for name, p in sorted(scan["properties"].items()):
        missing = "-" if p["first_missing"] is None else str(p["first_missing"])
        count = f"{p['frames']} / {n}"
        lines.append(
            f"{name:<20} {p['source']:<11} {'yes' if p['per_atom'] else 'no':<9} {count:>14}   {missing}"
        )
        if p["frames"] < n:
            incomplete.append(name)
    if incomplete:
        lines.append(
            f"incomplete: {', '.join(incomplete)} (missing in some frames; atomnet data convert refuses energy or "
            "forces missing in some frames unless --skip-incomplete keeps only the frames that have them)"
        )
    return "\n".join(lines)


def table_to_atoms(table: MoleculeTable, internal_units: bool = True) -> list[ase.Atoms]:
    """One ``ase.Atoms`` per molecule. ``energy``/``forces`` go to a SinglePointCalculator, other per-molecule
    properties to ``info`` and per-atom ones to ``arrays``.

    ``internal_units=True`` converts to eV and Å (ASE's convention) with :func:`atomnet.units.unit_factor`;
    units it does not know (D, GHz, ...) are kept. ``False`` writes the table's numbers as they are.
    """
    lf = length_factor(table.length_unit) if internal_units else 1.0
    factors = {k: (unit_factor(u) if internal_units else 1.0) for k, u in table.units.items()}
    o = table.offsets
    out = []
    for m in range(table.n_molecules):
        a, b = o[m], o[m + 1]
        atoms = ase.Atoms(numbers=table.numbers[a:b], positions=table.positions[a:b] * lf)
        if table.cells is not None:
            atoms.cell = table.cells[m] * lf
            atoms.pbc = table.pbcs[m] if table.pbcs is not None else True
        results = {}
        for key, values in table.properties.items():
            f = factors.get(key, 1.0)
            if key in table.per_atom:
                v = np.asarray(values[a:b]) * f
                if key == "forces":
                    results["forces"] = v
                else:
                    atoms.arrays[key] = v
            else:
                v = values[m] * f
                if key == "energy":
                    results["energy"] = float(v)
                else:
                    atoms.info[key] = v.item() if np.ndim(v) == 0 else np.asarray(v)
        if table.ids is not None:
            atoms.info["id"] = int(table.ids[m])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


def write_extxyz(table: MoleculeTable, path: str | Path, internal_units: bool = True) -> Path:
    """Write ``table`` as extended XYZ, atomically (temp file in the same folder, then ``os.replace``).

    Energies/forces are written as ASE calculator results (``energy=`` header, ``forces`` column). With
    ``internal_units=True`` (default) values are converted to eV, eV/Å and Å, so ASE and :func:`read_ase`
    read them with the default units; the unit names written are recorded in the header key ``units``.
    """
    path = Path(path)
    atoms_list = table_to_atoms(table, internal_units=internal_units)
    names = {k: (internal_unit(u) if internal_units else u) for k, u in table.units.items()}
    length = "Angstrom" if internal_units else table.length_unit
    units_text = ";".join([f"positions={length}", *(f"{k}={v}" for k, v in sorted(names.items()))])
    for atoms in atoms_list:
        atoms.info["units"] = units_text
    with atomic_output(path) as tmp:
        ase.io.write(tmp, atoms_list, format="extxyz")
    return path


def write_predictions(pred: dict[str, np.ndarray], path: str | Path) -> Path:
    """Structures with reference and predicted values as extended XYZ, atomically, for users' own analysis.

    ``pred`` is :func:`atomnet.training.evaluate.predict` with ``structures=True``: per molecule
    ``energy``/``energy_ref`` eV, ``n_atoms``, optional ``index`` (store index); per atom ``numbers``,
    ``positions`` Å, ``atomic_energies`` eV, optional ``forces``/``forces_ref`` eV/Å, optional ``cell``
    (n_molecules, 3, 3) Å. Header keys ``energy_ref``, ``energy_pred``, ``energy_error`` (eV), ``index``,
    ``units``; columns ``energies_pred`` (eV), ``forces_ref``, ``forces_pred`` (eV/Å). Read back with
    ``ase.io.read(path, index=":")``: ``atoms.info["energy_pred"]``, ``atoms.arrays["forces_pred"]``.
    """
    starts = np.concatenate([[0], np.cumsum(pred["n_atoms"])])
    frames = []
    for m in range(len(pred["n_atoms"])):
        a, b = int(starts[m]), int(starts[m + 1])
        atoms = ase.Atoms(numbers=pred["numbers"][a:b], positions=pred["positions"][a:b])
        if "cell" in pred:
            atoms.cell, atoms.pbc = pred["cell"][m], pred["pbc"][m]
        atoms.info["energy_ref"] = float(pred["energy_ref"][m])
        atoms.info["energy_pred"] = float(pred["energy"][m])
        atoms.info["energy_error"] = float(pred["energy"][m] - pred["energy_ref"][m])
        if "index" in pred:
            atoms.info["index"] = int(pred["index"][m])
        atoms.info["units"] = "energy=eV;forces=eV/Angstrom;positions=Angstrom"
        atoms.arrays["energies_pred"] = pred["atomic_energies"][a:b].astype(np.float64)
        if "forces" in pred:
            atoms.arrays["forces_ref"] = pred["forces_ref"][a:b].astype(np.float64)
            atoms.arrays["forces_pred"] = pred["forces"][a:b].astype(np.float64)
        frames.append(atoms)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, suffix=".xyz") as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return path
