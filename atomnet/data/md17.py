"""MD17 (sGDML npz) and rMD17 (revised MD17 npz) readers, and the rMD17 train/test index files.

MD17 (Chmiela et al., Sci. Adv. 3, e1603015 (2017); sGDML, Nat. Commun. 9, 3887 (2018)), keys:
``E`` (n, 1) kcal/mol, ``F`` (n, natoms, 3) kcal/mol/Å, ``R`` (n, natoms, 3) Å, ``z`` (natoms,) and the metadata
``name``, ``theory``, ``md5``, ``type``.

rMD17 (Christensen & von Lilienfeld, Mach. Learn.: Sci. Technol. 1, 045018 (2020)), keys: ``nuclear_charges``
(natoms,), ``coords`` (n, natoms, 3) Å, ``energies`` (n,) kcal/mol, ``forces`` (n, natoms, 3) kcal/mol/Å,
``old_indices`` (n,) frame index in the original MD17 file, ``old_energies``, ``old_forces`` (original MD17 values).
The archive ships 5 published splits ``splits/index_{train,test}_0X.csv`` (1000 + 1000 row indices into the npz),
read with :func:`read_index_file`.

Both readers return a :class:`~atomnet.data.table.MoleculeTable` in source units (kcal/mol, kcal/mol/Angstrom, Å).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atomnet.data.splits import check_npz_headers
from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError

ENERGY_UNIT = "kcal/mol"
FORCES_UNIT = "kcal/mol/Angstrom"
MD17_KEYS = ("E", "F", "R", "z")
RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


def _load_npz(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    # a header claiming 10^12 frames is refused before np.load allocates; object arrays are skipped below
    check_npz_headers(path, objects=False)
    try:  # the file is opened here, so np.load cannot leave it open when the zip is corrupt
        with open(path, "rb") as fh:
            npz = np.load(fh, allow_pickle=False)
            if not hasattr(npz, "files"):
                raise DataFormatError(path, "not an .npz archive (a single .npy array)")
            data = {}
            with npz:
                for k in npz.files:
                    try:
                        data[k] = npz[k]
                    except ValueError as e:  # pickled object array: skip unless required (never trusted)
                        if k in required or "allow_pickle" not in str(e):
                            raise
    except DataFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and numpy raise many types for corrupt archives
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFormatError(path, f"not a readable .npz archive ({reason[:300]})") from None
    missing = [k for k in required if k not in data]
    if missing:
        raise DataFormatError(path, f"missing keys {missing}; found {sorted(data)}")
    return data


def _frames(path: Path, z, r, e, f, names: tuple[str, str, str, str]) -> tuple[np.ndarray, ...]:
    """Validate shapes/values of (z, R, E, F) and return them as (natoms,), (n, natoms, 3), (n,), (n, natoms, 3)."""
    kz, kr, ke, kf = names
    z = np.asarray(z)
    for key, arr in ((kr, r), (ke, e), (kf, f)):
        if np.asarray(arr).dtype.kind not in "iuf":
            raise DataFormatError(path, f"{key} has dtype {np.asarray(arr).dtype}, expected real numbers")
    r = np.asarray(r, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if z.ndim != 1 or z.size == 0:
        raise DataFormatError(path, f"{kz} must have shape (natoms,), got {z.shape}")
    whole = z.dtype.kind == "f" and bool(np.all(np.isfinite(z) & (z == np.round(z))))
    if z.dtype.kind not in "iu" and not whole:
        raise DataFormatError(
            path, f"{kz} must hold integer atomic numbers, got dtype {z.dtype}: {z[:10].tolist()}"
        )
    natoms = len(z)
    if r.ndim != 3 or r.shape[1:] != (natoms, 3):
        raise DataFormatError(
            path, f"{kr} must have shape (n, {natoms}, 3) for natoms = len({kz}), got {r.shape}"
        )
    n = r.shape[0]
    if n == 0:
        raise DataFormatError(path, f"{kr} holds no frames (shape {r.shape})")
    if e.shape not in ((n,), (n, 1)):
        raise DataFormatError(
            path, f"{ke} must have shape ({n},) or ({n}, 1) to match {kr} {r.shape}, got {e.shape}"
        )
    e = e.reshape(n)
    if f.shape != r.shape:
        raise DataFormatError(path, f"{kf} must have the shape of {kr} {r.shape}, got {f.shape}")
    if np.any((z < 1) | (z > 118)):
        raise DataFormatError(
            path, f"{kz} holds invalid atomic numbers {np.unique(z[(z < 1) | (z > 118)])[:10].tolist()}"
        )
    for key, arr in ((kr, r), (ke, e), (kf, f)):
        bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
        if bad.any():
            raise DataFormatError(path, f"NaN/inf in {key}", f"frame {int(np.argmax(bad))}")
    return z.astype(np.int64), r, e, f


def _table(path, z, r, e, f, meta) -> MoleculeTable:
    n, natoms = r.shape[:2]
    return MoleculeTable(
        numbers=np.tile(z, n),
        positions=r.reshape(n * natoms, 3),
        n_atoms=np.full(n, natoms, dtype=np.int64),
        properties={"energy": e, "forces": f.reshape(n * natoms, 3)},
        units={"energy": ENERGY_UNIT, "forces": FORCES_UNIT},
        per_atom={"forces"},
        length_unit="Angstrom",
        source=str(path),
        ids=np.arange(n, dtype=np.int64),
        meta=meta,
    )


def _text(value: np.ndarray) -> str:
    v = value.item() if value.ndim == 0 else value
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def read_md17_npz(path: str | Path) -> MoleculeTable:
    """Read an original MD17/sGDML ``.npz`` (e.g. ``md17_ethanol.npz``, ``ethanol_ccsd_t-train.npz``).

    Returns:
        MoleculeTable with ``energy`` (n,) kcal/mol, per-atom ``forces`` (n * natoms, 3) kcal/mol/Angstrom,
        positions (n * natoms, 3) Å, ``ids`` = frame index; ``meta`` keeps ``name``, ``theory``, ``md5``, ``type``.
    """
    path = Path(path)
    d = _load_npz(path, MD17_KEYS)
    z, r, e, f = _frames(path, d["z"], d["R"], d["E"], d["F"], ("z", "R", "E", "F"))
    meta = {"format": "sgdml-npz", "dataset": "MD17"}
    meta.update({k: _text(d[k]) for k in ("name", "theory", "md5", "type") if k in d})
    return _table(path, z, r, e, f, meta)


def read_rmd17_npz(path: str | Path, include_old: bool = True) -> MoleculeTable:
    """Read an rMD17 ``.npz`` (e.g. ``rmd17/npz_data/rmd17_ethanol.npz``).

    Args:
        include_old: also keep ``old_indices`` (n,) (MD17 frame index), ``old_energy`` (n,) kcal/mol and per-atom
            ``old_forces`` (n * natoms, 3) kcal/mol/Angstrom (the original MD17 labels) when present.

    Returns:
        MoleculeTable with ``energy`` (n,) kcal/mol, per-atom ``forces`` kcal/mol/Angstrom, ``ids`` = row index in
        the npz (what the published split files index).
    """
    path = Path(path)
    d = _load_npz(path, RMD17_KEYS)
    names = ("nuclear_charges", "coords", "energies", "forces")
    z, r, e, f = _frames(path, *(d[k] for k in names), names)
    table = _table(path, z, r, e, f, {"format": "rmd17-npz", "dataset": "rMD17"})
    n = len(e)
    if include_old and "old_indices" in d:
        old = np.asarray(d["old_indices"])
        if old.shape != (n,) or old.dtype.kind not in "iu":
            raise DataFormatError(
                path, f"old_indices must be ({n},) integers, got dtype {old.dtype} shape {old.shape}"
            )
        table.properties["old_indices"] = old.astype(np.int64)
        table.units["old_indices"] = "1"
    if include_old and "old_energies" in d and "old_forces" in d:
        _, _, oe, of = _frames(
            path,
            z,
            r,
            d["old_energies"],
            d["old_forces"],
            ("nuclear_charges", "coords", "old_energies", "old_forces"),
        )
        table.properties["old_energy"] = oe
        table.properties["old_forces"] = of.reshape(-1, 3)
        table.units.update(old_energy=ENERGY_UNIT, old_forces=FORCES_UNIT)
        table.per_atom.add("old_forces")
    return table


def read_index_file(path: str | Path, n: int | None = None) -> np.ndarray:
    """Read an index file (rMD17 ``splits/index_train_01.csv`` etc.): integers separated by newlines, commas or
    whitespace; blank lines and ``#`` comments are skipped; a one-line non-numeric header is allowed.

    Args:
        n: number of frames of the indexed dataset; indices must lie in ``[0, n)`` when given.

    Returns:
        (k,) int64 indices in file order.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"cannot read index file ({e})") from None
    out: list[int] = []
    first_data_line = True
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.replace(",", " ").split()
        for tok in tokens:
            try:
                value = float(tok)
            except ValueError:
                if first_data_line and not out and not any(t.lstrip("-").isdigit() for t in tokens):
                    break  # header such as "index"
                raise DataFormatError(path, f"{tok!r} is not an integer index", f"line {lineno}") from None
            if not np.isfinite(value) or value != int(value):
                raise DataFormatError(path, f"{tok!r} is not an integer index", f"line {lineno}")
            if value < 0 or (n is not None and value >= n):
                rng = f"[0, {n})" if n is not None else ">= 0"
                raise DataFormatError(path, f"index {int(value)} out of range {rng}", f"line {lineno}")
            out.append(int(value))
        first_data_line = False
    if not out:
        raise DataFormatError(path, "no indices found")
    return np.array(out, dtype=np.int64)
