"""Training configuration: flat YAML sections mapped onto dataclasses, validated with clear messages.

A config file has four sections (every field has a default, see the dataclasses below)::

    model:   {name: schnet, n_interactions: 3, ...}     # name + the model's constructor arguments
    data:    {path: ../data/ethanol_xtb.extxyz, energy_unit: eV, split: [1000, 100, 100], ...}
    optim:   {optimizer: adamw, lr: 5.0e-4, scheduler: plateau, ...}
    train:   {seed: 0, max_epochs: 100, max_time: 10, out_dir: runs, ...}

Any field can be overridden on the command line with ``--set section.key=value`` (value parsed as YAML,
e.g. ``--set optim.lr=5e-4 --set data.split=[100,20,20]``). Unknown keys and wrong types raise
:class:`~atomnet.errors.ConfigError` naming the key (``optim.lr: expected a number, got 'fast'``).

Relative paths in ``data.path``/``data.split_file`` are resolved against the directory of the config file;
if nothing exists there, against the current working directory. The resolved config (absolute paths) is
saved next to the checkpoints as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from atomnet.errors import ConfigError


@dataclass
class ModelConfig:
    """``name``: a registered model (``schnet``, ``dtnn``); ``hparams``: its constructor arguments.

    In YAML the hyperparameters sit next to ``name`` (``model: {name: schnet, n_interactions: 6}``).

    Fine-tuning: ``init_from`` (a pretrained name, model file or checkpoint) starts from those weights; the
    architecture (name and hyperparameters) is taken from it, and any the config also gives must agree.
    ``refit_statistics``: fit the output mean/std and per-element reference energies on the new training data
    (``true``, needed when the new labels have another reference, e.g. another level of theory) or keep the
    pretrained ones (``false``). ``freeze``: parameter-name prefixes that are not trained, e.g.
    ``[embedding, interactions.0]`` (SchNet's embedding and first interaction block).
    """

    name: str = "schnet"
    hparams: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    refit_statistics: bool = True
    freeze: list[str] = field(default_factory=list)


#: keys of the model section that are not constructor arguments of the model
FINE_TUNING = {"init_from": str, "refit_statistics": bool, "freeze": list[str]}


@dataclass
class DataConfig:
    """Where the data come from and how they are split and batched.

    path: an atomnet HDF5 store (``.h5``) or a raw file converted on the fly into a cached store
        (QM9 tarball, MD17/rMD17 npz, extxyz/ASE file); format: reader name or ``auto``.
    energy_key / forces_key: property names in the store (``forces_key: null`` trains on energies only).
    energy_unit: unit of the energies in the *source* file (eV, kcal/mol, Hartree); forces are in
        ``energy_unit``/Å. For a store it must match the store's recorded source unit.
    limit: use only the first N molecules of a raw file (``null``: all).
    split: (n_train, n_val, n_test) counts or fractions; split_mode ``random`` (seeded by ``split_seed``,
        default ``train.seed``) or ``sequential`` (first n_train frames, then n_val, then n_test);
        split_file: an ``.npz`` split (:mod:`atomnet.data.splits`) that replaces ``split``.
    cutoff: neighbour cutoff in Å (``null``: the model's cutoff). batch_size: molecules per batch.
    atomrefs: ``fit`` per-element reference energies on the training split, or ``none`` (mean only).
    targets: several properties at once (multitask), e.g. ``[U0, homo, lumo, gap]`` (names matched to the
        store's case-insensitively): the first is trained like ``energy_key`` (which it replaces; forces
        belong to it), every other one gets its own output head (``model.properties``). ``null``: one target.
    skip_incomplete: a raw extxyz/ASE file whose frames do not all carry the energy and forces: keep the
        frames that do (``false``: an error naming the first frame without them).
    intensive: targets with a mean readout instead of the sum over atoms (default: QM9's homo, lumo and gap
        among the targets); their standardisation uses the mean and std of the molecular values.
    """

    path: str = "data/ethanol_xtb.extxyz"
    format: str = "auto"
    energy_key: str = "energy"
    forces_key: str | None = "forces"
    energy_unit: str = "eV"
    limit: int | None = None
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_mode: str = "random"
    split_seed: int | None = None
    split_file: str | None = None
    cutoff: float | None = None
    batch_size: int = 32
    val_batch_size: int | None = None
    num_workers: int = 0
    atomrefs: str = "fit"
    cache_dir: str | None = None
    targets: list[str] | None = None
    intensive: list[str] | None = None
    skip_incomplete: bool = False


@dataclass
class OptimConfig:
    """Optimiser, schedule and loss.

    Loss = energy_weight · MSE(E) + forces_weight · MSE(F), in eV² and (eV/Å)². With several targets
    (``data.targets``) each extra target p adds energy_weight · w_p · (σ_E/σ_p)² · MSE(p): its error in units of
    its training spread σ_p, weighted like the first target; ``target_weights`` {name: w_p} (default 1).
    scheduler: ``plateau`` (ReduceLROnPlateau on val_loss: plateau_factor, plateau_patience epochs),
    ``cosine`` (per step, down to min_lr), ``step`` (lr divided by step_factor at each epoch in milestones),
    ``batch_growth`` (the training batch multiplied by step_factor at each milestone instead, Smith et al. 2017;
    beyond max_batch_size the rest of the factor divides the lr; :mod:`atomnet.training.schedules`) or
    ``none``; warmup_steps: linear warm-up from 0.
    ema_decay: exponential moving average of the weights used for validation/export (``null``: off).
    """

    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    milestones: list[int] = field(default_factory=list)
    step_factor: float = 5.0
    max_batch_size: int | None = None
    min_lr: float = 1e-6
    warmup_steps: int = 0
    grad_clip: float | None = 10.0
    ema_decay: float | None = None
    energy_weight: float = 0.01
    forces_weight: float = 0.99
    target_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Run control. max_time in minutes (``null``: no limit), counted over resumes (the timer is restored from the
    checkpoint); early_stopping: patience in epochs (0: off).

    precision: 32 or 64. num_threads: torch CPU threads (``null``: torch's default).
    out_dir/name: the run directory is ``out_dir/name`` (``-2``, ``-3`` ... appended if it exists).
    logger: ``csv`` (``<run>/logs/version_k/metrics.csv``) or ``tensorboard`` (needs the tensorboard package).
    accelerator, devices, num_nodes, strategy: Lightning's names (``strategy: ddp`` with ``devices: 2`` trains
    in two processes; ``data.batch_size`` is per process, so the global batch is batch_size × devices ×
    num_nodes). Validation and test metrics cover every molecule exactly once whatever the process count.
    """

    seed: int = 0
    max_epochs: int = 100
    max_time: float | None = None
    early_stopping: int = 0
    precision: int = 32
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_threads: int | None = None
    out_dir: str = "runs"
    name: str = "run"
    progress_bar: bool = True
    logger: str = "csv"
    log_every_n_steps: int = 50
    check_val_every_n_epoch: int = 1
    plots: bool = True


@dataclass
class Config:
    """A complete, resolved training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Flat YAML form (model hparams next to ``name``)."""
        d = asdict(self)
        d["model"] = {"name": self.model.name, **self.model.hparams}
        if self.model.init_from is not None:
            d["model"].update(
                init_from=self.model.init_from,
                refit_statistics=self.model.refit_statistics,
                freeze=list(self.model.freeze),
            )
        return d

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}
CHOICES = {
    "data.split_mode": ("random", "sequential"),
    "data.atomrefs": ("fit", "none"),
    "optim.optimizer": ("adam", "adamw"),
    "optim.scheduler": ("plateau", "cosine", "step", "batch_growth", "none"),
    "train.precision": (32, 64),
    "train.logger": ("csv", "tensorboard"),
    "train.accelerator": ("cpu", "gpu", "cuda", "mps", "auto"),
    "train.strategy": ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"),
}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _check_value(key: str, value: Any, tp) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats. Returns the value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(key, value, a)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: unexpected value {value!r}")
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):  # YAML reads 5e-4 (no dot) as a string
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    if math.isfinite(number):
                        return number
                    raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}"[:300])
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _model_hparams(name: str, hparams: dict) -> dict:
    """Check model hyperparameters against the registered model's constructor signature."""
    from atomnet.models import MODELS

    if name.lower() not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; registered: {sorted(MODELS)}")
    init = MODELS[name.lower()].__init__
    params = {k: p for k, p in inspect.signature(init).parameters.items() if k != "self"}
    hints = typing.get_type_hints(init)
    out = {}
    for key, value in hparams.items():
        if key not in params:
            raise ConfigError(f"model.{key}: unknown hyperparameter of {name!r}; known: {sorted(params)}")
        out[key] = _check_value(f"model.{key}", value, hints.get(key, Any))
    return out


def config_from_dict(raw: dict | None) -> Config:
    """Validate a nested dict (as read from YAML) and build a :class:`Config`."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config: expected a mapping of sections {sorted(SECTIONS)}, got {type(raw).__name__}"
        )
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section; known: {sorted(SECTIONS)}")
    cfg = Config()
    if not isinstance(raw.get("model") or {}, dict):
        raise ConfigError("model: expected a mapping")
    model_raw = dict(raw.get("model") or {})
    name = _check_value("model.name", model_raw.pop("name", "schnet"), str)
    nested = model_raw.pop("hparams", {}) or {}
    if not isinstance(nested, dict):
        raise ConfigError(f"model.hparams: expected a mapping, got {nested!r}"[:300])
    tuning = {
        k: _check_value(f"model.{k}", model_raw.pop(k), tp) for k, tp in FINE_TUNING.items() if k in model_raw
    }
    cfg.model = ModelConfig(name.lower(), _model_hparams(name, {**nested, **model_raw}), **tuning)
    if cfg.model.init_from is None and (cfg.model.freeze or "refit_statistics" in tuning):
        raise ConfigError("model.freeze / model.refit_statistics need model.init_from (a pretrained model)")
    for section in ("data", "optim", "train"):
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a mapping, got {values!r}")
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{section}.{key}: unknown key; known: {sorted(known)}")
            kwargs[key] = _check_value(f"{section}.{key}", value, hints[key])
            allowed = CHOICES.get(f"{section}.{key}")
            if allowed is not None and kwargs[key] not in allowed:
                raise ConfigError(f"{section}.{key}: expected one of {list(allowed)}, got {value!r}")
        setattr(cfg, section, cls(**kwargs))
    targets = cfg.data.targets
    if targets is not None:
        if not targets:
            raise ConfigError("data.targets: expected at least one property name, got []")
        lowered = [t.lower() for t in targets]
        if len(set(lowered)) != len(lowered):
            raise ConfigError(f"data.targets: repeated names in {targets}")
        for name, w in cfg.optim.target_weights.items():
            if name.lower() not in lowered:
                raise ConfigError(f"optim.target_weights: {name!r} is not one of data.targets {targets}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"optim.target_weights.{name}: expected a number >= 0, got {w!r}")
        for name in cfg.data.intensive or []:
            if name.lower() not in lowered:
                raise ConfigError(f"data.intensive: {name!r} is not one of data.targets {targets}")
    elif cfg.optim.target_weights or cfg.data.intensive:
        raise ConfigError("optim.target_weights / data.intensive need data.targets (several targets)")
    elif cfg.model.hparams.get("properties"):
        raise ConfigError(
            "model.properties: list the targets in data.targets instead (the heads follow from it)"
        )
    o = cfg.optim
    if o.scheduler in ("step", "batch_growth"):
        if not o.milestones or any(m < 1 for m in o.milestones) or sorted(set(o.milestones)) != o.milestones:
            raise ConfigError(
                f"optim.milestones: {o.scheduler} needs increasing epochs >= 1, e.g. [30, 60]; got {o.milestones}"
            )
        if not o.step_factor > 1:
            raise ConfigError(f"optim.step_factor: expected a number > 1, got {o.step_factor}")
    if o.max_batch_size is not None and o.max_batch_size < cfg.data.batch_size:
        raise ConfigError(
            f"optim.max_batch_size: {o.max_batch_size} is below data.batch_size {cfg.data.batch_size}"
        )
    for key in ("devices", "num_nodes"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key}: expected an integer >= 1, got {getattr(cfg.train, key)}")
    if cfg.train.strategy == "auto" and cfg.train.devices * cfg.train.num_nodes > 1:
        raise ConfigError("train.devices/num_nodes > 1 need train.strategy: ddp (or ddp_spawn)")
    if len(cfg.data.split) != 3:
        raise ConfigError(f"data.split: expected [n_train, n_val, n_test], got {cfg.data.split}")
    if any(s > 1 for s in cfg.data.split):  # counts
        if any(s != int(s) for s in cfg.data.split):
            raise ConfigError(f"data.split: mix of counts and fractions {cfg.data.split}")
        cfg.data.split = [int(s) for s in cfg.data.split]
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=5e-4"`` → (["optim", "lr"], 5e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: the key must be section.key (e.g. optim.lr)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {value!r} ({exc})") from None
    return parts, parsed


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``--set section.key=value`` overrides to a raw config dict (a copy is returned)."""
    if not isinstance(raw or {}, dict):
        raise ConfigError(
            f"config: expected a mapping of sections {sorted(SECTIONS)}, got {type(raw).__name__}"
        )
    for k, v in (raw or {}).items():
        if not isinstance(v or {}, dict):
            raise ConfigError(f"{k}: expected a mapping, got {v!r}"[:300])
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides or []:
        (section, key), value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(
                f"--set {section}.{key}: unknown section {section!r}; known: {sorted(SECTIONS)}"
            )
        raw.setdefault(section, {})[key] = value
    return raw


def _resolve_path(value: str | None, base: Path | None) -> str | None:
    """Absolute path: relative to ``base`` (the config file's folder) if it exists there, else to cwd."""
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return str(p)
    if base is not None and (base / p).exists():
        return str((base / p).resolve())
    return str(p.resolve())


def _read_yaml(path: Path):
    """The YAML document of ``path``; a one-line :class:`ConfigError` naming the file (and the line, where
    known) for text that is not UTF-8, not YAML, or holds a value YAML cannot build (a date like 2001-13-01)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path} (line {line}): not UTF-8 text ({exc.reason})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = " ".join(str(exc).strip().split("\n")[0].split())  # yaml adds the place on its own lines
        where = ""
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
            problem = " ".join(f"{exc.context or ''} {exc.problem or ''}".split()) or problem
        elif isinstance(getattr(exc, "position", None), int):  # a character YAML does not allow
            where = f" (line {text.count(chr(10), 0, exc.position) + 1})"
        raise ConfigError(f"{path}{where}: not valid YAML ({problem or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - yaml's constructors raise ValueError, TypeError, ... for odd values
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__}: {reason})") from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or defaults if ``path`` is None), apply overrides, validate, resolve paths."""
    raw: dict = {}
    base = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        raw = _read_yaml(path)
        base = path.resolve().parent
    try:
        cfg = config_from_dict(apply_overrides(raw, overrides))
    except ConfigError as exc:  # name the file (the message names the key)
        if path is None or str(exc).startswith("--set"):
            raise
        raise ConfigError(f"{path}{' (with --set overrides)' if overrides else ''}: {exc}") from None
    cfg.data.path = _resolve_path(cfg.data.path, base)
    cfg.data.split_file = _resolve_path(cfg.data.split_file, base)
    cfg.data.cache_dir = _resolve_path(cfg.data.cache_dir, base)
    if cfg.model.init_from is not None:  # a pretrained name stays a name; a file is resolved like data.path
        from atomnet.pretrained import list_models

        if cfg.model.init_from not in {m["name"] for m in list_models()}:
            cfg.model.init_from = _resolve_path(cfg.model.init_from, base)
    return cfg


def replace(cfg: Config, **sections) -> Config:
    """A copy of ``cfg`` with whole sections replaced."""
    return dataclasses.replace(cfg, **sections)
