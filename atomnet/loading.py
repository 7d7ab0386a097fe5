"""Loading trained models from Lightning checkpoints or atomnet model files, safely.

Both kinds of file are read with ``torch.load(..., weights_only=True)``: only tensors and plain containers
are unpickled, never arbitrary objects, so an untrusted file cannot run code. A Lightning checkpoint written
by :class:`~atomnet.training.lightning_module.PotentialModule` carries the model name and hyperparameters
under the key ``"atomnet"``, so the model is rebuilt from the registry without the training code's classes.
"""

from __future__ import annotations

import os

from atomnet.errors import AtomNetError
from atomnet.models.registry import MODEL_FILE_FORMAT, build_model, model_from_dict, read_safely
from atomnet.potential import Potential

CHECKPOINT_KEY = "atomnet"


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
