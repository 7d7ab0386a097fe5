"""Loading trained models from Lightning checkpoints or atomnet model files, safely.

Both kinds of file are read with ``torch.load(..., weights_only=True)``: only tensors and plain containers
are unpickled, never arbitrary objects, so an untrusted file cannot run code. A Lightning checkpoint written
by :class:`~atomnet.training.lightning_module.PotentialModule` carries the model name and hyperparameters
under the key ``"atomnet"``, so the model is rebuilt from the registry without the training code's classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from atomnet.errors import AtomNetError
from atomnet.models.registry import MODEL_FILE_FORMAT, build_model, model_from_dict
from atomnet.potential import Potential

CHECKPOINT_KEY = "atomnet"


def read_safely(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with a one-line :class:`AtomNetError` for unsafe/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model or checkpoint file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors, corrupt zips, unsafe globals
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AtomNetError(
            f"{path}: refused or unreadable (loaded with weights_only=True, no code is run): {reason[:300]}"
        ) from None
    if not isinstance(content, dict):
        raise AtomNetError(f"{path}: not an atomnet model file or checkpoint ({type(content).__name__})")
    return content


def potential_from_content(content: dict, source: str = "<dict>") -> tuple[Potential, dict]:
    """(Potential in eval mode, meta) from a model-file dict or a Lightning checkpoint dict."""
    if content.get("format") == MODEL_FILE_FORMAT:
        model = model_from_dict(content, source)
        return Potential(model).eval(), dict(content.get("meta", {}))
    info = content.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or "state_dict" not in content:
        raise AtomNetError(
            f"{source}: neither an atomnet model file nor an atomnet Lightning checkpoint "
            f"(keys: {sorted(content)[:8]})"
        )
    prefix = info["weights"]
    state = {k[len(prefix) :]: v for k, v in content["state_dict"].items() if k.startswith(prefix)}
    model = build_model(info["model"], **info["hparams"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise AtomNetError(f"{source}: weights do not match the model's hyperparameters ({first})") from None
    meta = {
        "config": info.get("config", {}),
        "epoch": content.get("epoch"),
        "global_step": content.get("global_step"),
    }
    return Potential(model).eval(), meta


def load_potential(path: str | os.PathLike) -> tuple[Potential, dict]:
    """(ready :class:`Potential` in eval mode, meta) from a ``.ckpt`` or an atomnet model file."""
    return potential_from_content(read_safely(path), str(path))
