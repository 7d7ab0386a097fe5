"""Pretrained models shipped with atomnet, and :func:`load_model` for names, checkpoints and model files.

``index.json`` lists every shipped model: file, data set, split sizes, units, measured errors, training time
and the command that produced it. Files are atomnet model files (:func:`atomnet.models.save_model`), loaded
with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from atomnet.errors import AtomNetError
from atomnet.potential import Potential

HERE = Path(__file__).parent
INDEX = HERE / "index.json"


def _index() -> dict[str, dict]:
    if not INDEX.is_file():
        return {}
    return {entry["name"]: entry for entry in json.loads(INDEX.read_text())}


def list_models() -> list[dict]:
    """The shipped pretrained models: name, dataset, split sizes, units, measured errors, command."""
    return list(_index().values())


def resolve(path_or_name: str | os.PathLike) -> Path:
    """The file of a pretrained model name, or ``path_or_name`` itself if that file exists."""
    index = _index()
    name = str(path_or_name)
    if name in index:
        return HERE / index[name]["file"]
    path = Path(path_or_name)
    if not path.exists():
        raise AtomNetError(
            f"{name!r} is neither a file nor a pretrained model; available: {sorted(index) or 'none'}"
        )
    return path


def split_file(name: str) -> Path:
    """The split (``.npz``, :mod:`atomnet.data.splits`) a shipped model was trained and tested on, for
    ``atomnet evaluate NAME DATA --split-file <this> --subset test``."""
    entry = _index().get(name)
    if entry is None or "split_file" not in entry:
        raise AtomNetError(f"pretrained model {name!r} ships no split file")
    return HERE / entry["split_file"]


def resolve_split(path_or_name: str | os.PathLike) -> Path:
    """A split file: ``path_or_name`` itself if it exists, else the split shipped with that pretrained model."""
    path = Path(path_or_name)
    if path.exists():
        return path
    if str(path_or_name) not in _index():
        raise AtomNetError(f"{path_or_name}: neither a split file nor a pretrained model name")
    return split_file(str(path_or_name))


def load_with_meta(path_or_name: str | os.PathLike) -> tuple[Potential, dict]:
    """(:class:`Potential` in eval mode, meta) from a pretrained name, a Lightning ``.ckpt`` or a model file.

    Files are read with ``torch.load(weights_only=True)``: a file holding pickled objects is refused.
    """
    from atomnet.loading import load_potential

    return load_potential(resolve(path_or_name))


def load_model(path_or_name: str | os.PathLike, device: str = "cpu") -> Potential:
    """A ready :class:`Potential` (eval mode) from a pretrained name, a Lightning ``.ckpt`` or a model file."""
    return load_with_meta(path_or_name)[0].to(device)
