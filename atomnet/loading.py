"""Loading trained models from Lightning checkpoints or atomnet model files, safely.

Both kinds of file are read with ``torch.load(..., weights_only=True)``: only tensors and plain containers
are unpickled, never arbitrary objects, so an untrusted file cannot run code. A Lightning checkpoint written
by :class:`~atomnet.training.lightning_module.PotentialModule` carries the model name and hyperparameters
under the key ``"atomnet"``, so the model is rebuilt from the registry without the training code's classes.
Every key read from a file is type-checked, sizes are compared with the stored weights before the model is
built (:func:`atomnet.models.registry.build_checked`), and a newer format version is refused naming both
versions (``docs/model_format.md``).
"""

from __future__ import annotations

import os

from atomnet.errors import AtomNetError
from atomnet.models.registry import (
    MODEL_FILE_FORMAT,
    build_checked,
    check_version,
    model_from_dict,
    read_safely,
)
from atomnet.potential import Potential

CHECKPOINT_KEY = "atomnet"
#: newest version of the checkpoint's ``"atomnet"`` entry this code reads (an entry without one is version 1)
CHECKPOINT_VERSION = 1


def potential_from_content(content: dict, source: str = "<dict>") -> tuple[Potential, dict]:
    """(Potential in eval mode, meta) from a model-file dict or a Lightning checkpoint dict."""
    if content.get("format") == MODEL_FILE_FORMAT:
        model = model_from_dict(content, source)
        return Potential(model).eval(), dict(content.get("meta", {}))
    info = content.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or "state_dict" not in content:
        raise AtomNetError(
            f"{source}: neither an atomnet model file nor an atomnet Lightning checkpoint "
            f"(keys: {sorted(map(str, content))[:8]})"
        )
    check_version(info.get("version", 1), CHECKPOINT_VERSION, "checkpoint", source)
    prefix, weights = info.get("weights"), content["state_dict"]
    if not isinstance(prefix, str) or not isinstance(weights, dict):
        raise AtomNetError(
            f"{source}: checkpoint entry {CHECKPOINT_KEY!r} lacks a weights prefix or a state_dict"
        )
    state = {k[len(prefix) :]: v for k, v in weights.items() if isinstance(k, str) and k.startswith(prefix)}
    missing = [k for k in ("model", "hparams") if k not in info]
    if missing:
        raise AtomNetError(f"{source}: checkpoint entry {CHECKPOINT_KEY!r} lacks {missing}")
    model = build_checked(info["model"], info["hparams"], state, source)
    config = info.get("config", {})
    meta = {
        "config": config if isinstance(config, dict) else {},
        "epoch": content.get("epoch"),
        "global_step": content.get("global_step"),
    }
    return Potential(model).eval(), meta


def load_potential(path: str | os.PathLike) -> tuple[Potential, dict]:
    """(ready :class:`Potential` in eval mode, meta) from a ``.ckpt`` or an atomnet model file."""
    return potential_from_content(read_safely(path), str(path))
