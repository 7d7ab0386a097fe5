"""Models by name, and the self-contained model file format.

A model file is a plain dict ``{"format": "atomnet-model", "version": 1, "model": name, "hparams": {...},
"state_dict": {...}, "meta": {...}}`` saved with ``torch.save`` and loaded with ``weights_only=True``
(no arbitrary code runs from an untrusted file).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from atomnet.errors import AtomNetError
from atomnet.files import atomic_output
from atomnet.models.base import AtomisticModel
from atomnet.models.cmnet import CMNet
from atomnet.models.dtnn import DTNN
from atomnet.models.schnet import SchNet

MODELS: dict[str, type[AtomisticModel]] = {"schnet": SchNet, "dtnn": DTNN, "cmnet": CMNet}
MODEL_FILE_FORMAT = "atomnet-model"


def build_model(name: str, **hparams) -> AtomisticModel:
    """Instantiate a registered model by name with its hyperparameters."""
    try:
        cls = MODELS[name.lower()]
    except KeyError:
        raise AtomNetError(f"unknown model {name!r}; registered models: {sorted(MODELS)}") from None
    try:
        return cls(**hparams)
    except TypeError as exc:
        raise AtomNetError(f"model {name!r}: {exc}") from None


def model_to_dict(model: AtomisticModel, meta: dict | None = None) -> dict:
    """The model file content (weights + hyperparameters + free-form ``meta``)."""
    return {
        "format": MODEL_FILE_FORMAT,
        "version": 1,
        "model": model.name,
        "hparams": dict(model.hparams),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def model_from_dict(content: dict, source: str = "<dict>") -> AtomisticModel:
    """Rebuild a model from :func:`model_to_dict` output."""
    if not isinstance(content, dict) or content.get("format") != MODEL_FILE_FORMAT:
        raise AtomNetError(f"{source}: not an atomnet model file (missing format tag {MODEL_FILE_FORMAT!r})")
    model = build_model(content["model"], **content["hparams"])
    try:
        model.load_state_dict(content["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise AtomNetError(f"{source}: weights do not match the model's hyperparameters ({first})") from None
    return model


def save_model(model: AtomisticModel, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save a self-contained model file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(model_to_dict(model, meta), tmp)
    return path


def read_safely(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)``: only tensors and plain containers are unpickled, never
    arbitrary objects, so an untrusted file cannot run code. One-line :class:`AtomNetError` for missing,
    corrupt, unsafe or non-dict files."""
    path = Path(path)
    if not path.is_file():
        raise AtomNetError(f"{path}: model file not found")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/truncated/unsafe files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AtomNetError(
            f"{path}: cannot read model file (loaded with weights_only=True, no code is run): {reason[:300]}"
        ) from None
    if not isinstance(content, dict):
        raise AtomNetError(f"{path}: not an atomnet model file or checkpoint ({type(content).__name__})")
    return content


def load_model_file(path: str | os.PathLike) -> tuple[AtomisticModel, dict]:
    """Load a model file saved by :func:`save_model`; returns (model, meta). Clear errors for bad files."""
    content = read_safely(path)
    return model_from_dict(content, str(path)), content.get("meta", {})
