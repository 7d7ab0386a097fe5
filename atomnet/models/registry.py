"""Models by name, and the self-contained model file format (``docs/model_format.md``).

A model file is a plain dict ``{"format": "atomnet-model", "version": 1, "model": name, "hparams": {...},
"state_dict": {...}, "meta": {...}}`` saved with ``torch.save`` and loaded with ``weights_only=True``
(no arbitrary code runs from an untrusted file). Reading checks every key's type, refuses files of a newer
format version than :data:`MODEL_FILE_VERSION` with a message naming both versions, and compares the
hyperparameters with the stored weights before a model of that size is built.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from pathlib import Path

import torch

from atomnet.errors import AtomNetError, first_line
from atomnet.files import atomic_output
from atomnet.models.base import AtomisticModel
from atomnet.models.cmnet import CMNet
from atomnet.models.dtnn import DTNN
from atomnet.models.schnet import SchNet

MODELS: dict[str, type[AtomisticModel]] = {"schnet": SchNet, "dtnn": DTNN, "cmnet": CMNet}
MODEL_FILE_FORMAT = "atomnet-model"
#: version of the model-file layout this code writes; files of versions 1..MODEL_FILE_VERSION are read
MODEL_FILE_VERSION = 1
#: a model file's members may expand to at most this many times the file's size (+ 1 MiB) when read:
#: ``torch.save`` stores them uncompressed, so more means a compressed "zip bomb"
MAX_EXPANSION = 16


def check_version(version, newest: int, what: str, source: str) -> int:
    """``version`` as an int in 1..``newest``, else a one-line :class:`AtomNetError`: a newer version says
    "written by atomnet <what> format version N; this atomnet reads up to format version M: upgrade atomnet"."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise AtomNetError(
            f"{source}: invalid {what} format version {version!r} (expected an integer 1..{newest})"
        )
    if version > newest:
        raise AtomNetError(
            f"{source}: written by atomnet {what} format version {version}; this atomnet reads up to "
            f"format version {newest}: upgrade atomnet"
        )
    return version


def build_model(name: str, **hparams) -> AtomisticModel:
    """Instantiate a registered model by name with its hyperparameters."""
    try:
        cls = MODELS[name.lower()]
    except KeyError:
        raise AtomNetError(f"unknown model {name!r}; registered models: {sorted(MODELS)}") from None
    try:
        return cls(**hparams)
    except TypeError as exc:  # torch's messages list every signature on its own line: keep the first
        raise AtomNetError(f"model {name!r}: {first_line(exc)}") from None


def model_to_dict(model: AtomisticModel, meta: dict | None = None) -> dict:
    """The model file content (weights + hyperparameters + free-form ``meta``)."""
    return {
        "format": MODEL_FILE_FORMAT,
        "version": MODEL_FILE_VERSION,
        "model": model.name,
        "hparams": dict(model.hparams),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def _numbers(value, kind: type):
    """Every ``kind`` (int or float) inside a hyperparameter value (lists, tuples and dicts searched), bools
    excluded."""
    if isinstance(value, kind) and not isinstance(value, bool):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v, kind)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v, kind)


def _check_sizes(name: str, hparams: dict, state_dict: dict, source: str) -> None:
    """Refuse hyperparameters that would build a model larger than the weights stored in the file, before
    anything of that size is allocated.

    Where the model can be built on torch's ``meta`` device (shapes without memory) the weights are loaded
    into that shell, which checks every name and shape. Before that, every integer hyperparameter must be at most
    the number of stored weights (a width, a count or a largest Z is the size of at least one stored tensor
    dimension), so no shell of absurd size is ever built.
    """
    # the bound first: even a shell of 10^9 interaction blocks would take for ever to build
    n_stored = sum(int(v.numel()) for v in state_dict.values())
    for key, value in hparams.items():
        for n in _numbers(value, int):
            if n > max(n_stored, 1000):
                raise AtomNetError(
                    f"{source}: hyperparameter {key}={value!r} is larger than the {n_stored} weights stored "
                    "in the file (refused before building the model)"[:400]
                )
    try:
        with torch.device("meta"), warnings.catch_warnings():
            # a shell for shapes only: its warnings (e.g. "initializing zero-element tensors") are not the user's
            warnings.simplefilter("ignore")
            shell = build_model(name, **hparams)
    except (RuntimeError, NotImplementedError):  # the constructor reads tensor values: use the bound
        shell = None
    if shell is not None:
        try:  # checks every key and shape (load hooks for older key names included); copies nothing
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "copying into a meta parameter is a no-op": intended
                shell.load_state_dict(state_dict)
        except RuntimeError as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else (lines or ["mismatch"])[0]
            raise AtomNetError(
                f"{source}: weights do not match the model's hyperparameters ({detail[:300]})"
            ) from None
        return


def build_checked(name, hparams, state_dict, source: str) -> AtomisticModel:
    """The model ``name`` with ``hparams`` and the weights ``state_dict``, all read from an untrusted file:
    types are checked, sizes compared with the weights (:func:`_check_sizes`) before the model is built,
    and every problem is a one-line :class:`AtomNetError` naming ``source``."""
    if not isinstance(name, str):
        raise AtomNetError(f"{source}: model name must be a string, got {type(name).__name__}")
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise AtomNetError(f"{source}: hyperparameters must be a dict with string keys")
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise AtomNetError(f"{source}: weights (state_dict) must be a dict of named tensors")
    if name.lower() not in MODELS:
        raise AtomNetError(f"{source}: unknown model {name!r}; registered models: {sorted(MODELS)}")
    for key, value in hparams.items():
        if any(not math.isfinite(x) for x in _numbers(value, float)):
            raise AtomNetError(f"{source}: hyperparameter {key}={value!r} is not a finite number"[:400])
    for key, tensor in state_dict.items():
        if tensor.is_complex() or (tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())):
            what = "complex" if tensor.is_complex() else "NaN or inf"
            raise AtomNetError(
                f"{source}: weight {key!r} holds {what} values; a model's weights are finite reals"
            )
    try:
        _check_sizes(name, hparams, state_dict, source)
        model = build_model(name, **hparams)
        model.load_state_dict(state_dict)
    except AtomNetError as exc:
        message = str(exc)
        raise AtomNetError(message if message.startswith(source) else f"{source}: {message}") from None
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, MemoryError, ArithmeticError) as exc:
        first = first_line(exc)
        if "state_dict" in first or "size mismatch" in first:
            raise AtomNetError(
                f"{source}: weights do not match the model's hyperparameters ({first})"
            ) from None
        raise AtomNetError(f"{source}: cannot build model {name!r} from the file ({first[:200]})") from None
    return model


def model_from_dict(content: dict, source: str = "<dict>") -> AtomisticModel:
    """Rebuild a model from :func:`model_to_dict` output (e.g. read from an untrusted file): format tag and
    version checked (newer versions refused, naming both), then :func:`build_checked`."""
    if not isinstance(content, dict) or content.get("format") != MODEL_FILE_FORMAT:
        raise AtomNetError(f"{source}: not an atomnet model file (missing format tag {MODEL_FILE_FORMAT!r})")
    check_version(content.get("version"), MODEL_FILE_VERSION, "model-file", source)
    missing = [k for k in ("model", "hparams", "state_dict") if k not in content]
    if missing:
        raise AtomNetError(f"{source}: model file lacks {missing}")
    if not isinstance(content.get("meta", {}), dict):
        raise AtomNetError(
            f"{source}: model file 'meta' must be a dict, got {type(content['meta']).__name__}"
        )
    return build_checked(content["model"], content["hparams"], content["state_dict"], source)


def save_model(model: AtomisticModel, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save a self-contained model file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(model_to_dict(model, meta), tmp)
    return path


def _check_expansion(path: Path) -> None:
    """Refuse a zip-format file whose members expand to more than :data:`MAX_EXPANSION` × its size."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format: read directly, its size is what is on disk
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(info.file_size for info in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load names the problem
    limit = MAX_EXPANSION * path.stat().st_size + (1 << 20)
    if total > limit:
        raise AtomNetError(
            f"{path}: refused: its compressed members expand to {total} bytes, more than {MAX_EXPANSION}x the "
            f"file's {path.stat().st_size} bytes (torch.save stores them uncompressed)"
        )


def read_safely(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)``: only tensors and plain containers are unpickled, never
    arbitrary objects, so an untrusted file cannot run code. One-line :class:`AtomNetError` for missing,
    corrupt, unsafe, compressed-bomb or non-dict files; a pickled object is named in the message."""
    path = Path(path)
    if not path.is_file():
        raise AtomNetError(f"{path}: model file not found")
    _check_expansion(path)
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/truncated/unsafe files
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            raise AtomNetError(
                f"{path}: cannot read model file: it holds a pickled Python object ({found.group(1)}) that could "
                "run code, refused (atomnet reads with torch.load(weights_only=True), never unpickling objects)"
            ) from None
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        reason = next((x for x in lines if not x.startswith(boilerplate)), lines[0] if lines else "")
        raise AtomNetError(
            f"{path}: cannot read model file (loaded with weights_only=True, no code is run): "
            f"{reason[:300] or type(exc).__name__}"
        ) from None
    if not isinstance(content, dict):
        raise AtomNetError(f"{path}: not an atomnet model file or checkpoint ({type(content).__name__})")
    return content


def load_model_file(path: str | os.PathLike) -> tuple[AtomisticModel, dict]:
    """Load a model file saved by :func:`save_model`; returns (model, meta). Clear errors for bad files."""
    content = read_safely(path)
    return model_from_dict(content, str(path)), content.get("meta", {})
