"""Mutation fuzzing of atomnet's readers (reliability issue 17, "Inputs"), shared by the fuzz tests and
``scripts/reliability_fuzz.py``.

A :class:`Target` is one reader or loader: a valid seed input (derived at run time from ``../shared/data``,
the repository's own files, or built with the library), a hypothesis strategy of mutations of it, and a
check that the mutated input ends in exactly one of two outcomes:

* ``"error"``: an :class:`~atomnet.errors.AtomNetError` whose one-line message names the file; through the
  CLI (``atomnet data convert`` / ``atomnet data info``) exit status 2 with one line on stderr naming the
  file, no warning printed, and nothing left in the output folder;
* ``"valid"``: every value finite where the format requires it, re-reading gives the same values, and the
  conversion writes a store that :class:`~atomnet.data.store.Store` opens with the same values; the CLI
  converts it too (exit 0, only the store in the output folder).

Anything else -- another exception escaping (numpy, h5py, torch, zipfile, tarfile, UnicodeDecodeError), a
warning, a silent NaN, a stray file, or no answer within the per-example time limit -- is a failure.
:func:`campaign` runs one target for a bounded, seeded number of examples and counts the outcomes.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import io
import math
import re
import shutil
import signal
import sqlite3
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from atomnet.errors import AtomNetError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
#: what an error message names when it knows where in the file the problem is
LOCATION = re.compile(r"line \d+|frame \d+|molecule \d+|atom \d+|row \d+|\.xyz\b")


class Hang(BaseException):
    """No result within the per-example time limit (a BaseException, so ``except Exception`` cannot hide it)."""


class MissingSeed(Exception):
    """A seed file of ``../shared/data`` is absent."""


# ------------------------------------------------------------------------------------------------------
# counting
# ------------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """Outcomes of one campaign: ``outcomes`` {"error", "valid", "failure"}, mutation ``kinds`` tried, errors
    whose message names a place in the file (``located``), and the failures (empty when the reader is sound)."""

    name: str
    outcomes: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    located: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict:
        return {
            "cases": self.total,
            "error": self.outcomes["error"],
            "valid": self.outcomes["valid"],
            "failure": self.outcomes["failure"],
            "errors_naming_a_place": self.located,
            "kinds": dict(sorted(self.kinds.items())),
            "failures": self.failures,
        }


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`Hang` in the main thread after ``seconds`` of wall time; a loop inside C code, where the
    signal never gets to Python, ends the process after ``2 * seconds`` with every thread's traceback."""

    def alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(2 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def no_warnings(what: str):
    """Fail if anything inside warns (a real CLI run would print it: more than one line on stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        yield
    if caught:
        w = caught[0]
        raise AssertionError(f"{what} warned: {w.category.__name__}: {str(w.message)[:200]}")


def campaign(target: Target, max_examples: int, strict: bool = True, timeout_s: float = 60.0) -> Tally:
    """Run ``target`` on ``max_examples`` seeded mutations (hypothesis, fixed seed, no database).

    ``strict``: a failure is raised (hypothesis shrinks it and prints the falsifying mutation); otherwise it
    is recorded in ``tally.failures`` (one line per distinct failure) and the campaign goes on.
    """
    tally = Tally(target.name)
    target.prepare()

    @seed(zlib.crc32(f"{target.name}/{max_examples}".encode()))
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(target.strategy)
    def one(mutation):
        tally.kinds.update(kinds_of(mutation))
        tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-"))
        try:
            with time_limit(timeout_s):
                outcome, located = target.check(mutation, tmp)
        except Hang as exc:
            problem = f"hang: {exc}"
        except Exception as exc:  # noqa: BLE001 - every other exception is a finding
            if strict:
                raise
            problem = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            problem = re.sub(r"/tmp/fuzz-[\w-]+/", "<tmp>/", problem)
        else:
            tally.outcomes[outcome] += 1
            tally.located += int(located)
            return
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        tally.outcomes["failure"] += 1
        if strict:
            raise AssertionError(f"{target.name}: {problem}")
        line = f"{problem}  <- {mutation!r}"[:600]
        if not any(f.split("  <- ")[0] == problem for f in tally.failures):
            tally.failures.append(line)

    one()
    return tally


def checked_campaign(name: str, n: int) -> Tally:
    """For the tests: :func:`campaign` of target ``name`` with ``n`` cases (skipped when a seed file of
    ``../shared/data`` is absent). Every case ends in a clear error or a valid result (otherwise the campaign
    raises with the shrunk mutation), and both outcomes occur, so both halves of the check ran."""
    import pytest

    try:
        tally = campaign(TARGETS[name], n)
    except MissingSeed as exc:
        pytest.skip(str(exc))
    print(f"{name}: {tally.total} cases, {dict(tally.outcomes)}")
    assert tally.total >= 0.9 * n
    assert tally.outcomes["error"] > 0 and tally.outcomes["valid"] > 0, dict(tally.outcomes)
    assert not tally.failures
    return tally


def kinds_of(mutation) -> list[str]:
    """Names of the mutation operations in ``mutation`` (nested tuples/lists whose first item is a name)."""
    found: list[str] = []

    def walk(m):
        if isinstance(m, (tuple, list)):
            if m and isinstance(m[0], str) and m[0] in KIND_NAMES:
                found.append(KIND_NAMES[m[0]])
            for x in m[1:] if m and isinstance(m[0], str) else m:
                walk(x)

    walk(mutation)
    return found or ["none"]


# ------------------------------------------------------------------------------------------------------
# mutations of bytes
# ------------------------------------------------------------------------------------------------------
#: numbers that a text format might hold: QM9's Mathematica exponents, NaN/inf, huge, tiny and odd forms
NUMBERS = [
    "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e308", "-1e308", "1.7976931348623157e308",
    "1e400", "-1e400", "1e39", "3.5e38", "1.2*^-5", "-3.1*^2", "1*^400", "2.5*^308", "1e-400", "4.9e-324",
    "0", "-0.0", "1_000", "\u0661\u0662", "0x1A", "", "1e", "--1", "+", ".", "1.2.3", "1,5",
    "99999999999999999999", "-99999999999999999999", "9" * 400,
]  # fmt: skip
#: replacements of an atom-count line
COUNTS = [
    "0", "-1", "1", "2", "4", "100", "999999999", "99999999999999999999", "3.0", "1e3", "nan", "", "x", "5 5"
]  # fmt: skip
#: bytes that are not UTF-8 (or are control characters) inserted into text
RAW = [
    b"\xff", b"\xfe\xff", b"\xc3\x28", b"\x80", b"\xe2\x82", b"\x00", b"\r", b"\x1a", b"\xef\xbb\xbf",
    b"\xa0"
]  # fmt: skip
INSERT_LINES = [
    "", "   ", "H 0.0 0.0 0.0 0.0", "C 1.0 2.0 3.0", "X 0 0 0", "garbage line", "5", "0", "nan nan nan"
]  # fmt: skip
KIND_NAMES = {
    "flip": "byte flip",
    "bit": "bit flip",
    "truncate": "truncation",
    "zero": "zeroed bytes",
    "delete": "deleted bytes",
    "insert": "inserted bytes",
    "delete_line": "removed line",
    "duplicate_line": "inserted line",
    "insert_line": "inserted line",
    "count_set": "wrong atom count",
    "count_delta": "wrong atom count",
    "number": "odd number",
    "non_utf8": "non-UTF-8 bytes",
    "yaml_value": "odd YAML value",
    "drop": "missing field",
    "dtype": "wrong dtype",
    "shape": "wrong shape",
    "value": "odd value",
    "extra": "extra field",
    "attr": "odd attribute",
    "chunked": "re-chunked",
    "header": "lying npy header",
    "sql": "odd database value",
    "hparam": "odd hyperparameter",
    "top": "odd top-level entry",
}

#: a position in a file: a fraction of its length (float), bytes from the start (int >= 0) or the end (< 0)
POS = st.one_of(st.floats(0, 1, exclude_max=True), st.integers(-1024, 1023))


def at(pos, n: int) -> int:
    """Byte index in ``range(n)`` (``0`` for an empty file) of a :data:`POS` value."""
    if n <= 0:
        return 0
    if isinstance(pos, float):
        return min(int(pos * n), n - 1)
    return min(pos, n - 1) if pos >= 0 else max(n + pos, 0)


BINARY_OP = st.one_of(
    st.tuples(st.just("flip"), POS, st.integers(0, 255)),
    st.tuples(st.just("bit"), POS, st.integers(0, 7)),
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("zero"), POS, st.integers(1, 64)),
    st.tuples(st.just("delete"), POS, st.integers(1, 64)),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=16)),
)
BINARY_OPS = st.lists(BINARY_OP, min_size=1, max_size=4)

LINE_POS = st.floats(0, 1, exclude_max=True)
TEXT_OP = st.one_of(
    st.tuples(st.just("flip"), POS, st.integers(0, 255)),
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("delete_line"), LINE_POS),
    st.tuples(st.just("duplicate_line"), LINE_POS),
    st.tuples(st.just("insert_line"), LINE_POS, st.sampled_from(INSERT_LINES)),
    st.tuples(st.just("count_set"), LINE_POS, st.sampled_from(COUNTS)),
    st.tuples(st.just("count_delta"), LINE_POS, st.integers(-3, 3).filter(bool)),
    st.tuples(st.just("number"), LINE_POS, st.sampled_from(NUMBERS)),
    st.tuples(st.just("non_utf8"), POS, st.sampled_from(RAW)),
)
#: one to three operations, or only number replacements (half of them still readable numbers)
TEXT_OPS = st.one_of(
    st.lists(TEXT_OP, min_size=1, max_size=3),
    st.lists(st.tuples(st.just("number"), LINE_POS, st.sampled_from(NUMBERS)), min_size=1, max_size=2),
)

_NUMBER = re.compile(rb"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:(?:[eE]|\*\^)[-+]?\d+)?(?![\w.])")
_COUNT_LINE = re.compile(rb"^\s*\d+\s*$")


def apply_binary(data: bytes, ops) -> bytes:
    """``data`` with every operation of :data:`BINARY_OPS` applied in turn."""
    for op in ops:
        kind, i = op[0], at(op[1], len(data))
        if kind == "flip" and data:
            data = data[:i] + bytes([op[2]]) + data[i + 1 :]
        elif kind == "bit" and data:
            data = data[:i] + bytes([data[i] ^ (1 << op[2])]) + data[i + 1 :]
        elif kind == "truncate":
            data = data[:i]
        elif kind == "zero":
            data = data[:i] + bytes(len(data[i : i + op[2]])) + data[i + op[2] :]
        elif kind == "delete":
            data = data[:i] + data[i + op[2] :]
        elif kind == "insert":
            data = data[:i] + op[2] + data[i:]
    return data


def apply_text(data: bytes, ops) -> bytes:
    """``data`` (text as bytes) with every operation of :data:`TEXT_OPS` applied in turn."""
    for op in ops:
        kind = op[0]
        if kind in ("flip", "truncate"):
            data = apply_binary(data, [op])
        elif kind == "non_utf8":
            i = at(op[1], len(data))
            data = data[:i] + op[2] + data[i:]
        elif kind == "number":
            found = list(_NUMBER.finditer(data))
            if found:
                m = found[min(int(op[1] * len(found)), len(found) - 1)]
                data = data[: m.start()] + op[2].encode() + data[m.end() :]
        else:
            lines = data.split(b"\n")
            k = min(int(op[1] * len(lines)), len(lines) - 1)
            if kind == "delete_line":
                del lines[k]
            elif kind == "duplicate_line":
                lines.insert(k, lines[k])
            elif kind == "insert_line":
                lines.insert(k, op[2].encode())
            else:  # count_set, count_delta: the atom-count lines (a lone integer)
                counts = [j for j, line in enumerate(lines) if _COUNT_LINE.match(line)]
                if counts:
                    j = counts[min(int(op[1] * len(counts)), len(counts) - 1)]
                    new = op[2] if kind == "count_set" else str(max(int(lines[j]) + op[2], 0))
                    lines[j] = new.encode()
            data = b"\n".join(lines)
    return data


# ------------------------------------------------------------------------------------------------------
# mutations of arrays (npz members, HDF5 datasets, tensors)
# ------------------------------------------------------------------------------------------------------
DTYPES = ["int8", "int64", "uint8", "uint64", "float16", "float32", "float64", "complex128", "bool", "U8", "S8",
          "object", "datetime64[s]"]  # fmt: skip
SHAPES = ["transpose", "add_axis", "flatten", "last_axis", "scalar", "empty", "drop_frame", "repeat"]
VALUES = [math.nan, math.inf, -math.inf, 1e308, -1e308, 1e39, 0.0, 0, -1, 255, 119, 6.5, 2**62, 2**63]
ARRAY_EDIT = st.one_of(
    st.tuples(st.just("drop")),
    st.tuples(st.just("dtype"), st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), st.sampled_from(SHAPES)),
    st.tuples(st.just("value"), st.sampled_from(VALUES), st.floats(0, 1, exclude_max=True)),
)


def edit_array(a: np.ndarray, edit) -> np.ndarray | None:
    """``a`` changed by one :data:`ARRAY_EDIT` (``None``: dropped). Never raises."""
    a = np.asarray(a)
    kind = edit[0]
    if kind == "drop":
        return None
    if kind == "dtype":
        if edit[1] == "object":
            return np.array(list(a.reshape(-1)) + [None], dtype=object)[:-1].reshape(a.shape)
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                return a.astype(edit[1])
        except (ValueError, TypeError, OverflowError):
            return a.astype(str)
    if kind == "shape":
        how = edit[1]
        if how == "transpose":
            return a.T.copy()
        if how == "add_axis":
            return a[None]
        if how == "flatten":
            return a.reshape(-1)
        if how == "last_axis":
            return a[..., :-1] if a.ndim else a
        if how == "scalar":
            return a.reshape(-1)[0] if a.size else np.asarray(0)
        if how == "empty":
            return a[:0] if a.ndim else a.reshape(1)[:0]
        if how == "drop_frame":
            return a[:-1] if a.ndim else a
        return np.concatenate([a, a]) if a.ndim else np.stack([a, a])
    value, frac = edit[1], edit[2]
    if a.size == 0:
        return a
    if a.dtype.kind in "iub" and not (
        isinstance(value, int) and np.can_cast(np.min_scalar_type(value), a.dtype)
    ):
        a = a.astype(np.float64) if not isinstance(value, int) or abs(value) > 2**62 else a.astype(np.int64)
    elif a.dtype.kind not in "iubfc":
        a = a.astype(str)
        value = str(value)
    a = a.copy()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        a.reshape(-1)[min(int(frac * a.size), a.size - 1)] = value
    return a


def edit_arrays(arrays: dict[str, np.ndarray], edits) -> dict[str, np.ndarray]:
    """Apply ``[(key index, edit), ...]`` to a dict of arrays; an index past the keys adds an extra member."""
    out = dict(arrays)
    names = sorted(arrays)
    for index, edit in edits:
        if index >= len(names):
            out[f"extra{index}"] = np.arange(3) if edit[0] == "drop" else edit_array(np.arange(6.0), edit)
            continue
        name = names[index]
        if name not in out:
            continue
        new = edit_array(out[name], edit)
        if new is None:
            del out[name]
        else:
            out[name] = new
    return out


def array_edits(n_keys: int):
    """Up to 3 (key index, edit) pairs; an index of ``n_keys`` adds an extra member."""
    pair = st.tuples(st.integers(0, n_keys), ARRAY_EDIT).map(lambda p: (p[0], p[1]))
    return st.lists(pair, min_size=1, max_size=3)


# ------------------------------------------------------------------------------------------------------
# seeds: a few molecules of the real files, or files built with the library
# ------------------------------------------------------------------------------------------------------
def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        raise MissingSeed(
            f"shared data file {path} not found (expected ../shared/data next to the repository)"
        )
    return path


@functools.cache
def qm9_members(n: int = 3) -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of the first ``n`` members of the shared QM9 tarball."""
    out = []
    with tarfile.open(shared("qm9/qm9_subset.tar.bz2"), "r|bz2") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xyz"):
                out.append((Path(member.name).name, tar.extractfile(member).read()))
                if len(out) == n:
                    break
    return tuple(out)


@functools.cache
def qm7_seed(n: int = 3) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
    """((member name, bytes) of the first ``n`` QM7 xyz files, their hof_qm7.txt lines)."""
    with tarfile.open(shared("qm7/qm7.tar.gz"), "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xyz")), key=lambda m: m.name
        )
        files = tuple((m.name, tar.extractfile(m).read()) for m in members[:n])
    wanted = {Path(name).name for name, _ in files}
    hof = [line for line in shared("qm7/hof_qm7.txt").read_bytes().splitlines() if line.split()[:1]
           and line.split()[0].decode() in wanted]  # fmt: skip
    return files, b"\n".join(hof) + b"\n"


@functools.cache
def md17_arrays(n_frames: int = 3) -> dict[str, np.ndarray]:
    """The first frames of the shared sGDML ``ethanol_ccsd_t-train.npz``, every key kept."""
    with np.load(shared("md17/ethanol_ccsd_t-train.npz")) as d:
        return {k: (d[k][:n_frames] if k in ("E", "F", "R") else d[k]) for k in d.files}


def rmd17_arrays() -> dict[str, np.ndarray]:
    """An rMD17-layout npz built with numpy from the MD17 frames (the original rMD17 npz is not stored)."""
    d = md17_arrays()
    e = d["E"].reshape(-1)
    return {
        "nuclear_charges": d["z"].astype(np.int64),
        "coords": d["R"],
        "energies": e,
        "forces": d["F"],
        "old_indices": np.arange(len(e)),
        "old_energies": e + 0.25,
        "old_forces": d["F"] * 0.99,
    }


def _frames_text(path: Path, n: int) -> bytes:
    lines = path.read_bytes().split(b"\n")
    out, i = [], 0
    for _ in range(n):
        k = int(lines[i])
        out.extend(lines[i : i + k + 2])
        i += k + 2
    return b"\n".join(out) + b"\n"


@functools.cache
def extxyz_seeds() -> tuple[tuple[str, bytes, str], ...]:
    """(name, bytes, energy unit) of small extxyz files: 3 frames of each shared/repository file and a
    periodic 2-atom copper cell written with ASE (lattice, stress)."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    seeds = [("xtb.extxyz", _frames_text(ROOT / "data" / "ethanol_xtb.extxyz", 3), "eV")]
    for relative in ("md17/ethanol_dft_1200.xyz", "rmd17/rmd17_ethanol_1000.xyz"):
        with contextlib.suppress(MissingSeed):
            seeds.append((Path(relative).name, _frames_text(shared(relative), 3), "kcal/mol"))
    frames = []
    for k in range(2):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.01 * k, cubic=False) * (1, 1, 2)
        atoms.rattle(0.01, seed=k)
        atoms.calc = SinglePointCalculator(
            atoms,
            energy=-7.0 - k,
            forces=np.full((len(atoms), 3), 0.01 * (k + 1)),
            stress=np.arange(6) * 1e-3,
        )
        frames.append(atoms)
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    seeds.append(("cu.extxyz", buf.getvalue().encode(), "eV"))
    return tuple(seeds)


def read_frames(data: bytes):
    import ase.io

    return ase.io.read(io.StringIO(data.decode()), index=":", format="extxyz")


def write_seed_store(path: Path, which: int) -> Path:
    """:func:`seed_store` written to ``path``."""
    path.write_bytes(seed_store(which % 2))
    return path


@functools.cache
def seed_store(which: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fuzz-seed-") as tmp:
        return _build_seed_store(Path(tmp) / "seed.h5", which).read_bytes()


def _build_seed_store(path: Path, which: int) -> Path:
    """A valid store: 3 QM9 molecules (15 properties, per-atom charges, gdb ids) when the shared tarball is
    there, else 3 xTB frames (energy, forces); ``which`` odd: the periodic copper frames (cells, pbcs)."""
    from atomnet.data.ase_io import read_ase
    from atomnet.data.qm9 import read_qm9_tarball
    from atomnet.data.store import write_store

    src = path.with_suffix(".src")
    if which % 2:
        name, data, unit = extxyz_seeds()[-1]
        src = src.with_suffix(".extxyz")
        src.write_bytes(data)
        table = read_ase(src, energy_unit=unit)
    else:
        try:
            members = qm9_members()
        except MissingSeed:
            src = src.with_suffix(".extxyz")
            src.write_bytes(extxyz_seeds()[0][1])
            table = read_ase(src)
        else:
            src = src.with_suffix(".tar")
            write_tar(src, members, "w")
            table = read_qm9_tarball(src, progress=False)
    write_store(table, path, progress=False, source="fuzz seed")
    src.unlink()
    return path


def write_tar(path: Path, members, mode: str) -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


TINY = dict(n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10)


@functools.cache
def model_contents() -> tuple[dict, dict]:
    """(model-file dict, Lightning-checkpoint-shaped dict) of a tiny SchNet with seeded weights."""
    import torch

    from atomnet.models.registry import model_to_dict
    from atomnet.models.schnet import SchNet

    torch.manual_seed(0)
    model = SchNet(**TINY)
    ckpt = {
        "epoch": 0,
        "global_step": 0,
        "state_dict": {f"potential.model.{k}": v for k, v in model.state_dict().items()},
        "atomnet": {"format": "atomnet-lightning", "version": 1, "model": model.name,
                    "hparams": dict(model.hparams), "weights": "potential.model.", "config": {}},
    }  # fmt: skip
    return model_to_dict(model, meta={"energy_key": "energy"}), ckpt


# ------------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------------
def run_cli(argv) -> tuple[int, str, str]:
    """``atomnet *argv`` in this process: (exit status, stdout, stderr); a warning fails (see :func:`no_warnings`)."""
    from atomnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with no_warnings(f"atomnet {' '.join(map(str, argv[:2]))}"):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in argv])
    for text in (out.getvalue(), err.getvalue()):
        text.encode("utf-8")  # what a terminal needs: no surrogate escapes of undecodable bytes
    return rc, out.getvalue(), err.getvalue()


def assert_clear(exc: AtomNetError, *paths: Path) -> bool:
    """The message is one line naming one of ``paths``; returns whether it also names a place in the file."""
    text = str(exc)
    assert "\n" not in text.strip(), f"multi-line error: {text!r}"
    assert any(p.name in text for p in paths), f"error does not name {[p.name for p in paths]}: {text!r}"
    return bool(LOCATION.search(text))


def assert_cli_error(rc: int, err: str, *paths: Path) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, f"exit status {rc}, stderr {err[-500:]!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err[-500:]!r}"
    assert any(p.name in lines[0] for p in paths), f"stderr does not name the file: {lines[0]!r}"


def assert_tables_equal(a, b) -> None:
    for name in ("numbers", "positions", "n_atoms", "ids", "cells", "pbcs"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or np.array_equal(x, y)), f"re-read differs: {name}"
    assert a.properties.keys() == b.properties.keys() and a.units == b.units and a.per_atom == b.per_atom
    for k, v in a.properties.items():
        assert np.array_equal(v, b.properties[k]), f"re-read differs: {k}"


def assert_table_valid(table, finite: tuple[str, ...] | str = "all") -> None:
    """Shapes agree, positions finite, the properties ``finite`` (``"all"``: every float one) finite."""
    n = np.asarray(table.n_atoms)
    assert n.ndim == 1 and n.size >= 1 and n.min() >= 1, f"molecule sizes {n}"
    total = int(n.sum())
    assert table.numbers.shape == (total,) and table.positions.shape == (total, 3)
    assert np.isfinite(table.positions).all(), "non-finite position in a valid result"
    names = table.properties if finite == "all" else finite
    for name in names:
        v = np.asarray(table.properties[name])
        assert v.dtype.kind in "iuf", f"{name} has dtype {v.dtype}"
        assert len(v) == (total if name in table.per_atom else len(n)), f"{name} has shape {v.shape}"
        assert np.isfinite(v).all(), f"silent NaN/inf in {name}"
    if table.cells is not None:
        assert np.isfinite(table.cells).all(), "non-finite cell in a valid result"


def assert_store_matches(store_path: Path, table) -> None:
    """``Store`` opens the converted file, its values are the table's in internal units and finite where
    the table's are."""
    from atomnet.data.store import Store
    from atomnet.units import length_factor, unit_factor

    with Store(store_path) as s:
        assert s.n_molecules == table.n_molecules
        assert np.array_equal(s.numbers, table.numbers)
        pos = s.positions
        assert np.isfinite(pos).all(), "store holds non-finite positions"
        lf = length_factor(table.length_unit)
        np.testing.assert_allclose(pos, table.positions * lf, rtol=2e-6, atol=1e-30)
        for name, v in table.properties.items():
            got = s.property(name).astype(np.float64)
            want = np.asarray(v, dtype=np.float64) * unit_factor(table.units.get(name, "") or "1")
            fin = np.isfinite(want)
            assert np.array_equal(np.isfinite(got), fin), (
                f"store property {name} finite where the table's is not"
            )
            np.testing.assert_allclose(got[fin], want[fin], rtol=2e-6, atol=1e-30)
        s.summary()


def assert_stores_equal(a: Path, b: Path) -> None:
    from atomnet.data.store import Store

    with Store(a) as x, Store(b) as y:
        assert np.array_equal(x.offsets, y.offsets) and np.array_equal(x.numbers, y.numbers)
        assert np.array_equal(x.positions, y.positions)
        assert x.property_names == y.property_names and x.atom_property_names == y.atom_property_names
        for name in x.property_names + x.atom_property_names:
            assert np.array_equal(x.property(name), y.property(name), equal_nan=True)


def check_data_file(
    path: Path, fmt: str, names: tuple[Path, ...] = (), finite="all", **read
) -> tuple[str, bool]:
    """The whole path of a data file: reader (twice), store, ``atomnet data convert`` and ``data info``.

    ``names``: files an error may name besides ``path`` (e.g. QM7's hof file); ``read``: reader options
    (also given to the CLI: ``hof``, ``energy_unit``).
    """
    from atomnet.data.commands import read_source
    from atomnet.data.store import write_store

    names = (path, *names)
    before = sorted(p.name for p in path.parent.iterdir())
    api_dir, cli_dir = path.parent / "api", path.parent / "cli"
    api_dir.mkdir()
    cli_dir.mkdir()
    stage, located = "read", False
    with no_warnings(f"reading {path.name}"):
        try:
            table = read_source(str(path), fmt, progress=False, **read)
            assert_table_valid(table, finite)
            assert_tables_equal(table, read_source(str(path), fmt, progress=False, **read))
            stage = "store"
            write_store(table, api_dir / "api.h5", progress=False)
            assert_store_matches(api_dir / "api.h5", table)
            outcome = "valid"
        except AtomNetError as exc:
            located = assert_clear(exc, *names)
            outcome = "error"
            assert not list(api_dir.iterdir()), f"write_store left {list(api_dir.iterdir())}"
    options = []
    for key, value in read.items():
        options += [f"--{key.replace('_', '-')}", value]
    rc, out, err = run_cli(
        ["data", "convert", path, cli_dir / "out.h5", "--format", fmt, "--no-progress", *options]
    )
    if outcome == "error":
        assert_cli_error(rc, err, *names)
        assert not list(cli_dir.iterdir()), f"failed conversion left {[p.name for p in cli_dir.iterdir()]}"
    else:
        assert rc == 0 and not err, f"convert of a valid file: exit {rc}, stderr {err[-300:]!r}"
        assert [p.name for p in cli_dir.iterdir()] == ["out.h5"], f"left {list(cli_dir.iterdir())}"
        assert_stores_equal(cli_dir / "out.h5", api_dir / "api.h5")
    rc, out, err = run_cli(["data", "info", path, "--format", fmt])
    if outcome == "valid" or (stage == "store" and fmt != "ase"):
        assert rc == 0 and not err, f"info of a readable file: exit {rc}, stderr {err[-300:]!r}"
    elif rc != 0 or fmt != "ase":  # the ASE scan counts properties of frames read_ase refuses
        assert_cli_error(rc, err, *names)
    shutil.rmtree(api_dir)
    shutil.rmtree(cli_dir)
    after = sorted(p.name for p in path.parent.iterdir())
    assert after == before, f"files appeared next to the input: {set(after) - set(before)}"
    return outcome, located


@dataclass
class Target:
    """One reader: ``strategy`` draws a mutation, ``check(mutation, tmp_dir) -> (outcome, located)``."""

    name: str
    reader: str
    mutations: str
    strategy: st.SearchStrategy
    check: Callable[[object, Path], tuple[str, bool]]
    prepare: Callable[[], object] = lambda: None


# --- QM9 ----------------------------------------------------------------------------------------------
def check_qm9_xyz(mutation, tmp: Path) -> tuple[str, bool]:
    """One ``dsgdb9nsd_XXXXXX.xyz`` text through :func:`parse_qm9_xyz` (no file API: decoded as a file would be)."""
    from atomnet.data.qm9 import QM9_ELEMENTS, parse_qm9_xyz

    index, ops = mutation
    name, data = qm9_members()[index % len(qm9_members())]
    raw = apply_text(data, ops)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "error", False  # what the tarball reader reports (checked by the tarball target)
    path = tmp / name
    with no_warnings("parse_qm9_xyz"):
        try:
            mol = parse_qm9_xyz(text, path)
        except AtomNetError as exc:
            return "error", assert_clear(exc, path)
    n = int(text.split()[0])
    assert mol["numbers"].shape == (n,) and set(mol["numbers"].tolist()) <= set(QM9_ELEMENTS.values())
    for key in ("positions", "charges", "properties"):
        assert np.isfinite(mol[key]).all(), f"silent NaN/inf in {key}"
    again = parse_qm9_xyz(text, path)
    assert all(np.array_equal(mol[k], again[k]) for k in mol)
    return "valid", False


@functools.cache
def qm9pack_seed() -> bytes:
    """A qm9pack ``qm9_part1.csv`` (qm9pack 1.0.3's columns and quoting) holding the first three molecules of
    the shared QM9 tarball, so the target needs no qm9pack installed."""
    from atomnet.data.qm9 import QM9_ELEMENTS, QM9PACK_COLUMNS, parse_qm9_xyz

    symbol = {z: s for s, z in QM9_ELEMENTS.items()}
    header = ["XYZ_file", "Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", "Mulliken_pop"]
    header += list(QM9PACK_COLUMNS)
    lines = [",".join(header)]
    for name, data in qm9_members():
        mol = parse_qm9_xyz(data.decode(), name)
        elements = "[" + ",".join(f"'{symbol[int(z)]}'" for z in mol["numbers"]) + "]"
        xyz = "[" + ",".join("[" + ",".join(repr(float(v)) for v in r) + "]" for r in mol["positions"]) + "]"
        q = "[" + ",".join(repr(float(v)) for v in mol["charges"]) + "]"
        props = ",".join(repr(float(v)) for v in mol["properties"])
        lines.append(f'"{name}",{mol["id"]},"C",{len(mol["numbers"])},"{elements}","{xyz}","{q}",{props}')
    return ("\n".join(lines) + "\n").encode()


def check_qm9pack(mutation, tmp: Path) -> tuple[str, bool]:
    """A mutated ``qm9_part1.csv`` through :func:`read_qm9pack` (``data_dir``), then a store."""
    from atomnet.data.qm9 import read_qm9pack
    from atomnet.data.store import write_store

    path = tmp / "qm9_part1.csv"
    path.write_bytes(apply_text(qm9pack_seed(), mutation))
    out = tmp / "out"
    out.mkdir()
    with no_warnings("read_qm9pack"):
        try:
            table = read_qm9pack(progress=False, data_dir=tmp)
            assert_table_valid(table)
            assert_tables_equal(table, read_qm9pack(progress=False, data_dir=tmp))
            write_store(table, out / "qm9.h5", progress=False)
            assert_store_matches(out / "qm9.h5", table)
        except AtomNetError as exc:
            assert not list(out.iterdir()), f"write_store left {list(out.iterdir())}"
            # a row the reader refuses names the CSV; a value the store cannot hold names the folder (the
            # table's source) and the molecule
            return "error", assert_clear(exc, path, tmp)
    return "valid", False


def qm9_tar_mutation():
    text = st.tuples(st.just("members"), st.integers(0, 2), TEXT_OPS, st.sampled_from(["w:bz2", "w:gz", "w"]))
    raw = st.tuples(st.just("archive"), st.sampled_from(["w:bz2", "w:gz", "w"]), BINARY_OPS)
    return st.one_of(text, raw)


def check_qm9_tarball(mutation, tmp: Path) -> tuple[str, bool]:
    members = list(qm9_members())
    suffix = {"w:bz2": ".tar.bz2", "w:gz": ".tar.gz", "w": ".tar"}
    if mutation[0] == "members":
        _, index, ops, mode = mutation
        name, data = members[index]
        members[index] = (name, apply_text(data, ops))
        path = write_tar(tmp / f"qm9{suffix[mode]}", members, mode)
    else:
        _, mode, ops = mutation
        path = write_tar(tmp / f"qm9{suffix[mode]}", members, mode)
        path.write_bytes(apply_binary(path.read_bytes(), ops))
    return check_data_file(path, "qm9")


# --- MD17 / rMD17 -------------------------------------------------------------------------------------
CLAIMS = [(10**12,), (10**12, 9, 3), (3, 10**9, 3), (2**62, 2), (0,), (4,), ()]


def npz_mutation(n_keys: int):
    edits = st.tuples(st.just("arrays"), array_edits(n_keys), st.booleans())
    raw = st.tuples(st.just("file"), BINARY_OPS, st.booleans())
    header = st.tuples(st.just("header"), st.integers(0, n_keys - 1), st.sampled_from(CLAIMS), st.booleans())
    return st.one_of(edits, raw, header)


def lie_in_header(path: Path, member: int | str, shape: tuple) -> None:
    """Rewrite ``member`` (an index or an array name) of an ``.npz`` with a header claiming ``shape`` (same data
    bytes, valid CRC)."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        names = [info.filename for info, _ in members]
        index = names.index(f"{member}.npy") if isinstance(member, str) else member % len(members)
        for k, (info, data) in enumerate(members):
            if k == index:
                f = io.BytesIO(data)
                version = npy.read_magic(f)
                read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                _, fortran, dtype = read(f)
                body = data[f.tell() :]
                f = io.BytesIO()
                npy.write_array_header_1_0(f, {"descr": npy.dtype_to_descr(dtype), "fortran_order": fortran,
                                               "shape": shape})  # fmt: skip
                data = f.getvalue() + body
            z.writestr(info, data)


def write_npz(path: Path, arrays: dict, compressed: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _check_npz(mutation, tmp: Path, seed_arrays: dict, fmt: str) -> tuple[str, bool]:
    path = tmp / f"{fmt}.npz"
    write_mutated_npz(path, seed_arrays, mutation)
    return check_data_file(path, fmt)


def write_mutated_npz(path: Path, seed_arrays: dict, mutation) -> Path:
    if mutation[0] == "arrays":
        return write_npz(path, edit_arrays(seed_arrays, mutation[1]), mutation[2])
    write_npz(path, seed_arrays, mutation[-1])
    if mutation[0] == "header":
        lie_in_header(path, mutation[1], mutation[2])
    else:
        path.write_bytes(apply_binary(path.read_bytes(), mutation[1]))
    return path


def check_md17(mutation, tmp):
    return _check_npz(mutation, tmp, md17_arrays(), "md17")


def check_rmd17(mutation, tmp):
    return _check_npz(mutation, tmp, rmd17_arrays(), "rmd17")


# --- QM7 ----------------------------------------------------------------------------------------------
def qm7_mutation():
    member = st.tuples(st.just("members"), st.integers(0, 2), TEXT_OPS)
    hof = st.tuples(st.just("hof"), TEXT_OPS)
    raw = st.tuples(st.just("archive"), BINARY_OPS)
    return st.one_of(member, hof, raw)


def check_qm7(mutation, tmp: Path) -> tuple[str, bool]:
    files, hof = qm7_seed()
    files = list(files)
    if mutation[0] == "members":
        name, data = files[mutation[1]]
        files[mutation[1]] = (name, apply_text(data, mutation[2]))
    elif mutation[0] == "hof":
        hof = apply_text(hof, mutation[1])
    path = write_tar(tmp / "qm7.tar.gz", files, "w:gz")
    if mutation[0] == "archive":
        path.write_bytes(apply_binary(path.read_bytes(), mutation[1]))
    hof_path = tmp / "hof_qm7.txt"
    hof_path.write_bytes(hof)
    return check_data_file(path, "qm7", (hof_path,), hof=str(hof_path))


# --- extxyz and ASE databases -------------------------------------------------------------------------
def check_extxyz(mutation, tmp: Path) -> tuple[str, bool]:
    index, ops = mutation
    seeds = extxyz_seeds()
    name, data, unit = seeds[index % len(seeds)]
    path = tmp / name
    path.write_bytes(apply_text(data, ops))
    return check_data_file(path, "ase", finite=("energy", "forces"), energy_unit=unit)


SQL = ["NULL", "'abc'", "1e400", "-1e400", "0", "-1", "99999999999999999999", "X'00'", "X'FFFF'", "'nan'"]


def db_mutation():
    raw = st.tuples(st.just("file"), st.integers(0, 3), BINARY_OPS)
    sql = st.tuples(
        st.just("sql"),
        st.integers(0, 3),
        st.sampled_from(["energy", "natoms", "numbers", "positions", "forces", "cell", "pbc", "fmax", "id"]),
        st.sampled_from(SQL),
        st.integers(1, 3),
    )
    return st.one_of(raw, sql)


def check_ase_db(mutation, tmp: Path) -> tuple[str, bool]:
    import ase.io

    seeds = extxyz_seeds()
    _, data, unit = seeds[mutation[1] % len(seeds)]
    path = tmp / "frames.db"
    with no_warnings("writing the seed database"):
        ase.io.write(path, read_frames(data), format="db")
    if mutation[0] == "file":
        path.write_bytes(apply_binary(path.read_bytes(), mutation[2]))
    else:
        _, _, column, value, row = mutation
        with contextlib.closing(sqlite3.connect(path)) as con, contextlib.suppress(sqlite3.Error):
            con.execute(
                f"UPDATE systems SET {column} = {value} WHERE id = {row}"
            )  # a refused update: the seed
            con.commit()
    return check_data_file(path, "ase", finite=("energy", "forces"), energy_unit=unit)


# --- HDF5 stores --------------------------------------------------------------------------------------
STORE_DATASETS = ["numbers", "positions", "offsets", "ids", "cells", "pbcs", "properties/U0", "properties/energy",
                  "atom_properties/charges", "atom_properties/forces", "properties"]  # fmt: skip
ATTRS = ["format", "format_version", "unit", "source", "atomnet_version", "meta.format"]
ATTR_VALUES = ["atomnet-store", 1, 2, 0, -1, "1", True, 1.0, b"\xff\xfe", "\udcff", "x" * 5000, np.arange(3)]


def store_mutation():
    edit = st.tuples(st.just("edit"), st.integers(0, 1), st.lists(
        st.one_of(
            st.tuples(st.just("array"), st.sampled_from(STORE_DATASETS), ARRAY_EDIT),
            st.tuples(st.just("attr"), st.sampled_from(STORE_DATASETS[:3] + [""]), st.sampled_from(ATTRS),
                      st.sampled_from(ATTR_VALUES)),
            st.tuples(st.just("chunked"), st.sampled_from(STORE_DATASETS[:4])),
        ), min_size=1, max_size=3), st.one_of(st.just([]), BINARY_OPS))  # fmt: skip
    raw = st.tuples(st.just("file"), st.integers(0, 1), BINARY_OPS)
    return st.one_of(edit, raw)


def _edit_store(path: Path, edits) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        for edit in edits:
            if edit[0] == "attr":
                if edit[1] and edit[1] not in f:
                    continue
                obj = f[edit[1]] if edit[1] else f
                value = edit[3]
                if isinstance(value, str) and "\udcff" in value:  # invalid UTF-8 in a variable-length string
                    obj.attrs.create(edit[2], data=b"ab\xff", dtype=h5py.string_dtype("utf-8"))
                else:
                    obj.attrs[edit[2]] = value
                continue
            name = edit[1]
            if name not in f:  # an extra dataset where the layout has none (or a missing one re-added)
                if edit[0] == "array" and edit[2][0] != "drop":
                    f.create_dataset(name, data=np.arange(4.0))
                continue
            if not isinstance(f[name], h5py.Dataset):  # a group: only dropped
                if edit[0] == "array" and edit[2][0] == "drop":
                    del f[name]
                continue
            data, attrs = f[name][()], dict(f[name].attrs)
            if edit[0] == "array":
                new = edit_array(data, edit[2])
            else:
                new = data
            del f[name]
            if new is None:
                continue
            if new.dtype.kind == "O":
                new = new.astype(str).astype(h5py.string_dtype()) if new.size else new.astype("S1")
            if new.dtype.kind == "U":
                new = new.astype("S")
            if new.dtype.kind == "M":
                new = new.astype(np.int64)
            kwargs = {"chunks": True, "compression": "gzip"} if edit[0] == "chunked" and new.ndim else {}
            f.create_dataset(name, data=new, **kwargs)
            for k, v in attrs.items():
                with contextlib.suppress(UnicodeEncodeError):  # an invalid UTF-8 attribute set before
                    f[name].attrs[k] = v


def check_store(mutation, tmp: Path) -> tuple[str, bool]:
    from atomnet.data.dataset import StoreDataset
    from atomnet.data.store import Store, format_summary

    path = write_seed_store(tmp / "store.h5", mutation[1])
    if mutation[0] == "edit":
        _edit_store(path, mutation[2])
    ops = mutation[3] if mutation[0] == "edit" else mutation[2]
    if ops:
        path.write_bytes(apply_binary(path.read_bytes(), ops))
    with no_warnings("Store"):
        try:
            with Store(path) as s:
                summary = s.summary()
                text = format_summary(summary)
                values = [
                    s.numbers,
                    s.positions,
                    *(s.property(k) for k in s.property_names + s.atom_property_names),
                ]
                assert np.isfinite(values[1]).all(), "store with non-finite positions opened"
                assert "cells" not in s.file or np.isfinite(s.file["cells"][()]).all(), (
                    "non-finite cells opened"
                )
                assert len(s.numbers) == s.n_atoms_total and s.n_atoms.min() >= 1
            ds = StoreDataset(path, cutoff=4.0, targets=[])
            batch = ds.__getitems__(list(range(len(ds))))
            assert np.array_equal(batch.numbers.numpy(), values[0])
            np.testing.assert_array_equal(batch.positions.numpy(), values[1])
            with Store(path) as s:
                assert format_summary(s.summary()) == text
            outcome, located = "valid", False
        except AtomNetError as exc:
            outcome, located = "error", assert_clear(exc, path)
    rc, out, err = run_cli(["data", "info", path])
    if outcome == "valid":
        assert rc == 0 and not err and out.strip() == text, f"info of a valid store: exit {rc} {err[-300:]!r}"
    else:
        assert_cli_error(rc, err, path)
    return outcome, located


# --- model files and checkpoints ----------------------------------------------------------------------
HPARAM_VALUES = [-1, 0, 1, 10**12, math.nan, math.inf, -math.inf, 1e-300, 2.5, "abc", None, True, [1, 2], {}]
TOP_KEYS = ["format", "version", "model", "hparams", "state_dict", "meta", "atomnet"]
TOP_VALUES = [None, 0, 2, -1, "1", True, "nope", "dtnn", [1], {}, "atomnet-model", 1.5]
TENSOR_EDITS = st.one_of(
    ARRAY_EDIT.filter(lambda e: e[0] != "dtype"),
    st.tuples(
        st.just("dtype"),
        st.sampled_from(["int64", "float64", "float16", "bfloat16", "bool", "complex64", "uint8"]),
    ),  # fmt: skip
    st.tuples(st.just("value"), st.sampled_from(["list", "int", "str", "none"]), st.just(0.0)),
)


def model_mutation():
    edits = st.lists(
        st.one_of(
            st.tuples(st.just("state"), st.integers(0, 99), TENSOR_EDITS),
            st.tuples(st.just("hparam"), st.sampled_from([*TINY, "n_unknown", "cutoff_fn", "reduce"]),
                      st.sampled_from(HPARAM_VALUES)),
            st.tuples(st.just("top"), st.sampled_from(TOP_KEYS), st.sampled_from(TOP_VALUES)),
        ), min_size=1, max_size=3)  # fmt: skip
    structured = st.tuples(st.just("content"), st.integers(0, 1), edits, st.booleans())
    raw = st.tuples(st.just("file"), st.integers(0, 1), BINARY_OPS, st.booleans())
    return st.one_of(structured, raw)


def _edit_tensor(t, edit):
    import torch

    if edit[0] == "value" and isinstance(edit[1], str):
        return {"list": [1.0, 2.0], "int": 3, "str": "weights", "none": None}[edit[1]]
    if edit[0] == "dtype":
        return t.to(getattr(torch, edit[1]))
    new = edit_array((t.float() if t.dtype == torch.bfloat16 else t).numpy(), edit)  # numpy has no bfloat16
    if new is None:
        return None
    new = np.asarray(new)
    if new.dtype.kind not in "biufc":
        return str(new.tolist())
    return torch.from_numpy(np.ascontiguousarray(new))


def edit_model_content(content: dict, edits) -> dict:
    import copy

    content = copy.deepcopy(content)
    ckpt = "atomnet" in content
    for edit in edits:
        if edit[0] == "top":
            content[edit[1]] = edit[2]
            continue
        info = content.get("atomnet") if ckpt else content
        if edit[0] == "hparam" and isinstance(info, dict) and isinstance(info.get("hparams"), dict):
            info["hparams"][edit[1]] = edit[2]
        state = content.get("state_dict")
        if edit[0] == "state" and isinstance(state, dict) and state:
            key = sorted(state)[edit[1] % len(state)]
            if hasattr(state[key], "numpy"):
                new = _edit_tensor(state[key], edit[2])
                if new is None:
                    del state[key]
                else:
                    state[key] = new
    return content


def check_model(mutation, tmp: Path) -> tuple[str, bool]:
    import torch
    from ase.build import molecule

    from atomnet.data.batch import batch_from_atoms
    from atomnet.loading import load_potential

    kind, which, ops, legacy = mutation
    content = model_contents()[which]
    path = tmp / ("model.pt" if which == 0 else "last.ckpt")
    if kind == "content":
        content = edit_model_content(content, ops)
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    if kind == "file":
        path.write_bytes(apply_binary(path.read_bytes(), ops))
    with no_warnings("load_potential"):
        try:
            pot, _ = load_potential(path)
        except AtomNetError as exc:
            return "error", assert_clear(exc, path)
        # pairs out to the model's cutoff (a larger cutoff in the hyperparameters is a valid model)
        cutoff = max(4.0, float(pot.cutoff))
        batch = batch_from_atoms([molecule("H2O"), molecule("CH4")], cutoff=cutoff)
        out = pot(batch)
        assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all(), (
            f"a model that loads predicts non-finite values: {out['energy'].tolist()}"
        )
        again, _ = load_potential(path)
        a, b = pot.state_dict(), again.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    return "valid", False


# --- split files --------------------------------------------------------------------------------------
def split_arrays() -> dict[str, np.ndarray]:
    from atomnet.data.splits import random_split

    s = random_split(20, (10, 5, 5), seed=3)
    return {"train": s.train, "val": s.val, "test": s.test, "seed": np.int64(s.seed)}


def check_split(mutation, tmp: Path) -> tuple[str, bool]:
    from atomnet.data.splits import load_split

    path = tmp / "split.npz"
    write_mutated_npz(path, split_arrays(), mutation)
    with no_warnings("load_split"):
        try:
            split = load_split(path, n=20)
        except AtomNetError as exc:
            return "error", assert_clear(exc, path)
    seen = np.concatenate([split.train, split.val, split.test])
    assert all(a.dtype == np.int64 and a.ndim == 1 for a in (split.train, split.val, split.test))
    assert seen.size == np.unique(seen).size and (seen.size == 0 or (seen.min() >= 0 and seen.max() < 20))
    again = load_split(path, n=20)
    assert (
        all(np.array_equal(split[k], again[k]) for k in ("train", "val", "test")) and split.seed == again.seed
    )
    return "valid", False


def check_index_file(mutation, tmp: Path) -> tuple[str, bool]:
    from atomnet.data.md17 import read_index_file

    seed_text = ("index\n" + "\n".join(map(str, split_arrays()["train"])) + "\n").encode()
    path = tmp / "index_train_01.csv"
    path.write_bytes(apply_text(seed_text, mutation))
    with no_warnings("read_index_file"):
        try:
            idx = read_index_file(path, n=20)
        except AtomNetError as exc:
            return "error", assert_clear(exc, path)
    assert idx.dtype == np.int64 and idx.ndim == 1 and idx.size and idx.min() >= 0 and idx.max() < 20
    assert np.array_equal(idx, read_index_file(path, n=20))
    return "valid", False


# --- YAML configs -------------------------------------------------------------------------------------
YAML_VALUES = [".nan", ".inf", "-.inf", "1e400", "1.0e400", "nan", "-1", "0", "99999999999999999999", "true",
               "null", "[]", "{}", "[1, 2]", "abc", "2001-13-01", "2001-02-03", "!!python/object:os.system",
               "&a [*a]", "*a", "0x1F", "1_000", "'5e-4'", "~", "!!binary aGVsbG8=", "!!float 1e400", "? [1]",
               "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
               "2001-01-01 25:00:00", "9999-12-31", "!!int abc", "!!timestamp x"]  # fmt: skip
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
YAML_OP = st.one_of(TEXT_OP, st.tuples(st.just("yaml_value"), LINE_POS, st.sampled_from(YAML_VALUES)))


def apply_yaml(data: bytes, ops) -> bytes:
    for op in ops:
        if op[0] != "yaml_value":
            data = apply_text(data, [op])
            continue
        lines = data.split(b"\n")
        values = [j for j, line in enumerate(lines) if re.match(rb"^\s+\w+:\s*\S", line)]
        if values:
            j = values[min(int(op[1] * len(values)), len(values) - 1)]
            key = lines[j].split(b":", 1)[0]
            lines[j] = key + b": " + op[2].encode()
        data = b"\n".join(lines)
    return data


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _floats(v)


def check_config(mutation, tmp: Path) -> tuple[str, bool]:
    from atomnet.training.config import load_config

    index, ops = mutation
    src = CONFIGS[index % len(CONFIGS)]
    path = tmp / src.name
    path.write_bytes(apply_yaml(src.read_bytes(), ops))
    with no_warnings("load_config"):
        try:
            cfg = load_config(path)
        except AtomNetError as exc:
            text = str(exc)
            assert "\n" not in text.strip(), f"multi-line error: {text!r}"
            assert path.name in text, f"error does not name {path.name}: {text!r}"
            return "error", bool(re.search(r"line \d+", text))
    d = cfg.to_dict()
    assert all(math.isfinite(v) for v in _floats(d)), f"non-finite number accepted: {d}"
    cfg.save(tmp / "again.yaml")
    assert load_config(tmp / "again.yaml").to_dict() == d, "saved config reads back differently"
    return "valid", False


# ------------------------------------------------------------------------------------------------------
# the targets
# ------------------------------------------------------------------------------------------------------
#: cases per target in the default (not slow) tests: together under a minute on one core
DEFAULT_EXAMPLES = {"qm9_xyz": 200, "qm9_tarball": 100, "qm9pack": 150, "md17_npz": 100, "rmd17_npz": 80, "index_file": 150,
                    "qm7": 100, "extxyz": 150, "ase_db": 50, "store": 150, "model": 100, "split": 150, "config": 200}  # fmt: skip
#: cases per target in the slow tests and ``scripts/reliability_fuzz.py``
SLOW_EXAMPLES = 1000
TEXT_KINDS = "byte flips, truncation, removed/inserted lines, wrong atom counts, odd numbers, non-UTF-8 bytes"
TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("qm9_xyz", "qm9.parse_qm9_xyz (one dsgdb9nsd_*.xyz)", TEXT_KINDS,
               st.tuples(st.integers(0, 2), TEXT_OPS), check_qm9_xyz, qm9_members),
        Target("qm9_tarball", "qm9.read_qm9_tarball + CLI", TEXT_KINDS + " (members of bz2/gz/plain tars); "
               "byte flips, truncation, deleted/inserted bytes (archive)", qm9_tar_mutation(), check_qm9_tarball,
               qm9_members),
        Target("qm9pack", "qm9.read_qm9pack (a qm9pack CSV)", TEXT_KINDS, TEXT_OPS, check_qm9pack, qm9pack_seed),
        Target("md17_npz", "md17.read_md17_npz + CLI", "missing/extra keys, wrong dtypes/shapes, NaN/inf/huge "
               "values (numpy); byte flips, truncation (npz, compressed or not)", npz_mutation(8), check_md17,
               md17_arrays),
        Target("rmd17_npz", "md17.read_rmd17_npz + CLI", "as md17_npz (rMD17 keys, old_* labels)",
               npz_mutation(7), check_rmd17, md17_arrays),
        Target("index_file", "md17.read_index_file (rMD17 split csv)", TEXT_KINDS, TEXT_OPS, check_index_file),
        Target("qm7", "qm7.read_qm7 + hof + CLI", TEXT_KINDS + " (xyz members, hof_qm7.txt); byte flips, "
               "truncation (tar.gz)", qm7_mutation(), check_qm7, qm7_seed),
        Target("extxyz", "ase_io.read_ase (extxyz) + CLI", TEXT_KINDS + " (MD17, rMD17, xTB, periodic Cu)",
               st.tuples(st.integers(0, 3), TEXT_OPS), check_extxyz, extxyz_seeds),
        Target("ase_db", "ase_io.read_ase (ASE .db) + CLI", "byte flips, truncation (sqlite file); NULL/text/"
               "huge/blob values in columns (SQL)", db_mutation(), check_ase_db, extxyz_seeds),
        Target("store", "store.Store + StoreDataset + data info", "missing/extra datasets, wrong dtypes/shapes, "
               "NaN/inf/huge values, odd attributes, gzip re-chunking (h5py); byte flips, truncation",
               store_mutation(), check_store),
        Target("model", "loading.load_potential (model file, checkpoint)", "missing/extra keys, wrong "
               "dtypes/shapes, NaN/inf weights, odd hyperparameters and versions (torch); byte flips, "
               "truncation (zip and legacy format)", model_mutation(), check_model, model_contents),
        Target("split", "splits.load_split", "missing/extra arrays, wrong dtypes/shapes, out-of-range/NaN "
               "values (numpy); byte flips, truncation", npz_mutation(4), check_split),
        Target("config", "training.config.load_config", TEXT_KINDS + ", odd YAML values (NaN, dates, tags, "
               "anchors, deep nesting)", st.tuples(st.integers(0, 99), st.lists(YAML_OP, min_size=1, max_size=3)),
               check_config),
    ]
}  # fmt: skip
