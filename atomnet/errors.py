"""Exceptions that speak the user's language: which file, which molecule or line, what was expected."""

from __future__ import annotations


class AtomNetError(Exception):
    """Base class of atomnet's user-facing errors (the CLI prints them as one line)."""


class DataFormatError(AtomNetError, ValueError):
    """A data file is malformed. The message names the file, the place (molecule/line) and the problem."""

    def __init__(self, path, problem: str, where: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.where = where
        loc = f"{self.path}" + (f" ({where})" if where else "")
        super().__init__(f"{loc}: {problem}")


class ModelInputError(AtomNetError, ValueError):
    """Input that a model cannot evaluate (unknown element, NaN positions, empty batch)."""


class ConfigError(AtomNetError, ValueError):
    """A configuration key is unknown or has the wrong type/value."""


class DownloadError(AtomNetError, OSError):
    """A download failed (offline, bad checksum)."""


class ExplanationError(AtomNetError, ValueError):
    """An explanation cannot be computed as asked (unknown method or parameter, unsupported module)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type name when it has none:
    library messages (torch signatures, h5py, zipfile) often run over several lines, a user error is one."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
