"""Reproducible train/validation/test splits, saved as ``.npz`` next to a run.

The neural networks and the kernel ridge baseline read the same split files, so results are comparable.
A split file holds int64 arrays ``train``, ``val``, ``test`` (molecule indices into a store) and ``seed``.
It is read with ``np.load(allow_pickle=False)`` after each array's header has been checked: an object array
(pickled Python objects, which could run code) is refused without being unpickled, and a header claiming
more elements than the file holds is refused before anything of that size is allocated.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atomnet.errors import DataFormatError, first_line
from atomnet.files import atomic_output


@dataclass
class Split:
    """Disjoint molecule indices of the train, validation and test sets (int64 arrays) and the seed used."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int = -1

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in ("train", "val", "test"):
            raise KeyError(name)
        return getattr(self, name)


def _resolve_sizes(n: int, sizes: Sequence[float | int | None]) -> tuple[int, int, int]:
    """Integer sizes from counts or fractions; at most one entry may be ``None`` (= the rest)."""
    if len(sizes) != 3:
        raise ValueError(f"sizes must be (train, val, test), got {sizes!r}")
    fractions = all(s is None or (isinstance(s, float) and 0.0 <= s <= 1.0) for s in sizes)
    counts: list[int | None] = []
    for s in sizes:
        if s is None:
            counts.append(None)
        elif fractions:
            counts.append(int(round(s * n)))
        elif float(s) == int(s) and int(s) >= 0:
            counts.append(int(s))
        else:
            raise ValueError(f"split sizes must be non-negative counts or fractions in [0, 1], got {sizes!r}")
    if counts.count(None) > 1:
        raise ValueError("at most one split size may be None (the remainder)")
    given = sum(c for c in counts if c is not None)
    if None in counts:
        counts[counts.index(None)] = n - given
    elif fractions and given != n and abs(sum(sizes) - 1.0) < 1e-9:
        counts[0] += n - given  # rounding of fractions that add up to 1: the train set takes the rest
    if min(counts) < 0 or sum(counts) > n:
        raise ValueError(f"split sizes {tuple(counts)} exceed the {n} molecules available")
    return counts[0], counts[1], counts[2]


def random_split(n: int, sizes: Sequence[float | int | None], seed: int = 0) -> Split:
    """Random disjoint split of ``range(n)``.

    Args:
        n: number of molecules.
        sizes: (n_train, n_val, n_test) as counts, or as fractions of ``n`` (floats); one entry may be
            ``None`` for "all remaining". Counts may add up to less than ``n`` (the rest is unused).
        seed: seed of ``numpy.random.default_rng``; the same (n, sizes, seed) always gives the same split.
    """
    n_train, n_val, n_test = _resolve_sizes(n, sizes)
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return Split(
        train=np.sort(perm[:n_train]),
        val=np.sort(perm[n_train : n_train + n_val]),
        test=np.sort(perm[n_train + n_val : n_train + n_val + n_test]),
        seed=int(seed),
    )


def nested_splits(
    n: int, train_sizes: Sequence[int], n_val: int, n_test: int, seed: int = 0
) -> dict[int, Split]:
    """Learning-curve splits: one shared validation and test set, nested training sets.

    The training set of size N is the first N molecules of one random order of the rest, so every smaller
    training set is a subset of every larger one, and all sizes are tested on the same molecules.
    Returns ``{N: Split}`` (indices sorted) for each N in ``train_sizes``.
    """
    if not train_sizes or min(train_sizes) < 1:
        raise ValueError(f"training sizes must be positive, got {list(train_sizes)}")
    if max(train_sizes) + n_val + n_test > n:
        raise ValueError(
            f"{n} molecules are not enough for N={max(train_sizes)} + {n_val} val + {n_test} test"
        )
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    val, test, pool = np.sort(perm[:n_val]), np.sort(perm[n_val : n_val + n_test]), perm[n_val + n_test :]
    return {int(size): Split(np.sort(pool[:size]), val, test, int(seed)) for size in sorted(set(train_sizes))}


def save_split(path: str | os.PathLike, split: Split) -> Path:
    """Write ``split`` as an ``.npz`` file (arrays ``train``, ``val``, ``test``, ``seed``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, train=split.train, val=split.val, test=split.test, seed=np.int64(split.seed))
    return path


def check_split(split: Split, n: int | None = None, path: str | os.PathLike = "<split>") -> Split:
    """Raise :class:`DataFormatError` if indices are negative, >= ``n``, duplicated or shared between sets."""
    seen = np.concatenate([split.train, split.val, split.test])
    if seen.size and seen.min() < 0:
        raise DataFormatError(path, f"negative molecule index {int(seen.min())}")
    if n is not None and seen.size and seen.max() >= n:
        raise DataFormatError(
            path, f"molecule index {int(seen.max())} out of range for a dataset of {n} molecules"
        )
    if np.unique(seen).size != seen.size:
        raise DataFormatError(path, "train/val/test sets overlap or contain duplicate indices")
    return split


def check_npz_headers(path: Path, objects: bool = True) -> None:
    """Refuse headers whose shape claims more data than the ``.npz`` member holds, and (``objects``) object
    arrays.

    ``np.load`` allocates an array of the header's shape before reading a zip member, so a few bytes
    claiming 10¹² indices would be a huge allocation; nothing is read beyond the headers here. Readers that
    skip object arrays themselves (``np.load(allow_pickle=False)`` refuses to unpickle them) pass
    ``objects=False``.
    """
    from numpy.lib import format as npy

    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with z.open(info) as f:
                    version = npy.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = npy.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = npy.read_array_header_2_0(f)
                    else:
                        continue  # np.load reads and checks other versions itself
                    header = f.tell()
                if dtype.hasobject and objects:
                    raise DataFormatError(
                        path,
                        f"array {name!r} holds pickled Python objects (dtype object), which could run code: "
                        "refused, not unpickled",
                    )
                count = int(np.prod(shape, dtype=object))
                if header + count * dtype.itemsize > info.file_size:
                    raise DataFormatError(
                        path,
                        f"array {name!r} claims shape {tuple(shape)} ({count * dtype.itemsize} bytes) but the "
                        f"file holds {info.file_size - header} bytes of it",
                    )
    except DataFormatError:
        raise
    except Exception:  # noqa: BLE001 - not a zip or a broken header: np.load names the problem
        return


def load_split(path: str | os.PathLike, n: int | None = None) -> Split:
    """Read a split written by :func:`save_split`; with ``n`` also check that indices are < ``n``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such split file")
    check_npz_headers(path)
    try:  # the file is opened here, so np.load cannot leave it open when the zip is corrupt
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            missing = [k for k in ("train", "val", "test") if k not in data.files]
            if missing:
                raise DataFormatError(path, f"split file lacks arrays {missing} (has {data.files})")
            arrays = {k: np.asarray(data[k]) for k in ("train", "val", "test")}
            seed = int(data["seed"]) if "seed" in data.files else -1
    except DataFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip/pickle/format errors all mean: not a split file
        raise DataFormatError(path, f"not a readable split .npz file: {first_line(exc)}") from None
    for k, a in arrays.items():
        if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
            raise DataFormatError(path, f"array {k!r} must be a 1-d integer array, got {a.dtype} {a.shape}")
    split = Split(*(arrays[k].astype(np.int64) for k in ("train", "val", "test")), seed=seed)
    return check_split(split, n, path)


def split_from_index_files(
    train_file: str | os.PathLike,
    test_file: str | os.PathLike | None = None,
    n_val: int | float = 0,
    seed: int = 0,
    n: int | None = None,
) -> Split:
    """A split from published index files (e.g. rMD17's ``index_train_01.csv``/``index_test_01.csv``).

    ``n_val`` molecules (a count, or a fraction of the train indices) are drawn from the train indices
    with ``seed`` for validation. Index files are read with :func:`atomnet.data.md17.read_index_file`.
    """
    from atomnet.data.md17 import read_index_file

    train = np.asarray(read_index_file(train_file), dtype=np.int64)
    test = (
        np.asarray(read_index_file(test_file), dtype=np.int64)
        if test_file is not None
        else np.zeros(0, np.int64)
    )
    k = int(round(n_val * len(train))) if isinstance(n_val, float) else int(n_val)
    if not 0 <= k <= len(train):
        raise ValueError(f"n_val={n_val} is not possible with {len(train)} train indices")
    perm = np.random.default_rng(seed).permutation(len(train))
    split = Split(train=np.sort(train[perm[k:]]), val=np.sort(train[perm[:k]]), test=test, seed=int(seed))
    return check_split(split, n, train_file)
