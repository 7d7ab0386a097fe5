"""Reader for the QM7 copy in ../shared/data/qm7 (xyz files in a tarball + ``hof_qm7.txt``).

Format (see ../shared/data/qm7/PROVENANCE.md): ``qm7.tar.gz`` holds ``qm7/0001.xyz`` ... ``qm7/7101.xyz``,
each with line 1 = number of atoms, line 2 = ``charge = 0``, then ``El x y z`` lines in Å.
``hof_qm7.txt`` has lines ``NNNN.xyz E1 E2``; column 2 (``E1``) is the PBE0 atomization energy in kcal/mol
that the qml tests use as the target. Column 3 has no documented unit and is not read.
"""

from __future__ import annotations

import math
import tarfile
import zlib
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError

ENERGY_UNIT = "kcal/mol"


def _one_line(exc: Exception) -> str:
    """The message of ``exc`` on one line (tarfile lists every compression it tried on its own line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_hof(path: str | Path) -> dict[str, float]:
    """Read ``hof_qm7.txt`` -> {file name: atomization energy (kcal/mol), column 2}."""
    path = Path(path)
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(path, f"not UTF-8 text ({exc.reason})", f"line {line}") from None
    energies: dict[str, float] = {}
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"line {lineno}"
        if len(tokens) < 2:
            raise DataFormatError(path, f"expected 'file E1 E2', got {line.strip()!r}", where)
        try:
            value = float(tokens[1])
        except ValueError:
            raise DataFormatError(path, f"energy {tokens[1]!r} is not a number", where) from None
        if not math.isfinite(value):
            raise DataFormatError(path, f"energy {tokens[1]!r} is not finite", where)
        if tokens[0] in energies:
            raise DataFormatError(path, f"duplicate entry for {tokens[0]}", where)
        energies[tokens[0]] = value
    return energies


def parse_xyz(text: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one QM7 xyz block -> (numbers (n,) int64, positions (n, 3) float64 Å).

    ``path`` names the file (and tar member) in error messages.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataFormatError(path, "empty file, expected the number of atoms on line 1", "line 1")
    try:
        n = int(lines[0].split()[0])
    except ValueError:
        raise DataFormatError(
            path, f"expected the number of atoms, got {lines[0].strip()!r}", "line 1"
        ) from None
    if n <= 0:
        raise DataFormatError(path, f"number of atoms must be positive, got {n}", "line 1")
    atom_lines = [ln for ln in lines[2:] if ln.strip()]
    if len(atom_lines) != n:
        raise DataFormatError(path, f"header says {n} atoms but the file has {len(atom_lines)} atom lines")
    numbers = np.empty(n, dtype=np.int64)
    positions = np.empty((n, 3), dtype=np.float64)
    for i, line in enumerate(atom_lines):
        where = f"atom {i + 1}"
        tokens = line.split()
        if len(tokens) < 4:
            raise DataFormatError(path, f"expected 'El x y z', got {line.strip()!r}", where)
        symbol = tokens[0].capitalize()
        if symbol not in atomic_numbers or symbol == "X":
            raise DataFormatError(path, f"unknown element {tokens[0]!r}", where)
        numbers[i] = atomic_numbers[symbol]
        try:
            positions[i] = [float(t) for t in tokens[1:4]]
        except ValueError:
            raise DataFormatError(path, f"non-numeric coordinate in {line.strip()!r}", where) from None
        if not np.all(np.isfinite(positions[i])):
            raise DataFormatError(path, f"non-finite coordinate in {line.strip()!r}", where)
    return numbers, positions


def read_qm7(
    tar_path: str | Path, hof_path: str | Path | None = None, limit: int | None = None
) -> MoleculeTable:
    """Read QM7 straight from the tarball; energies from ``hof_qm7.txt`` matched by file name.

    Args:
        tar_path: ``qm7.tar.gz`` with ``*.xyz`` members (read in sorted name order).
        hof_path: ``hof_qm7.txt``; default: ``hof_qm7.txt`` next to the tarball.
        limit: read only the first ``limit`` molecules (sorted order), e.g. for tests.

    Returns:
        :class:`MoleculeTable` in source units: positions in Å, property ``"energy"`` (n_molecules,)
        PBE0 atomization energy in kcal/mol; ``ids`` = the number in the file name (``0001.xyz`` -> 1).

    Raises:
        DataFormatError: broken xyz (truncated, atom count mismatch, unknown element, non-numeric or
            non-finite coordinate), broken hof line, or a molecule without an energy entry.
    """
    tar_path = Path(tar_path)
    hof_path = Path(hof_path) if hof_path is not None else tar_path.with_name("hof_qm7.txt")
    energies = read_hof(hof_path)
    numbers, positions, n_atoms, energy, ids = [], [], [], [], []
    try:
        tar = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(tar_path, f"not a readable tar archive ({_one_line(exc)})") from None
    with tar:
        try:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xyz")), key=lambda m: m.name
            )
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DataFormatError(tar_path, f"truncated or corrupt archive ({_one_line(exc)})") from None
        if not members:
            raise DataFormatError(tar_path, "archive contains no .xyz files")
        if limit is not None:
            members = members[:limit]
        for member in members:
            where = f"{tar_path}:{member.name}"
            fh = tar.extractfile(member)
            try:
                text = fh.read().decode("utf-8")
            except (UnicodeDecodeError, OSError, EOFError, tarfile.TarError, zlib.error) as exc:
                raise DataFormatError(where, f"cannot read member ({_one_line(exc)})") from None
            z, r = parse_xyz(text, where)
            name = Path(member.name).name
            if name not in energies:
                raise DataFormatError(hof_path, f"no energy entry for molecule {name} (from {tar_path})")
            numbers.append(z)
            positions.append(r)
            n_atoms.append(len(z))
            energy.append(energies[name])
            stem = Path(name).stem
            ids.append(int(stem) if stem.isdigit() else len(ids) + 1)
    return MoleculeTable(
        numbers=np.concatenate(numbers),
        positions=np.concatenate(positions),
        n_atoms=np.asarray(n_atoms, dtype=np.int64),
        properties={"energy": np.asarray(energy, dtype=np.float64)},
        units={"energy": ENERGY_UNIT},
        length_unit="Angstrom",
        source=str(tar_path),
        ids=np.asarray(ids, dtype=np.int64),
        meta={
            "dataset": "QM7",
            "energy": "PBE0 atomization energy (hof_qm7.txt column 2), kcal/mol",
            "hof_file": str(hof_path),
        },
    )
