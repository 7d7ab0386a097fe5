"""Downloads of the public datasets: resumable, with a progress bar and checksums (urllib only).

:data:`DATASETS` maps a dataset name to its files. A checksum is ``"sha256:<hex>"`` or ``"md5:<hex>"``; a hex
*prefix* (at least 12 digits) is accepted, because the only published values found are the 12-digit sha256
prefixes of load-atoms (GitHub jla-gardner/load-atoms, ``importers/qm9.py`` and ``importers/rmd17.py``). Files
without a known checksum have ``None`` and are not verified (only their size, where known).
Known: QM9 ``dsgdb9nsd.xyz.tar.bz2`` and ``rmd17.tar.bz2`` (sha256 prefixes). Unknown (``None``): QM9 atomref and
uncharacterized tables, the MD17 npz/zip files (the ``md5`` key inside an sGDML npz is a fingerprint of its arrays,
not of the file), QM7 ``qm7.mat``.

A download writes ``<file>.part`` and resumes it with an HTTP ``Range`` request; the file is renamed to its final
name only when complete and its checksum matches. Offline or unreachable: :class:`~atomnet.errors.DownloadError`
``download failed: <url> unreachable (<reason>); pass --path to a local copy``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from atomnet.errors import DownloadError

CHUNK = 1 << 16


class Resource(NamedTuple):
    """One downloadable file: ``url``, local ``filename``, ``checksum`` (``"sha256:.."``/``"md5:.."`` or None),
    ``size`` in bytes (or None)."""

    url: str
    filename: str
    checksum: str | None = None
    size: int | None = None


_FIGSHARE = "https://springernature.figshare.com/ndownloader/files/"
_SGDML = "http://www.quantum-machine.org/gdml/data/npz/"
MD17_MOLECULES = (
    "aspirin",
    "benzene2017",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "salicylic",
    "toluene",
    "uracil",
)

#: name -> files. QM9: Ramakrishnan et al. 2014 (figshare collection 978904); MD17: sGDML site; rMD17: figshare
#: 12672038 (Christensen & von Lilienfeld 2020); QM7: Rupp et al. 2012.
DATASETS: dict[str, list[Resource]] = {
    "qm9": [
        Resource(_FIGSHARE + "3195389", "dsgdb9nsd.xyz.tar.bz2", "sha256:3a63848ac806"),
        Resource(_FIGSHARE + "3195395", "atomref.txt"),
        Resource(_FIGSHARE + "3195404", "uncharacterized.txt"),
    ],
    **{f"md17_{m}": [Resource(f"{_SGDML}md17_{m}.npz", f"md17_{m}.npz")] for m in MD17_MOLECULES},
    "md17_ethanol_ccsd_t": [
        Resource("http://www.quantum-machine.org/gdml/data/npz/ethanol_ccsd_t.zip", "ethanol_ccsd_t.zip")
    ],
    "rmd17": [
        Resource("https://figshare.com/ndownloader/files/23950376", "rmd17.tar.bz2", "sha256:cddeea2ec2c4")
    ],
    "qm7": [Resource("http://quantum-machine.org/data/qm7.mat", "qm7.mat")],
}


def file_checksum(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``algorithm``: ``sha256`` or ``md5``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksum_matches(path: str | Path, checksum: str | None) -> bool:
    """True if ``path`` matches ``"sha256:<hex>"``/``"md5:<hex>"`` (a hex prefix of >= 12 digits suffices);
    ``None`` always matches."""
    if checksum is None:
        return True
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("sha256", "md5") or len(expected) < 12:
        raise ValueError(
            f"bad checksum {checksum!r}: expected 'sha256:<hex>' or 'md5:<hex>' (>= 12 hex digits)"
        )
    return file_checksum(path, algorithm).startswith(expected.lower())


def _unreachable(url: str, reason: object) -> DownloadError:
    return DownloadError(f"download failed: {url} unreachable ({reason}); pass --path to a local copy")


def download_file(
    url: str,
    dest: str | Path,
    checksum: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to the file ``dest``, resuming ``dest.part`` if present.

    Returns ``dest``. If ``dest`` exists and matches ``checksum`` it is not downloaded again. On a checksum or
    size mismatch the partial file is deleted and :class:`DownloadError` raised; no ``dest`` is left.
    """
    dest = Path(dest)
    if dest.is_file() and checksum_matches(dest, checksum) and (size is None or dest.stat().st_size == size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "atomnet"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range not satisfiable: the .part is already complete
            response = None
        else:
            raise _unreachable(url, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise _unreachable(url, getattr(e, "reason", e)) from None
    if response is not None:
        with response:
            if have and response.status != 206:  # server ignored the Range header: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else size
            with (
                open(part, "ab" if have else "wb") as out,
                tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress
                ) as bar,
            ):
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
                except (urllib.error.URLError, OSError) as e:
                    raise DownloadError(
                        f"download failed: {url} interrupted ({e}); run again to resume {part.name}"
                    ) from None
    got = part.stat().st_size
    if size is not None and got != size:
        if got < size:
            raise DownloadError(
                f"download failed: {url} incomplete ({got} of {size} bytes); run again to resume"
            )
        part.unlink()
        raise DownloadError(f"download failed: {url} has {got} bytes, expected {size}; partial file removed")
    if not checksum_matches(part, checksum):
        actual = file_checksum(part, checksum.partition(":")[0])
        part.unlink()
        raise DownloadError(
            f"download failed: {url} checksum mismatch (expected {checksum}, got {actual}); "
            "partial file removed"
        )
    os.replace(part, dest)
    return dest


def download(name_or_url: str, dest_dir: str | Path, progress: bool = True) -> list[Path]:
    """Download a dataset of :data:`DATASETS` (or a single URL) into ``dest_dir``; returns the local paths."""
    dest_dir = Path(dest_dir)
    if name_or_url in DATASETS:
        resources = DATASETS[name_or_url]
    elif "://" in name_or_url:
        filename = name_or_url.rstrip("/").rsplit("/", 1)[-1] or "download"
        resources = [Resource(name_or_url, filename)]
    else:
        raise DownloadError(f"unknown dataset {name_or_url!r}; known: {sorted(DATASETS)} (or give a URL)")
    return [
        download_file(r.url, dest_dir / r.filename, r.checksum, r.size, progress=progress) for r in resources
    ]
