"""The on-disk HDF5 store: one file per dataset, ragged layout, internal units (eV, Å, eV/Å).

Layout (all datasets contiguous and uncompressed, so they can be memory-mapped):

=============================  ==========================  ==========================================
dataset                        shape                       dtype / unit
=============================  ==========================  ==========================================
``numbers``                    (n_atoms_total,)            int8, atomic numbers Z
``positions``                  (n_atoms_total, 3)          float32, Angstrom
``offsets``                    (n_molecules + 1,)          int64, first atom of each molecule
``properties/<name>``          (n_molecules, ...)          float64 for energies (eV), else float32
``atom_properties/<name>``     (n_atoms_total, ...)        float32 (forces: eV/Angstrom)
``cells``, ``pbcs``, ``ids``   (n_molecules, 3, 3), (n, 3)  optional: Angstrom, bool, int64
=============================  ==========================  ==========================================

Every dataset carries the attributes ``unit`` (internal) and ``source_unit``. File attributes record the
format version, atomnet version, source, sha256 of the source file, conversion date (UTC, ISO 8601) and
the reader's ``meta`` (prefixed ``meta.``). h5py is used only in this module and :mod:`atomnet.data.dataset`.
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError, first_line
from atomnet.files import atomic_output
from atomnet.units import internal_unit, unit_factor

FORMAT_NAME = "atomnet-store"
#: store layout version written by :func:`write_store`; stores of versions 1..FORMAT_VERSION are read
FORMAT_VERSION = 1
REQUIRED = ("numbers", "positions", "offsets")
MAX_Z = 118
#: top-level datasets of a store and the numpy dtype kinds each may have (anything else is refused)
LAYOUT = {"numbers": "iu", "positions": "f", "offsets": "iu", "cells": "f", "pbcs": "b", "ids": "iu"}
#: groups of property datasets: per molecule, per atom; their datasets may be integer, float or bool
GROUPS = ("properties", "atom_properties")
#: most elements an attribute may hold (atomnet writes scalars)
MAX_ATTRIBUTE_SIZE = 4096
#: a compressed dataset may claim at most this many times its stored bytes (deflate cannot exceed ~1032)
MAX_COMPRESSION = 1100
#: rows (atoms or molecules) :meth:`Store.summary` reads at a time, so it runs in bounded memory
SUMMARY_ROWS = 1 << 17


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _molecule_of_atom(offsets: np.ndarray, atom: int) -> int:
    return int(np.searchsorted(offsets, atom, side="right") - 1)


def validate_table(table: MoleculeTable, first_molecule: int = 0) -> None:
    """Raise :class:`DataFormatError` (naming the molecule) for tables the store cannot hold.

    Checks: shapes of numbers/positions/n_atoms/properties/cells, empty molecules, atomic numbers in
    1..118, finite positions. ``first_molecule``: the store index of the table's first molecule (a chunk
    of a larger store), added to the molecule numbers in messages.
    """
    src = table.source or "<table>"
    n_atoms = np.asarray(table.n_atoms)
    numbers = np.asarray(table.numbers)
    positions = np.asarray(table.positions)
    if n_atoms.ndim != 1:
        raise DataFormatError(src, f"n_atoms must be 1-dimensional, got shape {n_atoms.shape}")
    if n_atoms.size and n_atoms.min() < 1:
        m = int(np.argmin(n_atoms))
        raise DataFormatError(src, "empty molecule (0 atoms)", f"molecule {first_molecule + m}")
    total = int(n_atoms.sum())
    if numbers.shape != (total,):
        raise DataFormatError(src, f"numbers has shape {numbers.shape}, expected ({total},) = sum(n_atoms)")
    if positions.shape != (total, 3):
        raise DataFormatError(src, f"positions has shape {positions.shape}, expected ({total}, 3)")
    offsets = table.offsets

    def molecule(atom: int) -> str:
        return f"molecule {first_molecule + _molecule_of_atom(offsets, atom)}"

    bad = np.flatnonzero((numbers < 1) | (numbers > MAX_Z))
    if bad.size:
        a = int(bad[0])
        raise DataFormatError(
            src,
            f"atomic number {int(numbers[a])} outside 1..{MAX_Z}",
            molecule(a),
        )
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        a = int(bad[0])
        raise DataFormatError(src, f"non-finite position {positions[a].tolist()}", molecule(a))
    length = table.length_unit or "Angstrom"
    _check_fits(src, "position", positions, length, offsets, True, first_molecule)
    n_mol = len(n_atoms)
    for name, values in table.properties.items():
        expected = total if name in table.per_atom else n_mol
        what = "per-atom" if name in table.per_atom else "per-molecule"
        if np.ndim(values) == 0 or len(values) != expected:
            raise DataFormatError(
                src,
                f"{what} property {name!r} has shape {np.shape(values)}, expected first dimension {expected}",
            )
        unit, per_atom = table.units.get(name, ""), name in table.per_atom
        _check_fits(src, f"{name!r} value", values, unit, offsets, per_atom, first_molecule)
    for name, arr, shape in (("cells", table.cells, (n_mol, 3, 3)), ("pbcs", table.pbcs, (n_mol, 3))):
        if arr is not None and np.shape(arr) != shape:
            raise DataFormatError(src, f"{name} has shape {np.shape(arr)}, expected {shape}")
    if table.cells is not None:
        bad = np.flatnonzero(
            ~np.isfinite(np.asarray(table.cells, dtype=np.float64)).reshape(n_mol, -1).all(axis=1)
        )
        if bad.size:
            raise DataFormatError(src, "non-finite cell", f"molecule {first_molecule + int(bad[0])}")
        _check_fits(src, "cell vector", table.cells, length, offsets, False, first_molecule)
    if table.ids is not None and np.shape(table.ids) != (n_mol,):
        raise DataFormatError(src, f"ids has shape {np.shape(table.ids)}, expected ({n_mol},)")


def _check_fits(
    src, what: str, values, source_unit: str, offsets: np.ndarray, per_atom: bool, first_molecule: int = 0
) -> None:
    """Refuse finite float ``values`` that would become inf in the store (beyond float32, or float64 for eV,
    after the unit conversion of :func:`_convert`), naming the molecule (``first_molecule`` + its index)."""
    v = np.asarray(values)
    if v.dtype.kind != "f" or v.size == 0:
        return
    biggest = np.max(np.abs(v), initial=0.0, where=np.isfinite(v))
    with np.errstate(over="ignore"):
        if np.isfinite(_convert(np.array([biggest]), source_unit)[0]).all():
            return
        converted, unit = _convert(v, source_unit)
    bad = (np.isfinite(v) & ~np.isfinite(converted)).reshape(len(v), -1)
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    value = float(v.reshape(len(v), -1)[row][bad[row]][0])
    molecule = _molecule_of_atom(offsets, row) if per_atom else row
    raise DataFormatError(
        src,
        f"{what} {value:g} {source_unit} is too large for the store ({converted.dtype} {unit})",
        f"molecule {first_molecule + molecule}",
    )


def _convert(values: np.ndarray, source_unit: str) -> tuple[np.ndarray, str]:
    """Values in internal units (float64 for energies in eV, float32 for other floats) and the unit name."""
    values = np.asarray(values)
    unit = internal_unit(source_unit) if source_unit else ""
    factor = unit_factor(source_unit) if source_unit else 1.0
    if values.dtype.kind in "iub" and factor == 1.0:
        return values, unit
    if values.dtype.kind not in "iubf":
        raise TypeError(f"cannot store non-numeric values of dtype {values.dtype}")
    dtype = np.float64 if unit == "eV" else np.float32
    return (values.astype(np.float64) * factor).astype(dtype), unit


def _write_dataset(
    group: h5py.Group,
    name: str,
    data: np.ndarray,
    unit: str,
    source_unit: str,
    start: int = 0,
    rows: int | None = None,
) -> None:
    """Write ``data`` as rows ``start:start + len(data)`` of the contiguous, uncompressed dataset ``name`` of
    ``rows`` rows (default ``len(data)``), created with its unit attributes when it is not there yet."""
    if name not in group:
        shape = (len(data) if rows is None else rows, *data.shape[1:])
        dset = group.create_dataset(name, shape=shape, dtype=data.dtype)
        dset.attrs["unit"] = unit
        dset.attrs["source_unit"] = source_unit
    if len(data):
        group[name][start : start + len(data)] = np.ascontiguousarray(data)


def _jobs(table: MoleculeTable, source: str) -> list[tuple[str, str, object, str]]:
    """(group, name, make, source unit) of every dataset of ``table`` but ``offsets``; ``make()`` returns the
    array in internal units (numbers int8, positions/cells float32 Angstrom, pbcs bool, ids int64,
    properties by :func:`_convert`) and its unit, one dataset at a time (bounded peak memory)."""
    length_unit = table.length_unit or "Angstrom"
    lf = unit_factor(length_unit)
    length = internal_unit(length_unit)

    def prop(name: str):
        try:
            return _convert(table.properties[name], table.units.get(name, ""))
        except TypeError as exc:
            raise DataFormatError(source or "<table>", f"property {name!r}: {exc}") from None

    jobs: list[tuple[str, str, object, str]] = [
        ("", "numbers", lambda: (np.asarray(table.numbers).astype(np.int8), ""), ""),
        (
            "",
            "positions",
            lambda: ((np.asarray(table.positions, np.float64) * lf).astype(np.float32), length),
            length_unit,
        ),
    ]
    if table.cells is not None:
        jobs.append(
            (
                "",
                "cells",
                lambda: ((np.asarray(table.cells, np.float64) * lf).astype(np.float32), length),
                length_unit,
            )
        )
    if table.pbcs is not None:
        jobs.append(("", "pbcs", lambda: (np.asarray(table.pbcs, dtype=bool), ""), ""))
    if table.ids is not None:
        jobs.append(("", "ids", lambda: (np.asarray(table.ids, dtype=np.int64), ""), ""))
    for name in table.properties:
        group = "atom_properties" if name in table.per_atom else "properties"
        jobs.append((group, name, lambda name=name: prop(name), table.units.get(name, "")))
    return jobs


def _write_attributes(f: h5py.File, table: MoleculeTable, source: str, digest: str) -> None:
    """File attributes: format and atomnet versions, source and its sha256, UTC time, units, ``meta.*``."""
    from atomnet import __version__

    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["atomnet_version"] = __version__
    f.attrs["source"] = source
    f.attrs["source_sha256"] = digest
    f.attrs["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    f.attrs["length_source_unit"] = table.length_unit or "Angstrom"
    for key, value in table.meta.items():
        f.attrs[f"meta.{key}"] = str(value)


def write_store(
    table: MoleculeTable, path: str | os.PathLike, progress: bool = True, source: str | None = None
) -> Path:
    """Convert ``table`` (source units) to internal units and write it as an HDF5 store at ``path``.

    The file is written to a temporary file in the same directory and renamed at the end, so an
    interrupted or failed conversion leaves neither a half-written store nor the temporary file.

    Args:
        table: reader output, in its source units (``table.units``, ``table.length_unit``).
        path: output ``.h5`` file (overwritten if present).
        progress: show a tqdm progress bar over the molecules written.
        source: source file for provenance (default ``table.source``); its sha256 is recorded if it is a file.

    Returns:
        The output path.
    """
    return write_store_chunks(
        [table], path, table.n_molecules, int(np.sum(table.n_atoms)), progress=progress, source=source
    )


def write_store_chunks(
    tables: Iterable[MoleculeTable],
    path: str | os.PathLike,
    n_molecules: int,
    n_atoms_total: int,
    progress: bool = True,
    source: str | None = None,
) -> Path:
    """Write consecutive chunks of one dataset (MoleculeTables in source units, with the same properties,
    units and ``meta``) as one HDF5 store, a chunk at a time: the store :func:`write_store` writes for their
    concatenation, with the same contiguous, uncompressed datasets (memory-mappable).

    Each chunk is validated (:func:`validate_table`, molecules numbered in the whole store), converted to
    internal units and written into datasets created with their final shapes (``n_molecules`` molecules,
    ``n_atoms_total`` atoms in all). A temporary file is renamed onto ``path`` at the end
    (:func:`atomnet.files.atomic_output`); a failure leaves neither. ``source``: as for :func:`write_store`
    (default: the first chunk's ``source``). Returns ``path``.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = iter(tables)
    first = next(chunks)
    source = str(source if source is not None else first.source)
    digest = sha256_of(source) if source and os.path.isfile(source) else ""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _write_attributes(f, first, source, digest)
        for group_name in GROUPS:
            f.create_group(group_name)
        offsets = f.create_dataset("offsets", shape=(n_molecules + 1,), dtype=np.int64)
        offsets.attrs["unit"] = ""
        offsets.attrs["source_unit"] = ""
        offsets[0] = 0
        molecule = atom = 0
        with tqdm(
            total=n_molecules, desc=f"writing {path.name}", disable=not progress, unit="molecule"
        ) as bar:
            for table in itertools.chain([first], chunks):
                validate_table(table, first_molecule=molecule)
                n, n_at = table.n_molecules, int(np.sum(table.n_atoms))
                if molecule + n > n_molecules or atom + n_at > n_atoms_total:
                    raise ValueError(f"chunks hold more than {n_molecules} molecules / {n_atoms_total} atoms")
                for group_name, name, make, src_unit in _jobs(table, source):
                    per_atom = group_name == "atom_properties" or name in ("numbers", "positions")
                    data, unit = make()
                    start, rows = (atom, n_atoms_total) if per_atom else (molecule, n_molecules)
                    _write_dataset(
                        f[group_name] if group_name else f, name, data, unit, src_unit, start, rows
                    )
                    del data
                if n:
                    offsets[molecule + 1 : molecule + n + 1] = atom + table.offsets[1:]
                molecule, atom = molecule + n, atom + n_at
                bar.update(n)
        if (molecule, atom) != (n_molecules, n_atoms_total):
            raise ValueError(
                f"chunks hold {molecule} molecules / {atom} atoms, expected {n_molecules} / {n_atoms_total}"
            )
    return path


class Store:
    """Read access to an HDF5 store written by :func:`write_store` (values in internal units).

    Opening checks, before any array is read, that the file is HDF5, not truncated, an atomnet store of a
    format version this code reads (a newer one names both versions), holds only the store's datasets with
    their dtypes, consistent shapes and all their bytes, and no opaque attributes (:meth:`_check`); problems
    raise a one-line :class:`DataFormatError` naming the file.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such store")
        _check_global_heaps(self.path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataFormatError(
                self.path, f"not a readable HDF5 file (truncated or corrupt?): {exc}"
            ) from None
        try:
            self._check()
        except BaseException:
            self.file.close()
            raise
        self.offsets: np.ndarray = self.file["offsets"][()]
        """(n_molecules + 1,) int64 first atom of each molecule."""

    def _check(self) -> None:
        """Validate the file before any array is read (see ``docs/store_format.md``).

        Attributes must be numbers or strings (no opaque bytes, which could hold a pickle); the format tag and
        version must be known (a newer version names both); only the datasets of the layout may exist, as hard
        links with local storage (no external, virtual or linked data); dtypes and shapes must agree with each
        other and every dataset's bytes must really be in the file, so no later read allocates more than the
        file holds. Raises :class:`DataFormatError` naming the file.
        """
        try:  # h5py raises OSError, KeyError, ... where the file's structures are corrupt
            self._check_version()
            self._check_layout()
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            if isinstance(exc, DataFormatError):
                raise
            raise DataFormatError(self.path, f"corrupt store: {first_line(exc)}") from None

    def _check_version(self) -> None:
        """Attributes of the file, its format tag and version."""
        f = self.file
        self._check_attributes(f, "file")
        tag = f.attrs.get("format")
        if (tag.decode(errors="replace") if isinstance(tag, bytes) else tag) != FORMAT_NAME:
            raise DataFormatError(self.path, f"not an atomnet store (attribute 'format' != {FORMAT_NAME!r})")
        version = f.attrs.get("format_version")
        version = version.item() if isinstance(version, np.generic) else version
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DataFormatError(
                self.path, f"store format version {version!r} is not supported (expected 1..{FORMAT_VERSION})"
            )
        if version > FORMAT_VERSION:
            raise DataFormatError(
                self.path,
                f"written by atomnet store format version {version}; this atomnet reads up to format version "
                f"{FORMAT_VERSION}: upgrade atomnet",
            )

    def _check_attributes(self, obj, where: str) -> None:
        """Refuse attributes that are not small numbers or strings before reading their values; then read them
        (at most 4,096 elements each), so a corrupt one fails here and not in a later read."""
        for name in obj.attrs:
            aid = obj.attrs.get_id(name)
            dtype, size = aid.dtype, int(np.prod(aid.shape or (), dtype=object))
            string = dtype.kind == "O" and h5py.check_string_dtype(dtype) is not None
            if size > MAX_ATTRIBUTE_SIZE or not (string or dtype.kind in "iufbSU"):
                raise DataFormatError(
                    self.path,
                    f"{where} attribute {name!r} has dtype {dtype} and {size} elements; a store's attributes are "
                    "numbers and strings (opaque bytes could hold a pickle): refused, not read",
                )
            obj.attrs[name]

    def _check_dataset(self, dset: h5py.Dataset, kinds: str) -> None:
        """Refuse a dataset of another dtype kind, with external/virtual storage, or whose bytes are not all in
        the file (unwritten chunks, a shape larger than its storage, a compression beyond deflate's)."""
        where = dset.name.lstrip("/")
        self._check_attributes(dset, f"dataset {where!r}")
        if dset.dtype.kind not in kinds:
            expected = {"iu": "integers", "f": "floats", "b": "booleans", "iufb": "numbers"}[kinds]
            raise DataFormatError(self.path, f"dataset {where!r} has dtype {dset.dtype}, expected {expected}")
        if dset.is_virtual or dset.external:
            raise DataFormatError(
                self.path, f"dataset {where!r} reads its data from other files (external or virtual): refused"
            )
        claimed = int(np.prod(dset.shape, dtype=object)) * dset.dtype.itemsize
        stored = int(dset.id.get_storage_size())
        if dset.chunks is None:
            complete = stored == claimed
        else:
            n_chunks = int(
                np.prod([-(-n // c) for n, c in zip(dset.shape, dset.chunks, strict=True)], dtype=object)
            )
            complete = (
                claimed <= MAX_COMPRESSION * stored + (1 << 20) and dset.id.get_num_chunks() == n_chunks
            )
        if not complete:
            raise DataFormatError(
                self.path,
                f"dataset {where!r} claims shape {dset.shape} ({claimed} bytes) but the file stores {stored} "
                "bytes of it",
            )

    def _check_layout(self) -> None:
        f = self.file
        for name in f:
            if not isinstance(f.get(name, getlink=True), h5py.HardLink):
                raise DataFormatError(
                    self.path, f"{name!r} is a link to other data, not part of a store: refused"
                )
            obj = f[name]
            if name in GROUPS and isinstance(obj, h5py.Group):
                self._check_attributes(obj, f"group {name!r}")
                for child in obj:
                    if not isinstance(obj.get(child, getlink=True), h5py.HardLink) or not isinstance(
                        obj[child], h5py.Dataset
                    ):
                        raise DataFormatError(
                            self.path, f"{name}/{child} is not a dataset of the store layout: refused"
                        )
                    self._check_dataset(obj[child], "iufb")
            elif name in LAYOUT and isinstance(obj, h5py.Dataset):
                self._check_dataset(obj, LAYOUT[name])
            else:
                raise DataFormatError(
                    self.path,
                    f"unexpected {type(obj).__name__.lower()} {name!r} (not part of the store layout)",
                )
        for name in REQUIRED:
            if name not in f:
                raise DataFormatError(self.path, f"missing dataset {name!r}")
        numbers, positions, offsets = f["numbers"], f["positions"], f["offsets"]
        if numbers.ndim != 1:
            raise DataFormatError(self.path, f"numbers has shape {numbers.shape}, expected (n_atoms,)")
        n_total = numbers.shape[0]
        if positions.shape != (n_total, 3):
            raise DataFormatError(self.path, f"positions shape {positions.shape} != ({n_total}, 3)")
        if offsets.ndim != 1 or not 1 <= offsets.shape[0] <= n_total + 1:
            raise DataFormatError(
                self.path,
                f"offsets has shape {offsets.shape}; a store of {n_total} atoms has 1..{n_total + 1} offsets",
            )
        offs = offsets[()]  # at most n_atoms + 1 values, all stored in the file (checked above)
        counts = np.diff(offs)
        if offs[0] != 0 or offs[-1] != n_total:
            raise DataFormatError(
                self.path,
                f"offsets are inconsistent with the number of atoms (they run from {offs[0]} to {offs[-1]}, "
                f"the store has {n_total} atoms)",
            )
        if counts.size and counts.min() < 1:
            m = int(np.argmin(counts))
            raise DataFormatError(
                self.path,
                f"offsets are inconsistent with the number of atoms: molecule {m} has {counts[m]} atoms",
            )
        block = 1 << 20  # numbers and positions are read in blocks of 1M atoms (12 MiB of float32)
        for start in range(0, n_total, block):
            z = numbers[start : start + block]
            bad = np.flatnonzero((z < 1) | (z > MAX_Z))
            if bad.size:
                a = int(bad[0])
                raise DataFormatError(
                    self.path,
                    f"atomic number {int(z[a])} outside 1..{MAX_Z}",
                    f"molecule {_molecule_of_atom(offs, start + a)}",
                )
        for start in range(0, n_total, block):
            bad = np.flatnonzero(~np.isfinite(positions[start : start + block]).all(axis=1))
            if bad.size:
                a = start + int(bad[0])
                m = _molecule_of_atom(offs, a)
                raise DataFormatError(
                    self.path,
                    f"non-finite position {positions[a].tolist()}",
                    f"molecule {m}, atom {a - offs[m]}",
                )
        n_mol = len(offs) - 1
        for group, size in (("properties", n_mol), ("atom_properties", n_total)):
            for name, dset in f.get(group, {}).items():
                if dset.shape[:1] != (size,):
                    raise DataFormatError(
                        self.path, f"{group}/{name} has shape {dset.shape}, expected first dimension {size}"
                    )
        for name, shape in (("cells", (n_mol, 3, 3)), ("pbcs", (n_mol, 3)), ("ids", (n_mol,))):
            if name in f and f[name].shape != shape:
                raise DataFormatError(self.path, f"{name} has shape {f[name].shape}, expected {shape}")
        if "cells" in f:  # (n_molecules, 3, 3): small next to the positions
            bad = np.flatnonzero(~np.isfinite(f["cells"][()]).reshape(n_mol, -1).all(axis=1))
            if bad.size:
                raise DataFormatError(self.path, "non-finite cell", f"molecule {int(bad[0])}")

    # --- basic facts ------------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def __len__(self) -> int:
        return self.n_molecules

    @property
    def n_molecules(self) -> int:
        return int(len(self.offsets) - 1)

    @property
    def n_atoms_total(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_atoms(self) -> np.ndarray:
        """(n_molecules,) int64 atoms per molecule."""
        return np.diff(self.offsets)

    @property
    def numbers(self) -> np.ndarray:
        """(n_atoms_total,) int64 atomic numbers."""
        return self._read("numbers").astype(np.int64)

    @property
    def positions(self) -> np.ndarray:
        """(n_atoms_total, 3) float32 Å."""
        return self._read("positions")

    @property
    def property_names(self) -> list[str]:
        """Per-molecule property names (datasets under ``properties/``)."""
        return list(self.file.get("properties", {}).keys())

    @property
    def atom_property_names(self) -> list[str]:
        """Per-atom property names (datasets under ``atom_properties/``)."""
        return list(self.file.get("atom_properties", {}).keys())

    @property
    def attrs(self) -> dict[str, str]:
        """File attributes (provenance) as plain Python values (strings as text, see :func:`_text`)."""
        values = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in self.file.attrs.items()}
        return {k: (_text(v) if isinstance(v, (str, bytes)) else v) for k, v in values.items()}

    def dataset_path(self, name: str) -> str:
        """HDF5 path of a property: ``properties/<name>`` or ``atom_properties/<name>``."""
        for group in ("properties", "atom_properties"):
            if name in self.file.get(group, {}):
                return f"{group}/{name}"
        known = self.property_names + self.atom_property_names
        raise DataFormatError(self.path, f"no property {name!r}; available: {known}")

    def is_per_atom(self, name: str) -> bool:
        return self.dataset_path(name).startswith("atom_")

    def property(self, name: str) -> np.ndarray:
        """All values of property ``name`` in internal units (first dimension n_molecules or n_atoms_total)."""
        return self._read(self.dataset_path(name))

    def unit(self, name: str) -> str:
        """Internal unit of a property (or ``positions``)."""
        key = name if name in self.file else self.dataset_path(name)
        return _text(self.file[key].attrs.get("unit", ""))

    def source_unit(self, name: str) -> str:
        key = name if name in self.file else self.dataset_path(name)
        return _text(self.file[key].attrs.get("source_unit", ""))

    def array_spec(self, h5_path: str) -> tuple[int | None, np.dtype, tuple[int, ...]]:
        """(byte offset in the file, dtype, shape) of a dataset, for ``np.memmap``.

        The offset is ``None`` when the dataset cannot be memory-mapped (chunked, compressed, empty or
        not numeric); read it with ``store.file[h5_path][()]`` instead.
        """
        dset = self.file[h5_path]
        offset = None
        if dset.chunks is None and dset.compression is None and dset.size > 0 and dset.dtype.kind in "iubf":
            try:
                offset = dset.id.get_offset()
            except Exception:  # noqa: BLE001 - any failure means: read the array instead
                offset = None
        return offset, dset.dtype, tuple(dset.shape)

    def _read(self, h5_path: str, selection=()) -> np.ndarray:
        """``file[h5_path][selection]``; bytes that cannot be read (a corrupt compressed chunk) are a
        :class:`DataFormatError` naming the file."""
        try:
            return self.file[h5_path][selection]
        except (OSError, KeyError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataFormatError(self.path, f"corrupt dataset {h5_path!r}: {first[:300]}") from None

    def molecule(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(numbers (n,), positions (n, 3) Å) of molecule ``index``."""
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return self._read("numbers", slice(a, b)).astype(np.int64), self._read("positions", slice(a, b))

    # --- summary ----------------------------------------------------------------------------
    def property_rows(self, name: str, rows: slice) -> np.ndarray:
        """Rows ``rows`` of property ``name`` (molecules, or atoms for a per-atom property), internal units."""
        return self._read(self.dataset_path(name), rows)

    def _chunks(self, per_atom: bool) -> Iterator[tuple[slice, np.ndarray]]:
        """Consecutive ranges of whole molecules of at most :data:`SUMMARY_ROWS` rows (atoms if ``per_atom``,
        else molecules; at least one molecule): (row slice, the range's offsets counted from its first atom)."""
        offsets, n = self.offsets, self.n_molecules
        m0 = 0
        while m0 < n or (m0 == 0 and n == 0):
            stop = offsets[m0] + SUMMARY_ROWS if per_atom else None
            m1 = (
                min(n, m0 + SUMMARY_ROWS)
                if stop is None
                else int(np.searchsorted(offsets, stop, "right")) - 1
            )
            m1 = min(n, max(m1, m0 + 1))
            rows = slice(int(offsets[m0]), int(offsets[m1])) if per_atom else slice(m0, m1)
            yield rows, offsets[m0 : m1 + 1] - offsets[m0]
            if n == 0:
                return
            m0 = m1

    def _statistics(self, name: str, per_atom: bool) -> dict[str, float]:
        """mean, std, min, max of a numeric property over its finite and infinite values (NaN ignored), read
        :data:`SUMMARY_ROWS` rows at a time (two passes: the mean, then the squared deviations from it)."""
        chunks = list(self._chunks(per_atom))
        with np.errstate(invalid="ignore", over="ignore"):  # inf or huge values: nan/inf, no warning
            if len(chunks) == 1:
                v = self.property_rows(name, chunks[0][0]).astype(np.float64)
                return {
                    "mean": float(np.nanmean(v)),
                    "std": float(np.nanstd(v)),
                    "min": float(np.nanmin(v)),
                    "max": float(np.nanmax(v)),
                }
            count, total, low, high = 0, 0.0, np.inf, -np.inf
            for rows, _ in chunks:
                v = self.property_rows(name, rows).astype(np.float64)
                ok = ~np.isnan(v)
                count += int(ok.sum())
                total += float(np.sum(v, where=ok))
                low = min(low, float(np.min(v, where=ok, initial=np.inf)))
                high = max(high, float(np.max(v, where=ok, initial=-np.inf)))
            if count == 0:
                return {"mean": np.nan, "std": np.nan, "min": np.nan, "max": np.nan}
            mean = total / count
            squares = sum(
                float(np.sum((v - mean) ** 2, where=~np.isnan(v)))
                for v in (self.property_rows(name, rows).astype(np.float64) for rows, _ in chunks)
            )
            return {"mean": mean, "std": float(np.sqrt(squares / count)), "min": low, "max": high}

    def summary(self) -> dict:
        """Counts, elements and per-property statistics (mean/std/min/max in internal units).

        Returns a dict with keys ``n_molecules``, ``n_atoms_total``, ``atoms_per_molecule``
        (min/mean/max), ``elements`` ({Z: atom count}), ``properties`` ({name: {unit, source_unit,
        per_atom, shape, molecules, mean, std, min, max}}; ``molecules``: how many have finite values)
        and ``attrs`` (provenance).
        """
        n_atoms = self.n_atoms
        elements: dict[int, int] = {}
        for rows, _ in self._chunks(True):
            z, counts = np.unique(self._read("numbers", rows), return_counts=True)
            for a, c in zip(z.tolist(), counts.tolist(), strict=True):
                elements[a] = elements.get(a, 0) + c
        props = {}
        for name in self.property_names + self.atom_property_names:
            per_atom = self.is_per_atom(name)
            dset = self.file[self.dataset_path(name)]
            entry = {
                "unit": self.unit(name),
                "source_unit": self.source_unit(name),
                "per_atom": per_atom,
                "shape": tuple(dset.shape[1:]),
                "molecules": sum(
                    molecules_with_values(self.property_rows(name, rows), offsets, per_atom)
                    for rows, offsets in self._chunks(per_atom)
                ),
            }
            if dset.dtype.kind in "iuf" and dset.size:
                entry.update(self._statistics(name, per_atom))
            props[name] = entry
        return {
            "n_molecules": self.n_molecules,
            "n_atoms_total": self.n_atoms_total,
            "atoms_per_molecule": {
                "min": int(n_atoms.min()) if n_atoms.size else 0,
                "mean": float(n_atoms.mean()) if n_atoms.size else 0.0,
                "max": int(n_atoms.max()) if n_atoms.size else 0,
            },
            "elements": dict(sorted(elements.items())),
            "properties": props,
            "attrs": self.attrs,
        }


def _check_global_heaps(path: Path) -> None:
    """Walk every HDF5 global heap collection (where variable-length strings, e.g. the store's attributes,
    live) the way HDF5 does, and refuse one whose objects do not tile it: HDF5 steps from object to object by
    their sizes, and a corrupt size that leads to an empty free-space entry keeps it in an endless loop inside
    the C library, where no signal can stop it. Collections are found by their signature (``GCOL``, version 1,
    a size of at least 4 KiB that fits in the file); the scan reads the file once in blocks (about 0.5 s per
    GB; only the collections are mapped, so the scan adds nothing to the resident memory of a large store)."""
    if path.stat().st_size < 32:
        return  # too small for HDF5: h5py names the problem
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for at in _find_all(path, _HEAP_SIGNATURE):
            size = int.from_bytes(m[at + 8 : at + 16], "little")
            end, p = at + size, at + 16
            while 4096 <= size <= len(m) - at and p + 16 <= end:  # a shorter tail is free space
                index, length = (
                    int.from_bytes(m[p : p + 2], "little"),
                    int.from_bytes(m[p + 8 : p + 16], "little"),
                )
                step = 16 + -(-length // 8) * 8 if index else length
                if step <= 0 or p + step > end:
                    raise DataFormatError(
                        path,
                        f"corrupt store: the HDF5 global heap at byte {at} has an object of size {length} "
                        f"at byte {p} that does not fit it",
                    )
                p += step


_HEAP_SIGNATURE = b"GCOL\x01\x00\x00\x00"


def _find_all(path: Path, pattern: bytes, block: int = 1 << 20) -> Iterator[int]:
    """Byte offsets of every occurrence of ``pattern`` in the file, read ``block`` bytes at a time."""
    with open(path, "rb") as fh:
        start, tail = 0, b""  # tail: the last len(pattern) - 1 bytes of the previous block
        while data := fh.read(block):
            buf = tail + data
            at = buf.find(pattern)
            while at >= 0:
                yield start - len(tail) + at
                at = buf.find(pattern, at + 1)
            start += len(data)
            tail = buf[-(len(pattern) - 1) :]


def _text(value) -> str:
    """A string attribute as text: bytes that are not UTF-8 (h5py returns them as surrogate escapes, which
    ``print`` cannot write) become U+FFFD."""
    if not isinstance(value, bytes):
        try:
            value = str(value).encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that is no escaped byte
            value = str(value).encode("utf-8", "surrogatepass")
    return value.decode("utf-8", errors="replace")


def molecules_with_values(values: np.ndarray, offsets: np.ndarray, per_atom: bool) -> int:
    """How many molecules have a finite value of a property (per atom: every atom's); ``values`` has first
    dimension n_atoms_total (``per_atom``) or n_molecules, ``offsets`` is (n_molecules + 1,)."""
    n_mol = len(offsets) - 1
    values = np.asarray(values)
    if values.dtype.kind != "f" or n_mol == 0:
        return n_mol
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if per_atom:
        bad = np.add.reduceat(bad.astype(np.int64), offsets[:-1]) > 0 if bad.size else np.zeros(n_mol, bool)
    return int(n_mol - np.count_nonzero(bad))


def open_store(path: str | os.PathLike) -> Store:
    """Open an HDF5 store for reading (see :class:`Store`)."""
    return Store(path)


def format_summary(summary: dict) -> str:
    """Human-readable text of :meth:`Store.summary` (used by ``atomnet data info``)."""
    from ase.data import chemical_symbols

    a = summary["atoms_per_molecule"]
    attrs = summary["attrs"]
    lines = [
        f"molecules: {summary['n_molecules']}   atoms: {summary['n_atoms_total']}   "
        f"atoms/molecule: {a['min']}..{a['max']} (mean {a['mean']:.2f})",
        "elements: " + ", ".join(f"{chemical_symbols[z]} {c}" for z, c in summary["elements"].items()),
        f"source: {attrs.get('source', '')}  sha256: {attrs.get('source_sha256', '') or '-'}",
        f"converted: {attrs.get('created_utc', '')} by atomnet {attrs.get('atomnet_version', '')} "
        f"(store format {attrs.get('format_version', '')}); internal units eV, Angstrom",
        f"{'property':<16} {'unit':<14} {'source unit':<20} {'molecules':>10} {'mean':>14} {'std':>12} "
        f"{'min':>14} {'max':>14}",
    ]
    for name, p in summary["properties"].items():
        label = name + (" (atom)" if p["per_atom"] else "")
        if "mean" in p:
            stats = f"{p['mean']:>14.6g} {p['std']:>12.6g} {p['min']:>14.6g} {p['max']:>14.6g}"
        else:
            stats = ""
        count = p.get("molecules", summary["n_molecules"])
        lines.append(f"{label:<16} {p['unit'] or '-':<14} {p['source_unit'] or '-':<20} {count:>10} {stats}")
    return "\n".join(lines)
