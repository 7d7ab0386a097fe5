"""Fine-tuning: start a training run from a pretrained model (``model.init_from``), optionally with frozen
parts (``model.freeze``). The architecture comes from the pretrained file; no Lightning here."""

from __future__ import annotations

from atomnet.errors import ConfigError
from atomnet.models.base import AtomisticModel


def pretrained_start(cfg) -> AtomisticModel | None:
    """The model named by ``cfg.model.init_from`` (``None`` without one); fills ``cfg.model.hparams`` with its
    architecture. Hyperparameters the config gives must equal the pretrained model's (a clear
    :class:`ConfigError` names every difference)."""
    source = cfg.model.init_from
    if source is None:
        return None
    from atomnet.pretrained import load_with_meta

    model = load_with_meta(source)[0].model
    if cfg.model.name != model.name:
        raise ConfigError(
            f"model.name: {cfg.model.name!r}, but model.init_from {source} is a {model.name!r} model"
        )
    differ = [
        f"{k}={model.hparams.get(k)!r} (config: {v!r})"
        for k, v in cfg.model.hparams.items()
        if model.hparams.get(k) != v
    ]
    if differ:
        raise ConfigError(
            f"model: the config's architecture differs from model.init_from {source}: {', '.join(differ)}; "
            "remove those keys (the architecture is taken from the pretrained model)"
        )
    cfg.model.hparams = dict(model.hparams)
    return model


def freeze(model: AtomisticModel, prefixes: list[str]) -> int:
    """Stop training the parameters whose names start with one of ``prefixes`` (``embedding``,
    ``interactions.0``, ...); returns how many parameter tensors were frozen."""
    names = [n for n, _ in model.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        hits = {n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")}
        if not hits:
            tops = sorted({n.rsplit(".", 2)[0] if n.count(".") > 1 else n.split(".")[0] for n in names})
            raise ConfigError(
                f"model.freeze: no parameters named {prefix!r}*; modules with parameters: {tops[:12]}"
            )
        for name, param in model.named_parameters():
            if name in hits:
                param.requires_grad_(False)
                frozen += 1
    return frozen
