"""QM9 readers: the original ``dsgdb9nsd.xyz.tar.bz2`` tarball, the ``qm9pack`` PyPI package, atomrefs.

QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014)): 133,885 molecules with up to 9 heavy atoms (C, N, O, F),
B3LYP/6-31G(2df,p). One text file per molecule, ``dsgdb9nsd_XXXXXX.xyz``::

    line 1        n_atoms
    line 2        gdb <index> A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv     (17 fields)
    n lines       El x y z mulliken                                                (Å, e; ``1.2*^-6`` exponents)
    line n+3      harmonic frequencies (cm^-1)
    line n+4      SMILES (GDB-17, B3LYP-relaxed)
    line n+5      InChI (Corina, B3LYP-relaxed)

Readers return a :class:`~atomnet.data.table.MoleculeTable` in the *source* units of :data:`QM9_UNITS`
(energies in Hartree); the HDF5 store converts them once (Hartree -> eV, Bohr^n -> Å^n).
"""

from __future__ import annotations

import csv
import importlib.util
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError

#: The 15 per-molecule properties of the property line, in file order.
QM9_PROPERTIES = (
    "A",
    "B",
    "C",
    "mu",
    "alpha",
    "homo",
    "lumo",
    "gap",
    "r2",
    "zpve",
    "U0",
    "U",
    "H",
    "G",
    "Cv",
)
#: The 12 standard regression targets.
QM9_TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")
#: Source units, as strings :func:`atomnet.units.unit_factor` understands (D, GHz, cal/mol/K are kept as is).
QM9_UNITS = {
    "A": "GHz",
    "B": "GHz",
    "C": "GHz",
    "mu": "D",
    "alpha": "Bohr^3",
    "homo": "Hartree",
    "lumo": "Hartree",
    "gap": "Hartree",
    "r2": "Bohr^2",
    "zpve": "Hartree",
    "U0": "Hartree",
    "U": "Hartree",
    "H": "Hartree",
    "G": "Hartree",
    "Cv": "cal/mol/K",
    "charges": "e",
}
#: Elements of QM9.
QM9_ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
N_QM9 = 133885  #: molecules in the original QM9 (gdb indices 1 .. 133885)

#: Free-atom reference energies of the QM9 figshare ``atomref.txt`` (file 3195395), indexed by Z (length 10).
#: zpve, U0, U, H, G in Hartree; Cv in cal/mol/K. Checked against ../shared/data/qm9/atomref.txt in the tests.
QM9_ATOMREFS: dict[str, np.ndarray] = {
    name: np.array([0.0, col[0], 0.0, 0.0, 0.0, 0.0, col[1], col[2], col[3], col[4]])
    for name, col in {
        "zpve": (0.0, 0.0, 0.0, 0.0, 0.0),
        "U0": (-0.500273, -37.846772, -54.583861, -75.064579, -99.718730),
        "U": (-0.498857, -37.845355, -54.582445, -75.063163, -99.717314),
        "H": (-0.497912, -37.844411, -54.581501, -75.062219, -99.716370),
        "G": (-0.510927, -37.861317, -54.598897, -75.079532, -99.733544),
        "Cv": (2.981, 2.981, 2.981, 2.981, 2.981),
    }.items()
}
ATOMREF_COLUMNS = ("zpve", "U0", "U", "H", "G", "Cv")

_MEMBER = re.compile(r"(?:^|/)dsgdb9nsd_(\d+)\.xyz$")
_UNCHARACTERIZED = Path(__file__).parent / "resources" / "qm9_uncharacterized.txt"


# --------------------------------------------------------------------------------------------------
# uncharacterized molecules and atomrefs
# --------------------------------------------------------------------------------------------------
def read_uncharacterized(path: str | Path | None = None) -> np.ndarray:
    """gdb indices (1-based, sorted int64) of the molecules that fail the QM9 geometry consistency check.

    ``path=None`` reads the bundled list (3,054 indices of figshare file 3195404). A user-given ``path`` may be
    the original ``uncharacterized.txt`` (table with header; first column = index) or one integer per line;
    lines whose first token is not an integer are skipped.
    """
    path = _UNCHARACTERIZED if path is None else Path(path)
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"cannot read the uncharacterized list ({e})") from None
    ids = [int(tok[0]) for tok in (line.split() for line in lines) if tok and tok[0].isdigit()]
    if not ids:
        raise DataFormatError(path, "no gdb indices found (expected lines starting with an integer index)")
    return np.unique(np.array(ids, dtype=np.int64))


def read_qm9_atomrefs(path: str | Path) -> dict[str, np.ndarray]:
    """Read the original QM9 ``atomref.txt`` table.

    Returns:
        ``{"zpve", "U0", "U", "H", "G", "Cv"} -> (10,) float64`` indexed by atomic number Z (0 for absent
        elements); zpve/U0/U/H/G in Hartree, Cv in cal/mol/K (source units, see :data:`QM9_UNITS`).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"cannot read atomref table ({e})") from None
    refs = {name: np.zeros(10) for name in ATOMREF_COLUMNS}
    found = 0
    for lineno, line in enumerate(lines, 1):
        tok = line.split()
        if not tok or tok[0] not in QM9_ELEMENTS:
            continue
        if len(tok) != 7:
            raise DataFormatError(
                path, f"expected element + 6 numbers, got {len(tok)} fields", f"line {lineno}"
            )
        try:
            values = [float(t) for t in tok[1:]]
        except ValueError:
            raise DataFormatError(path, f"non-numeric value in {line.strip()!r}", f"line {lineno}") from None
        for name, v in zip(ATOMREF_COLUMNS, values, strict=True):
            refs[name][QM9_ELEMENTS[tok[0]]] = v
        found += 1
    if found == 0:
        raise DataFormatError(path, "no element rows (H, C, N, O, F) found; not a QM9 atomref table")
    return refs


# --------------------------------------------------------------------------------------------------
# one molecule
# --------------------------------------------------------------------------------------------------
def _float(token: str) -> float:
    """Parse a QM9 number; Mathematica exponents ``1.2*^-6`` are accepted."""
    return float(token.replace("*^", "e"))


def parse_qm9_xyz(text: str, path: str | Path, member: str = "") -> dict:
    """Parse one ``dsgdb9nsd_XXXXXX.xyz`` text.

    Returns a dict with ``id`` (gdb index), ``numbers`` (n,), ``positions`` (n, 3) Å, ``charges`` (n,) e and
    ``properties`` (15,) in the order of :data:`QM9_PROPERTIES`. Raises :class:`DataFormatError` naming
    ``path``, ``member`` and the line on any malformed content.
    """

    def fail(problem: str, lineno: int | None = None):
        where = member + (f", line {lineno}" if lineno else "")
        raise DataFormatError(path, problem, where or None)

    lines = text.splitlines()
    if not lines or not lines[0].strip():
        fail("empty file (expected the number of atoms on line 1)", 1)
    try:
        n = int(lines[0].split()[0])
    except ValueError:
        fail(f"expected the number of atoms on line 1, got {lines[0].strip()[:40]!r}", 1)
    if n <= 0:
        fail(f"empty molecule (n_atoms = {n})", 1)
    if len(lines) < n + 2:
        fail(f"truncated: n_atoms = {n} needs {n + 2} lines (header + atoms), file has {len(lines)}")
    head = lines[1].split()
    if len(head) != 17 or head[0] != "gdb":
        fail(f"expected 'gdb <index>' + 15 properties (17 fields), got {len(head)} fields", 2)
    try:
        gdb_id = int(head[1])
        props = np.array([_float(t) for t in head[2:]])
    except ValueError:
        fail(f"non-numeric field in property line {lines[1].strip()[:60]!r}", 2)
    if not 1 <= gdb_id < 2**63:
        fail(f"gdb index {head[1][:30]} is not a positive 64-bit integer", 2)
    if not np.all(np.isfinite(props)):
        fail("NaN/inf in the property line", 2)
    numbers = np.empty(n, dtype=np.int64)
    xyzq = np.empty((n, 4))
    for k in range(n):
        lineno = k + 3
        tok = lines[k + 2].split()
        if not tok or tok[0][0] in "0123456789-+.":
            fail(f"atom count mismatch: n_atoms = {n} but atom lines end before line {lineno}", lineno)
        if len(tok) != 5:
            fail(f"bad atom line: expected 'El x y z charge', got {len(tok)} fields", lineno)
        z = QM9_ELEMENTS.get(tok[0])
        if z is None:
            fail(f"unknown element symbol {tok[0]!r} (QM9 has H, C, N, O, F)", lineno)
        numbers[k] = z
        try:
            xyzq[k] = [_float(t) for t in tok[1:]]
        except ValueError:
            fail(f"non-numeric coordinate/charge in {lines[k + 2].strip()!r}", lineno)
        if not np.all(np.isfinite(xyzq[k])):
            fail("NaN/inf coordinate or charge", lineno)
    if len(lines) < n + 5:
        fail(f"truncated: expected frequencies, SMILES and InChI after {n} atom lines ({len(lines)} lines)")
    if len(lines[n + 2].split()) == 5 and lines[n + 2].split()[0] in QM9_ELEMENTS:
        fail(f"atom count mismatch: more than n_atoms = {n} atom lines", n + 3)
    return {
        "id": gdb_id,
        "numbers": numbers,
        "positions": xyzq[:, :3],
        "charges": xyzq[:, 3],
        "properties": props,
    }


# --------------------------------------------------------------------------------------------------
# tarball
# --------------------------------------------------------------------------------------------------
def _iter_tarball(path: Path) -> Iterator[tuple[str, str]]:
    """Yield (member name, text) of each ``dsgdb9nsd_*.xyz`` member, streaming (no unpacking to disk)."""
    last = "start of archive"
    seen_xyz = False
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if not _MEMBER.search(member.name):
                    if member.name.endswith(".xyz"):
                        raise DataFormatError(
                            path, "not a QM9 tarball (expected dsgdb9nsd_XXXXXX.xyz)", member.name
                        )
                    continue
                fobj = tar.extractfile(member)
                data = fobj.read() if fobj is not None else b""
                last = member.name
                seen_xyz = True
                try:
                    yield member.name, data.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataFormatError(path, "not UTF-8 text", member.name) from None
    except DataFormatError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as e:
        # one line: tarfile lists every compression it tried on its own line
        reason = " ".join(str(e).split())
        if not seen_xyz:
            raise DataFormatError(
                path, f"not a readable tar archive ({type(e).__name__}: {reason})"
            ) from None
        raise DataFormatError(path, f"truncated or corrupt archive after member {last} ({reason})") from None
    if not seen_xyz:
        raise DataFormatError(path, "not a QM9 tarball: no dsgdb9nsd_XXXXXX.xyz members")


def read_qm9_tarball(
    path: str | Path,
    limit: int | None = None,
    exclude_uncharacterized: bool | str | Path = False,
    progress: bool = True,
) -> MoleculeTable:
    """Read the original QM9 ``dsgdb9nsd.xyz.tar.bz2`` (or any tar of ``dsgdb9nsd_*.xyz`` files).

    Args:
        path: tarball (any compression tarfile understands), read as a stream.
        limit: stop after this many molecules (after exclusion).
        exclude_uncharacterized: ``True`` drops the 3,054 molecules that fail the geometry consistency check
            (bundled list, :func:`read_uncharacterized`); a path uses that file instead.
        progress: show a tqdm progress bar.

    Returns:
        MoleculeTable with ``ids`` = gdb index, positions (n_atoms_total, 3) Å, per-molecule properties
        :data:`QM9_PROPERTIES` (n_molecules,) and per-atom ``charges`` (Mulliken, e), units :data:`QM9_UNITS`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    excluded: set[int] = set()
    if exclude_uncharacterized is not False:
        src = None if exclude_uncharacterized is True else exclude_uncharacterized
        excluded = set(read_uncharacterized(src).tolist())
    ids, numbers, positions, charges, props, n_atoms = [], [], [], [], [], []
    n_skipped = 0
    bar = tqdm(total=limit, desc=f"QM9 {path.name}", unit="mol", disable=not progress)
    for name, text in _iter_tarball(path):
        mol = parse_qm9_xyz(text, path, name)
        if mol["id"] in excluded:
            n_skipped += 1
            continue
        ids.append(mol["id"])
        numbers.append(mol["numbers"])
        positions.append(mol["positions"])
        charges.append(mol["charges"])
        props.append(mol["properties"])
        n_atoms.append(len(mol["numbers"]))
        bar.update()
        if limit is not None and len(ids) >= limit:
            break
    bar.close()
    table = _table(ids, numbers, positions, charges, props, n_atoms, str(path), "qm9-xyz-tarball")
    table.meta["excluded_uncharacterized"] = str(n_skipped)
    return table


def _table(ids, numbers, positions, charges, props, n_atoms, source: str, fmt: str) -> MoleculeTable:
    props = np.array(props, dtype=np.float64).reshape(-1, len(QM9_PROPERTIES))
    properties = {name: props[:, k].copy() for k, name in enumerate(QM9_PROPERTIES)}
    properties["charges"] = np.concatenate(charges) if charges else np.zeros(0)
    return MoleculeTable(
        numbers=np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64),
        positions=np.concatenate(positions) if positions else np.zeros((0, 3)),
        n_atoms=np.array(n_atoms, dtype=np.int64),
        properties=properties,
        units=dict(QM9_UNITS),
        per_atom={"charges"},
        length_unit="Angstrom",
        source=source,
        ids=np.array(ids, dtype=np.int64),
        meta={"format": fmt, "dataset": "QM9"},
    )


# --------------------------------------------------------------------------------------------------
# qm9pack (PyPI)
# --------------------------------------------------------------------------------------------------
#: qm9pack CSV column -> QM9 property (units in the column names: GHz, debye, bohr3, au = Hartree, bohr2).
QM9PACK_COLUMNS = {
    "RotA_GHz": "A",
    "RotB_GHz": "B",
    "RotC_GHz": "C",
    "Dipole_debye": "mu",
    "Polarizability_bohr3": "alpha",
    "HOMO_au": "homo",
    "LUMO_au": "lumo",
    "HOMO_LUMO_gap_au": "gap",
    "R2_bohr2": "r2",
    "ZPVE_au": "zpve",
    "InternalEnergy_0K_au": "U0",
    "InternalEnergy_298K_au": "U",
    "Enthalphy_298K_au": "H",
    "GibbsFreeEnergy_298K_au": "G",
    "Heatcapacity_Cv_cal_mol_K": "Cv",
}


def qm9pack_data_dir() -> Path:
    """Folder of the qm9pack CSVs, found without importing qm9pack (its ``__init__`` needs pkg_resources)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("read_qm9pack needs the qm9pack package: pip install qm9pack")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _numbers_list(text: str) -> np.ndarray:
    return np.array(text.replace("[", " ").replace("]", " ").split(","), dtype=np.float64)


def _qm9pack_row(row: dict, part: Path, where: str):
    """(gdb index, numbers (n,), positions (n, 3) Å, charges (n,) e, properties (15,)) of one qm9pack CSV row."""
    try:
        symbols = [t.strip().strip("'\"") for t in row["Elements"].strip("[]").split(",")]
        z = np.array([QM9_ELEMENTS[t] for t in symbols], dtype=np.int64)
        xyz = _numbers_list(row["XYZ_Ang"]).reshape(len(z), 3)
        q = _numbers_list(row["Mulliken_pop"]).reshape(len(z))
        p = np.array([float(row[col]) for col in QM9PACK_COLUMNS])
        gdb_id = int(row["Index"])
    except (KeyError, ValueError, AttributeError, TypeError) as e:  # a short row holds None
        reason = " ".join(str(e).split())[:200]
        raise DataFormatError(part, f"malformed row ({type(e).__name__}: {reason})", where) from None
    if not 0 < gdb_id < 2**63:
        raise DataFormatError(part, f"gdb index {str(gdb_id)[:30]} is not a positive 64-bit integer", where)
    for name, values in (("XYZ_Ang", xyz), ("Mulliken_pop", q), ("properties", p)):
        if not np.isfinite(values).all():
            raise DataFormatError(part, f"NaN/inf in {name}", where)
    return gdb_id, z, xyz, q, p


def read_qm9pack(
    limit: int | None = None, progress: bool = True, data_dir: str | Path | None = None
) -> MoleculeTable:
    """Full QM9 (130,831 molecules = 133,885 minus the 3,054 uncharacterized) from the PyPI ``qm9pack`` package.

    qm9pack 1.0.3 ships ``qm9pack/data/qm9_part{1,2,3}.csv`` with every field of the original files (units in
    the column names, identical to the original: Hartree, D, Bohr^3, Bohr^2, GHz, cal/mol/K; Å, e). Same
    output as :func:`read_qm9_tarball`: ``ids`` = gdb index, properties :data:`QM9_PROPERTIES`, units
    :data:`QM9_UNITS`, per-atom ``charges``. ``data_dir``: a folder of such CSVs instead of the package's.
    A row that cannot be read, holds NaN/inf or is not UTF-8 is a :class:`DataFormatError` naming the file
    and its line.
    """
    data = Path(data_dir) if data_dir is not None else qm9pack_data_dir()
    parts = sorted(data.glob("qm9_part*.csv"))
    if not parts:
        raise DataFormatError(
            data, "no qm9_part*.csv files; is qm9pack installed correctly? pip install qm9pack"
        )
    csv.field_size_limit(1 << 28)
    ids, numbers, positions, charges, props, n_atoms = [], [], [], [], [], []
    bar = tqdm(total=limit or 130831, desc="QM9 (qm9pack)", unit="mol", disable=not progress)
    for part in parts:
        reader = None
        try:
            with open(part, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = {"Index", "Elements", "XYZ_Ang", "Mulliken_pop", *QM9PACK_COLUMNS} - set(
                    reader.fieldnames or []
                )
                if missing:
                    raise DataFormatError(part, f"missing columns {sorted(missing)}", "line 1")
                for row in reader:
                    mol = _qm9pack_row(row, part, f"line {reader.line_num}, {row.get('XYZ_file', '')}")
                    for column, value in zip((ids, numbers, positions, charges, props), mol, strict=True):
                        column.append(value)
                    n_atoms.append(len(mol[1]))
                    bar.update()
                    if limit is not None and len(ids) >= limit:
                        break
        except UnicodeDecodeError as e:  # the decoder reads ahead: find the line in the bytes
            data_bytes = part.read_bytes()
            try:
                data_bytes.decode("utf-8")
                at = 0
            except UnicodeDecodeError as exact:
                at = exact.start
            line = data_bytes.count(b"\n", 0, at) + 1
            raise DataFormatError(part, f"not UTF-8 text ({e.reason})", f"line {line}") from None
        except csv.Error as e:
            line = reader.line_num if reader is not None else 1
            raise DataFormatError(part, f"malformed CSV ({e})", f"line {line}") from None
        if limit is not None and len(ids) >= limit:
            break
    bar.close()
    if not ids:
        raise DataFormatError(parts[0] if len(parts) == 1 else data, "no molecule rows after the header")
    return _table(ids, numbers, positions, charges, props, n_atoms, f"qm9pack ({data})", "qm9pack-csv")
