"""Generic ASE input/output: extxyz and ASE-db in, extxyz out (the only data module that imports ase).

ASE stores results of a calculator (``energy``, ``forces``; extxyz ``energy=`` in the header and a ``forces``
column become a SinglePointCalculator), other per-frame values in ``atoms.info`` and per-atom arrays in
``atoms.arrays``. ASE's convention is eV and Å, but many files are not (the MD17/rMD17 extxyz files hold kcal/mol and
kcal/mol/Å): state the units with ``energy_unit=``; they are recorded in the table, not converted.
"""

from __future__ import annotations

import re
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError
from atomnet.files import atomic_output
from atomnet.units import internal_unit, length_factor, unit_factor


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


_PROPERTIES = re.compile(rb"""Properties=["']?([^\s"']+)""")


def _check_xyz_counts(path: Path) -> None:
    """Refuse an (ext)xyz frame whose atom count runs past the end of the file, or whose ``Properties`` declare
    more columns than its atom lines have, before ASE reads it: ASE counts both out one by one, so a header of
    10^18 atoms or a ``pos:R:10^18`` would keep it busy for ever."""
    lines = path.read_bytes().split(b"\n")
    i = frame = 0
    while i < len(lines) and lines[i].strip():
        try:
            n = int(lines[i])
        except ValueError:
            return  # not a count: ASE names the problem
        if n < 0 or i + n + 2 > len(lines):
            raise DataFormatError(
                path,
                f"the frame header says {n} atoms but the file has {max(len(lines) - i - 2, 0)} lines after it",
                f"frame {frame}, line {i + 1}",
            )
        spec = _PROPERTIES.search(lines[i + 1]) if n else None
        try:
            columns = sum(int(c) for c in spec.group(1).split(b":")[2::3]) if spec else 0
        except ValueError:
            columns = 0  # not a count: ASE names the problem
        if columns and columns > len(lines[i + 2].split()):
            raise DataFormatError(
                path,
                f"Properties declare {columns} columns but the atom lines have {len(lines[i + 2].split())}",
                f"frame {frame}, line {i + 2}",
            )
        i += n + 2
        while i < len(lines) and lines[i].lstrip().startswith(b"VEC"):  # lattice vectors of plain xyz
            i += 1
        frame += 1


def _read_frames(path: Path, index, format: str | None):
    """``ase.io.read(path, index)``; any failure is a :class:`DataFormatError` naming the first frame ASE cannot
    read (when ``index`` selects frames from the first one: ``":"`` or ``":N"``)."""
    if (format or path.suffix.lstrip(".").lower()) in ("xyz", "extxyz"):
        _check_xyz_counts(path)
    try:
        return ase.io.read(path, index=index, format=format)
    except Exception as e:  # ASE raises many types for malformed files
        problem = f"cannot read with ASE ({_one_line(e)})"
    where = None
    if index == ":" or (isinstance(index, str) and re.fullmatch(r":\d+", index)):
        k = 0
        try:  # again frame by frame, to name the first one that fails
            for _ in ase.io.iread(path, index=":", format=format):
                k += 1
        except Exception:  # noqa: BLE001 - the same failure as above
            where = f"frame {k}"
    raise DataFormatError(path, problem, where)


def _frame_list(path: Path, index, format) -> list[ase.Atoms]:
    """The selected frames of ``path`` as a list (one-line errors for a missing or unreadable file)."""
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    frames = _read_frames(path, index, format)
    return [frames] if isinstance(frames, ase.Atoms) else list(frames)


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
    """Read frames with :func:`ase.io.read` (extxyz, ASE-db ``.db`` and any format ASE knows).

    A property is never dropped silently: one present in some frames and missing in others is an error naming
    the first frame without it, unless ``skip_incomplete`` keeps only the frames that have every property read
    (their frame numbers become the table's ``ids``; the count skipped is recorded in ``meta``).

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
    frames = _frame_list(path, index, format)
    if not frames:
        raise DataFormatError(path, f"no frames selected by index {index!r}")
    forces_unit = forces_unit or f"{energy_unit}/{length_unit}"

    for i, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise DataFormatError(path, "empty structure (0 atoms)", f"frame {i}")
        pos = atoms.get_positions()
        if not np.isfinite(pos).all():
            raise DataFormatError(
                path, "NaN/inf coordinates", f"frame {i}, atom {int(np.argmax(~np.isfinite(pos).all(1)))}"
            )
        if not np.isfinite(atoms.get_cell().array).all():
            raise DataFormatError(path, "NaN/inf in the cell (Lattice)", f"frame {i}")

    energy_name, forces_name = energy_key or "energy", forces_key or "forces"
    wanted = (
        ("energy", energy_name, energy_key is not None, False, "calculator result or info key"),
        ("forces", forces_name, forces_key is not None, True, "calculator result or per-atom array"),
    )
    values = {what: [_value(a, name, per_atom) for a in frames] for what, name, _, per_atom, _ in wanted}
    read = [w for w in wanted if w[2] or any(v is not None for v in values[w[0]])]
    n = len(frames)
    keep = np.ones(n, dtype=bool)
    for what, name, _, _, where in read:
        has = np.array([v is not None for v in values[what]])
        if skip_incomplete:
            keep &= has
        elif not has.all():
            first = int(np.argmin(has))
            raise DataFormatError(
                path, _missing_message(what, name, where, int(has.sum()), n), f"frame {first}"
            )
    if not keep.any():
        names = " and ".join(f"{w[0]} {w[1]!r}" for w in read)
        raise DataFormatError(path, f"no frame has {names}: nothing left after skipping incomplete frames")
    kept = np.flatnonzero(keep)
    frames = [frames[i] for i in kept]
    values = {what: [v[i] for i in kept] for what, v in values.items()}

    properties: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    if any(w[0] == "energy" for w in read):
        for i, e in zip(kept, values["energy"], strict=True):
            if np.size(e) != 1 or np.asarray(e).dtype.kind not in "iuf":
                e = np.asarray(e)
                problem = f"energy {energy_name!r} is not one number ({e.size} values of dtype {e.dtype})"
                raise DataFormatError(path, problem, f"frame {i}")
        arr = np.array([float(np.asarray(e).reshape(-1)[0]) for e in values["energy"]])
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataFormatError(
                path, f"NaN/inf energy {energy_name!r}", f"frame {int(kept[np.argmax(bad)])}"
            )
        properties["energy"] = arr
        units["energy"] = energy_unit
    if any(w[0] == "forces" for w in read):
        for i, f, a in zip(kept, values["forces"], frames, strict=True):
            if np.shape(f) != (len(a), 3):
                raise DataFormatError(
                    path, f"forces shape {np.shape(f)}, expected ({len(a)}, 3)", f"frame {i}"
                )
            if np.asarray(f).dtype.kind not in "iuf":
                raise DataFormatError(
                    path, f"forces of dtype {np.asarray(f).dtype}, expected numbers", f"frame {i}"
                )
            if not np.isfinite(f).all():
                raise DataFormatError(path, f"NaN/inf forces {forces_name!r}", f"frame {i}")
        properties["forces"] = np.concatenate([np.asarray(f, dtype=np.float64) for f in values["forces"]])
        units["forces"] = forces_unit

    pbcs = np.array([a.get_pbc() for a in frames], dtype=bool)
    file_ids = [a.info.get("id") for a in frames]
    has_ids = all(isinstance(i, (int, np.integer)) for i in file_ids)
    ids = np.array(file_ids, dtype=np.int64) if has_ids else kept.astype(np.int64)
    periodic = bool(pbcs.any())
    meta = {"format": f"ase:{format or path.suffix.lstrip('.') or 'auto'}"}
    if skip_incomplete:
        meta["skipped_incomplete_frames"] = str(n - len(kept))
    return MoleculeTable(
        numbers=np.concatenate([a.get_atomic_numbers() for a in frames]).astype(np.int64),
        positions=np.concatenate([a.get_positions() for a in frames]),
        n_atoms=np.array([len(a) for a in frames], dtype=np.int64),
        properties=properties,
        units=units,
        per_atom={"forces"} & set(properties),
        length_unit=length_unit,
        cells=np.array([a.get_cell().array for a in frames]) if periodic else None,
        pbcs=pbcs if periodic else None,
        source=str(path),
        ids=ids,
        meta=meta,
    )


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
    frames = _frame_list(path, index, format)
    found: dict[str, dict] = {}
    for i, atoms in enumerate(frames):
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
    return {"frames": len(frames), "properties": found}


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
