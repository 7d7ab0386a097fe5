"""Atomic file output: the one home of "write to a temp file, then rename".

An interrupted or failing writer leaves neither a half-written file nor a temporary file behind, and an
existing file at ``path`` is only replaced once the new content is complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on any error delete it.

    ``suffix`` matters to writers that infer the format from the name (e.g. ``".png"`` for matplotlib).
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (:func:`atomic_output`) and close it. Returns ``path``."""
    import matplotlib.pyplot as plt  # only callers that already drew a figure get here

    try:
        with atomic_output(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
