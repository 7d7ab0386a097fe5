"""Append-only columns of rows, for conversions larger than memory.

A :class:`Spool` holds named columns (numpy arrays that grow along their first dimension). Blocks are
appended as they are read and read back later by row range. With a folder, each column is a raw file
``<folder>/<name>.bin`` that is appended to and memory-mapped for reading, so only the rows being
appended or read are in memory. Without a folder the blocks stay in memory. The streaming conversion
uses the first kind; :func:`atomnet.data.ase_io.read_ase` uses the second kind, so both run the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: rows of fill written at a time when a column is padded up to a later row
_FILL_ROWS = 1 << 16


class Spool:
    """Named columns of rows: raw files in ``folder`` (bounded memory) or, if ``folder`` is ``None``, memory.

    A column's dtype and row shape (``array.shape[1:]``) are fixed by its first block. A column may start
    late or skip rows: :meth:`append` with ``row=`` pads the gap with ``fill``, and :meth:`read` pads rows
    past its end. So "this property is absent here" costs nothing until a block has the property.
    """

    def __init__(self, folder: str | Path | None = None):
        self.folder = None if folder is None else Path(folder)
        self._spec: dict[str, tuple[np.dtype, tuple[int, ...], object]] = {}  # dtype, row shape, fill
        self._rows: dict[str, int] = {}
        self._blocks: dict[str, list[np.ndarray]] = {}  # memory backend
        self._files: dict[str, object] = {}  # file backend: open handles while appending

    def rows(self, name: str) -> int:
        """Rows appended to column ``name`` so far (0 if it has none)."""
        return self._rows.get(name, 0)

    def append(self, name: str, array: np.ndarray, row: int | None = None, fill=np.nan) -> None:
        """Append ``array`` (rows along the first dimension) to column ``name``, starting at row ``row``
        (default: after the last row; a gap is padded with ``fill``)."""
        array = np.asarray(array)
        if name not in self._spec:
            self._spec[name] = (array.dtype, array.shape[1:], fill)
            self._rows[name] = 0
        dtype, shape, fill = self._spec[name]
        if array.shape[1:] != shape:
            raise ValueError(f"column {name!r}: rows of shape {array.shape[1:]}, expected {shape}")
        if row is not None:
            if row < self._rows[name]:
                raise ValueError(f"column {name!r}: row {row} is already written")
            while self._rows[name] < row:
                self._write(name, np.full((min(row - self._rows[name], _FILL_ROWS), *shape), fill, dtype))
        self._write(name, np.ascontiguousarray(array, dtype=dtype))

    def _write(self, name: str, array: np.ndarray) -> None:
        if self.folder is None:
            self._blocks.setdefault(name, []).append(array)
        else:
            if name not in self._files:
                self._files[name] = open(self.folder / f"{name}.bin", "ab")  # noqa: SIM115 - closed in close()
            self._files[name].write(array.tobytes())
        self._rows[name] += len(array)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of column ``name`` as an array (a copy); rows past its end are ``fill``."""
        dtype, shape, fill = self._spec[name]
        have = min(stop, self._rows[name])
        if self.folder is None:
            parts = self._blocks.get(name, [])
            if len(parts) > 1:
                self._blocks[name] = parts = [np.concatenate(parts)]
            out = parts[0][start:have] if parts and have > start else np.empty((0, *shape), dtype)
        else:
            handle = self._files.pop(name, None)
            if handle is not None:
                handle.close()
            if have > start:
                data = np.memmap(
                    self.folder / f"{name}.bin", dtype=dtype, mode="r", shape=(self._rows[name], *shape)
                )
                out = np.array(data[start:have])
                del data
            else:
                out = np.empty((0, *shape), dtype)
        if stop > max(have, start):
            out = np.concatenate([out, np.full((stop - max(have, start), *shape), fill, dtype)])
        return out

    def close(self) -> None:
        """Close the files being appended to (the folder and its files are the caller's to delete)."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
