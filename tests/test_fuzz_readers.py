"""Fuzzed inputs of the data readers (reliability issue 17; docs/reliability.md, "Fuzzed inputs").

Small valid seeds -- the first molecules of the shared QM9 and QM7 tarballs, MD17 frames (and an rMD17 npz
built from them), three frames of each extxyz file, an ASE database written by ASE -- are mutated by seeded
hypothesis strategies (``tests/fuzz_inputs.py``). Every mutated input must end in a one-line AtomNetError
naming the file (through ``atomnet data convert``/``info``: exit 2, one stderr line, nothing left in the
output folder) or in a valid result that re-reads equal, is finite where the format requires it and
converts to a store that ``Store`` opens with the same values. The tests after the campaigns pin each bug
the campaigns found. ``-m slow`` runs 1,000 examples per reader.
"""

from __future__ import annotations

import gc
import re
import time
import warnings

import fuzz_inputs as fz
import numpy as np
import pytest

from atomnet.data.ase_io import read_ase
from atomnet.data.md17 import read_md17_npz, read_rmd17_npz
from atomnet.data.qm7 import read_hof, read_qm7
from atomnet.data.qm9 import read_qm9_tarball
from atomnet.errors import DataFormatError

pytestmark = pytest.mark.usefixtures("one_thread")

#: the readers of this file; cases per reader: fz.DEFAULT_EXAMPLES (default run), fz.SLOW_EXAMPLES (slow)
NAMES = [
    "qm9_xyz",
    "qm9_tarball",
    "qm9pack",
    "md17_npz",
    "rmd17_npz",
    "index_file",
    "qm7",
    "extxyz",
    "ase_db",
]


@pytest.mark.parametrize("name", NAMES)
def test_fuzz(name, record_property):
    record_property("cases", fz.checked_campaign(name, fz.DEFAULT_EXAMPLES[name]).as_dict())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fuzz_many(name, record_property):
    record_property("cases", fz.checked_campaign(name, fz.SLOW_EXAMPLES).as_dict())


def refused(path, fmt, match, names=(), **read):
    """The whole contract of an error (reader, store, CLI convert and info) and the reader's message."""
    assert fz.check_data_file(path, fmt, names, **read)[0] == "error"
    from atomnet.data.commands import read_source
    from atomnet.data.store import write_store

    with pytest.raises(DataFormatError, match=match) as info:
        write_store(read_source(str(path), fmt, progress=False, **read), path.parent / "x.h5", progress=False)
    message = str(info.value)
    assert "\n" not in message and any(p.name in message for p in (path, *names)), message
    assert not (path.parent / "x.h5").exists()
    return message


# --------------------------------------------------------------------------------------------- QM9
def test_qm9_gdb_index_beyond_int64_is_a_clear_error(tmp_path):
    """Found: ``gdb 99999999999999999999`` escaped as numpy's OverflowError when the ids became int64."""
    (name, data), *rest = fz.qm9_members()
    data = re.sub(rb"\ngdb \d+", b"\ngdb 99999999999999999999", data, count=1)
    path = fz.write_tar(tmp_path / "qm9.tar.bz2", [(name, data), *rest], "w:bz2")
    message = refused(path, "qm9", r"gdb index 99999999999999999999 is not a positive 64-bit integer")
    assert f"{name}, line 2" in message


def test_qm9_mathematica_exponents_are_read_and_huge_ones_refused(tmp_path):
    """``1.2*^-5`` is QM9's own notation (read); ``1.5*^308`` Hartree is finite but not as eV in the store."""
    (name, data), *rest = fz.qm9_members()
    fields = data.split(b"\n")[1].split()
    u0 = fields[12]
    small = data.replace(u0, b"-4.047893*^1", 1)
    path = fz.write_tar(tmp_path / "ok.tar", [(name, small), *rest], "w")
    table = read_qm9_tarball(path, progress=False)
    assert table.properties["U0"][0] == -40.47893
    assert fz.check_data_file(path, "qm9")[0] == "valid"
    huge = fz.write_tar(tmp_path / "huge.tar", [(name, data.replace(u0, b"-1.5*^308", 1)), *rest], "w")
    refused(huge, "qm9", r"'U0' value -1.5e\+308 Hartree is too large for the store \(float64 eV\)")


def test_tar_errors_are_one_line(tmp_path):
    """Found (QM7): tarfile lists every compression it tried on its own line; the error was 5 lines."""
    files, hof = fz.qm7_seed()
    path = fz.write_tar(tmp_path / "qm7.tar.gz", files, "w:gz")
    path.write_bytes(b"\0" + path.read_bytes()[1:])
    (tmp_path / "hof_qm7.txt").write_bytes(hof)
    refused(
        path,
        "qm7",
        r"not a readable tar archive",
        (tmp_path / "hof_qm7.txt",),
        hof=str(tmp_path / "hof_qm7.txt"),
    )
    qm9 = fz.write_tar(tmp_path / "qm9.tar.bz2", fz.qm9_members(), "w:bz2")
    qm9.write_bytes(b"\0" + qm9.read_bytes()[1:])
    refused(qm9, "qm9", r"not a readable tar archive")


# --------------------------------------------------------------------------------------------- QM7
def test_qm7_hof_that_is_not_utf8_is_a_clear_error(tmp_path):
    """Found: a non-UTF-8 byte in hof_qm7.txt escaped as UnicodeDecodeError."""
    files, hof = fz.qm7_seed()
    path = fz.write_tar(tmp_path / "qm7.tar.gz", files, "w:gz")
    lines = hof.split(b"\n")
    lines[1] = lines[1].replace(b".", b"\xe6", 1)
    (tmp_path / "hof_qm7.txt").write_bytes(b"\n".join(lines))
    with pytest.raises(DataFormatError, match=r"hof_qm7\.txt \(line 2\): not UTF-8 text"):
        read_hof(tmp_path / "hof_qm7.txt")
    hof_path = tmp_path / "hof_qm7.txt"
    assert fz.check_data_file(path, "qm7", (hof_path,), hof=str(hof_path))[0] == "error"


def test_qm7_truncated_gzip_is_a_clear_error(tmp_path):
    """Found: a gzip stream cut short raised EOFError from ``tarfile.open``."""
    files, hof = fz.qm7_seed()
    path = fz.write_tar(tmp_path / "qm7.tar.gz", files, "w:gz")
    path.write_bytes(path.read_bytes()[:50])
    (tmp_path / "hof_qm7.txt").write_bytes(hof)
    with pytest.raises(DataFormatError, match=r"qm7\.tar\.gz: not a readable tar archive \(.*ended before"):
        read_qm7(path)
    assert (
        fz.check_data_file(path, "qm7", (tmp_path / "hof_qm7.txt",), hof=str(tmp_path / "hof_qm7.txt"))[0]
        == "error"
    )


# ------------------------------------------------------------------------------------ MD17 / rMD17
@pytest.fixture
def md17(tmp_path):
    """Write the seed frames (with changes) as an npz and return its path."""

    def write(compressed=False, **changes):
        arrays = {**fz.md17_arrays(), **changes}
        return fz.write_npz(
            tmp_path / "md17.npz", {k: v for k, v in arrays.items() if v is not None}, compressed
        )

    return write


def test_md17_header_claiming_a_trillion_frames_is_refused_unallocated(md17):
    """Found: ``np.load`` allocated the header's shape first: MemoryError (or gigabytes) for a few bytes."""
    path = md17()
    fz.lie_in_header(path, "R", (10**12, 9, 3))
    with pytest.raises(DataFormatError, match=r"array 'R' claims shape \(1000000000000, 9, 3\)"):
        read_md17_npz(path)
    assert fz.check_data_file(path, "md17")[0] == "error"


@pytest.mark.parametrize(
    "change, match",
    [
        ({"z": np.array(["2001-01-01"] * 9, dtype="datetime64[s]")}, r"z must hold integer atomic numbers"),
        ({"z": np.array([6.5, 6, 8, 1, 1, 1, 1, 1, 1])}, r"z must hold integer atomic numbers.*6\.5"),
        ({"R": fz.md17_arrays()["R"] * (1 + 1j)}, r"R has dtype complex128, expected real numbers"),
        ({"F": fz.md17_arrays()["F"].astype(str)}, r"F has dtype <U\d+, expected real numbers"),
        ({"E": fz.md17_arrays()["E"][:0], "F": fz.md17_arrays()["F"][:0], "R": fz.md17_arrays()["R"][:0]},
         r"R holds no frames"),
    ],
    ids=["datetime-z", "fractional-z", "complex-R", "string-F", "no-frames"],
)  # fmt: skip
def test_md17_wrong_dtypes_and_empty_files_are_clear_errors(md17, change, match):
    """Found: datetime z escaped as numpy's UFuncTypeError, z = 6.5 was silently read as carbon, complex R
    lost its imaginary part with a ComplexWarning, string arrays were parsed or raised ValueError, and a file
    without frames raised numpy's reshape ValueError."""
    path = md17(**change)
    with pytest.raises(DataFormatError, match=match):
        read_md17_npz(path)
    assert fz.check_data_file(path, "md17")[0] == "error"


def test_md17_metadata_that_is_not_utf8_is_read(md17):
    """Found: a ``name`` of non-UTF-8 bytes escaped as UnicodeDecodeError; metadata is free text."""
    path = md17(name=np.array(b"eth\xffanol"))
    table = read_md17_npz(path)
    assert table.meta["name"] == "eth\ufffdanol"
    assert fz.check_data_file(path, "md17")[0] == "valid"


def test_corrupt_npz_leaves_no_open_file(md17):
    """Found: ``np.load(path)`` on a broken zip left its file open (ResourceWarning when collected)."""
    path = md17()
    path.write_bytes(path.read_bytes()[:-30])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataFormatError, match="not a readable .npz archive"):
            read_md17_npz(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_values_too_large_for_the_store_are_refused_before_writing(tmp_path):
    """Found: 1e308 kcal/mol/Å is finite but inf in eV/Å; the store silently held inf (and Store opened it)."""
    arrays = fz.rmd17_arrays()
    old = arrays["old_forces"].copy()
    old[1, 4, 2] = -1e308
    path = fz.write_npz(tmp_path / "rmd17.npz", {**arrays, "old_forces": old}, False)
    table = read_rmd17_npz(path)  # the reader is right: the value is finite
    assert np.isfinite(table.properties["old_forces"]).all()
    refused(path, "rmd17", r"\(molecule 1\): 'old_forces' value -1e\+308 kcal/mol/Angstrom is too large")


# ------------------------------------------------------------------------------------------ extxyz
def test_extxyz_atom_count_beyond_the_file_is_refused_at_once(tmp_path):
    """Found: a header of 999999999 atoms kept ASE busy for minutes skipping lines (a hang per file)."""
    name, data, unit = fz.extxyz_seeds()[0]
    path = tmp_path / name
    lines = data.split(b"\n")
    n = int(lines[0])
    lines[n + 2] = b"99999999999999999999"  # the second frame's header
    path.write_bytes(b"\n".join(lines))
    start = time.perf_counter()
    with pytest.raises(
        DataFormatError, match=rf"\(frame 1, line {n + 3}\): the frame header says 99999999999999999999"
    ):
        read_ase(path)
    assert time.perf_counter() - start < 5
    assert fz.check_data_file(path, "ase", finite=("energy", "forces"), energy_unit=unit)[0] == "error"


def test_extxyz_errors_name_the_frame(tmp_path):
    """Improved: ASE's messages do not say where; the error names the first frame ASE cannot read."""
    name, data, _ = fz.extxyz_seeds()[0]
    lines = data.split(b"\n")
    n = int(lines[0])
    lines[2 * (n + 2) + 3] = b"C 1.0 2.0"  # an atom line of the third frame with a missing coordinate
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataFormatError, match=r"xtb\.extxyz \(frame 2\): cannot read with ASE"):
        read_ase(path)


def test_energy_that_is_not_one_number_is_a_clear_error(tmp_path):
    """Found: ``energy="1 2 3"`` in an extxyz header was silently read as 1 (the first value), and an energy
    stored as text or bytes in an ASE database escaped as ValueError."""
    name, data, unit = fz.extxyz_seeds()[0]
    path = tmp_path / name
    path.write_bytes(re.sub(rb"energy=\S+", b'energy="1.0 2.0 3.0"', data, count=1))
    with pytest.raises(DataFormatError, match=r"\(frame 0\): energy 'energy' is not one number \(3 values"):
        read_ase(path)
    assert fz.check_data_file(path, "ase", finite=("energy", "forces"))[0] == "error"
    (tmp_path / "db").mkdir()
    assert fz.check_ase_db(("sql", 0, "energy", "'abc'", 2), tmp_path / "db")[0] == "error"
    with pytest.raises(DataFormatError, match=r"frames\.db \(frame 1\): energy 'energy' is not one number"):
        read_ase(tmp_path / "db" / "frames.db")


def test_extxyz_properties_claiming_more_columns_than_the_lines_have_are_refused_at_once(tmp_path):
    """Found: ``Properties=species:S:99999999999999999999:...`` kept ASE building its column list for ever."""
    name, data, _ = fz.extxyz_seeds()[-1]  # periodic copper, 2 frames
    path = tmp_path / name
    path.write_bytes(data.replace(b"species:S:1", b"species:S:99999999999999999999"))
    start = time.perf_counter()
    with pytest.raises(
        DataFormatError, match=r"\(frame 0, line 2\): Properties declare 1000000000000000000\d+ col"
    ):
        read_ase(path)
    assert time.perf_counter() - start < 5


def test_extxyz_empty_last_frame_is_a_clear_error(tmp_path):
    """Found (in the new header check): a last frame of ``0`` atoms raised IndexError."""
    name, data, unit = fz.extxyz_seeds()[-1]
    path = tmp_path / name
    path.write_bytes(data + b"0\n")
    with pytest.raises(DataFormatError, match=r"cu\.extxyz"):
        read_ase(path)
    assert fz.check_data_file(path, "ase", finite=("energy", "forces"), energy_unit=unit)[0] == "error"


@pytest.mark.parametrize(
    "value, match",
    [
        (b"inf", r"\(frame 0\): NaN/inf in the cell"),
        (b"1e308", r"\(molecule 0\): cell vector 1e\+308 Angstrom is too"),
    ],
)
def test_extxyz_cells_must_be_finite_in_the_store(tmp_path, value, match):
    """Found: ``Lattice="inf ..."`` was read as a periodic frame with an infinite cell, and a 1e308 Å cell became
    inf (with a RuntimeWarning) when the store cast it to float32."""
    name, data, unit = fz.extxyz_seeds()[-1]
    path = tmp_path / name
    path.write_bytes(re.sub(rb'Lattice="[-\d.e]+', b'Lattice="' + value, data, count=1))
    refused(path, "ase", match, energy_unit=unit)


# ----------------------------------------------------------------------------------------- qm9pack
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: b"\n".join([*t.split(b"\n")[:2], t.split(b"\n")[2].rsplit(b",", 1)[0] + b",nan"]) + b"\n",
         r"qm9_part1\.csv \(line 3, dsgdb9nsd_\d+\.xyz\): NaN/inf in properties"),
        (lambda t: t.replace(b"\n", b"\n\xff", 1), r"qm9_part1\.csv \(line 2\): not UTF-8 text"),
        (lambda t: t.split(b"\n")[0] + b"\n" + t.split(b"\n")[1][:60] + b"\n",
         r"qm9_part1\.csv \(line 2, .*\): malformed row"),
        (lambda t: b"XYZ_file,Index\n" + t.split(b"\n", 1)[1], r"qm9_part1\.csv \(line 1\): missing columns"),
        (lambda t: t.split(b"\n")[0] + b"\n", r"qm9_part1\.csv: no molecule rows after the header"),
    ],
    ids=["nan", "not-utf8", "short-row", "columns", "no-rows"],
)  # fmt: skip
def test_qm9pack_csv_errors_name_the_file_and_line(tmp_path, edit, match):
    """A qm9pack CSV with NaN, non-UTF-8 bytes, a cut row, missing columns or no rows (found: an empty table
    passed as valid) is a one-line error naming the CSV and its line (``read_qm9pack(data_dir=)``); the seed itself reads as the tarball's molecules."""
    from atomnet.data.qm9 import read_qm9pack

    seed = fz.qm9pack_seed()
    (tmp_path / "qm9_part1.csv").write_bytes(seed)
    table = read_qm9pack(progress=False, data_dir=tmp_path)
    first = read_qm9_tarball(fz.shared("qm9/qm9_subset.tar.bz2"), limit=3, progress=False)
    fz.assert_tables_equal(table, first)
    (tmp_path / "qm9_part1.csv").write_bytes(edit(seed))
    with pytest.raises(DataFormatError, match=match) as info:
        read_qm9pack(progress=False, data_dir=tmp_path)
    assert "\n" not in str(info.value)
