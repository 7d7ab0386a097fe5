"""``atomnet train``: train a model from a YAML config.

    atomnet train configs/quickstart.yaml
    atomnet train configs/schnet_md17_ethanol.yaml --set optim.lr=5e-4 --set model.n_interactions=6
    atomnet train --resume runs/quickstart/last.ckpt --set train.max_epochs=200

``--set section.key=value`` overrides any config field (value parsed as YAML). ``--resume`` continues a run
exactly (weights, optimiser, scheduler, epoch, data order) from a checkpoint, with the config stored in it
(overrides apply on top) and the run's saved ``split.npz``.

A run directory (``train.out_dir/train.name``) holds ``config.yaml`` (resolved), ``split.npz``,
``best.ckpt``, ``last.ckpt``, ``logs/`` (CSV metrics per epoch), and after training ``model.pt`` (exported
best model with metadata), ``test/metrics.json``, ``test/parity.png`` and ``test/errors.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch

from atomnet.errors import ConfigError
from atomnet.training.config import Config, apply_overrides, config_from_dict, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (see configs/); optional with --resume")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=5e-4 (repeatable)",
    )
    parser.add_argument("--resume", metavar="CKPT", help="continue training from a checkpoint (last.ckpt)")
    parser.add_argument("--run-dir", help="run directory (default: train.out_dir/train.name, made unique)")
    parser.add_argument(
        "--overwrite", action="store_true", help="train into a --run-dir that holds another run (replaces it)"
    )


def _unique_dir(base: Path) -> Path:
    """``base``, else ``base-2``, ``base-3`` ...: the first that did not exist, created atomically, so two
    trainings started at the same time never share a folder."""
    base.parent.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        path = base if k == 1 else Path(f"{base}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            k += 1


#: files that mark a folder as holding a run
RUN_FILES = ("config.yaml", "last.ckpt", "best.ckpt", "model.pt", "summary.json")


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a ``--run-dir`` that holds another run, unless ``overwrite``."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not overwrite:
        raise ConfigError(
            f"{run_dir} holds another run ({', '.join(found)}); choose another --run-dir, continue it with "
            f"--resume {run_dir / 'last.ckpt'}, or pass --overwrite"
        )


def resume_config(ckpt: str | Path, overrides: list[str] | None = None) -> Config:
    """The config stored in a checkpoint, with ``overrides`` applied."""
    from atomnet.errors import AtomNetError
    from atomnet.loading import CHECKPOINT_KEY, read_safely

    if not Path(ckpt).is_file():
        raise AtomNetError(f"{ckpt}: checkpoint not found (--resume)")
    try:
        content = read_safely(ckpt)
    except AtomNetError as exc:  # e.g. cut short by a full disk or a copy; atomnet's own writes are atomic
        raise AtomNetError(
            f"--resume: {exc} (a truncated or corrupt checkpoint; resume from another one, e.g. best.ckpt)"
        ) from None
    info = content.get(CHECKPOINT_KEY)
    if not isinstance(info, dict) or "config" not in info:
        raise AtomNetError(f"{ckpt}: not an atomnet training checkpoint (no stored config)")
    return config_from_dict(apply_overrides(info["config"], overrides))


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    quiet: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train as configured; returns a summary dict (run_dir, best/last checkpoints, model file, metrics).

    Raises :class:`~atomnet.errors.ConfigError` for data that do not match the config before the first step,
    and :class:`~atomnet.training.lightning_module.NonFiniteLossError` if the loss becomes NaN/inf.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from atomnet.data.splits import load_split
    from atomnet.models import build_model
    from atomnet.potential import Potential
    from atomnet.training.checkpoints import AtomicCheckpointIO, ExactResume
    from atomnet.training.datamodule import StoreDataModule, resolve_targets
    from atomnet.training.finetune import freeze, pretrained_start
    from atomnet.training.lightning_module import PotentialModule

    t0 = time.perf_counter()
    _quiet_lightning()
    t = cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    shared = os.environ.get(RUN_DIR_ENV)  # a process started by Lightning's DDP launcher: the parent's run
    if shared:
        run_dir = Path(shared)
    elif resume is not None:
        run_dir = Path(run_dir) if run_dir else Path(resume).resolve().parent
    elif run_dir is None and launched_world_size() > 1:  # torchrun / srun: every process must agree
        run_dir = Path(t.out_dir) / t.name
    elif run_dir is not None:
        run_dir = Path(run_dir)
        check_run_dir(run_dir, overwrite)
    else:
        run_dir = _unique_dir(Path(t.out_dir) / t.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    properties = resolve_targets(cfg, progress=not quiet)  # several targets: names from the store
    if cfg.data.targets is not None:
        cfg.model.hparams["properties"] = properties or None
        if cfg.data.targets[0] in cfg.data.intensive:
            cfg.model.hparams["reduce"] = "mean"
    pretrained = pretrained_start(cfg)  # fine-tuning: the architecture comes from the pretrained model
    if launched_rank_zero():
        cfg.save(run_dir / "config.yaml")

    pl.seed_everything(t.seed, workers=True, verbose=False)
    model = build_model(cfg.model.name, **cfg.model.hparams)
    if pretrained is not None:
        model.load_state_dict(pretrained.state_dict())
    dm = StoreDataModule(cfg, model.cutoff, run_dir, progress=not quiet)
    split_file = run_dir / "split.npz"
    dm.prepare(load_split(split_file) if resume is not None and split_file.exists() else None)
    atomref, mean, std = dm.statistics(model.max_z)
    refit = pretrained is None or cfg.model.refit_statistics
    if refit:
        model.set_statistics(mean, std, atomref)
    spreads = {}
    if cfg.data.targets is not None:
        for name in cfg.data.targets:
            ref, m, sd, spreads[name] = dm.target_statistics(name, model.max_z)
            if name in dm.properties and refit:
                model.head(name).standardize.set(m, sd, ref)
    freeze(model, cfg.model.freeze)
    fresh = resume is None and pretrained is None
    if hasattr(model, "set_input_statistics") and fresh:  # e.g. CMNet's per-entry standardisation
        train = dm.dataset("train")
        model.set_input_statistics(train.__getitems__(list(range(min(len(train), 2000)))))
    module = PotentialModule(Potential(model), cfg, spreads)

    checkpoint = ModelCheckpoint(
        dirpath=run_dir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning's save_last only writes when the best improves; a monitor-less callback writes every epoch
    last = ModelCheckpoint(dirpath=run_dir, filename="last", save_top_k=1, enable_version_counter=False)
    callbacks = [checkpoint, last, ExactResume(t.seed)]
    if t.early_stopping > 0:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=t.early_stopping, mode="min"))
    trainer = pl.Trainer(
        max_epochs=t.max_epochs,
        max_time=datetime.timedelta(minutes=t.max_time) if t.max_time else None,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        use_distributed_sampler=False,  # EpochSampler shards itself: no padded duplicates in val/test
        # batch_growth: the training loader is rebuilt every epoch with that epoch's batch size
        reload_dataloaders_every_n_epochs=1 if cfg.optim.scheduler == "batch_growth" else 0,
        precision="64-true" if t.precision == 64 else "32-true",
        gradient_clip_val=cfg.optim.grad_clip,
        callbacks=callbacks,
        logger=_logger(t.logger, run_dir),
        inference_mode=False,
        enable_progress_bar=t.progress_bar and not quiet,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],  # a kill while writing never leaves a truncated last.ckpt
    )
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes the DDP launcher starts
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume is not None else None)
    finally:
        if not shared:
            os.environ.pop(RUN_DIR_ENV, None)
    train_s = time.perf_counter() - t0

    summary = {
        "run_dir": str(run_dir),
        "best_checkpoint": checkpoint.best_model_path,
        "last_checkpoint": str(run_dir / "last.ckpt"),
        "epochs": trainer.current_epoch,
        "optimizer_steps": trainer.global_step,
        "train_seconds": round(train_s, 1),
        "world_size": trainer.world_size,
        "batch_size_per_process": cfg.data.batch_size,
        "global_batch_size": cfg.data.batch_size * trainer.world_size,
    }
    if not trainer.is_global_zero:  # evaluation, model file and summary: written once, by rank 0
        return {**summary, "rank": trainer.global_rank}
    summary.update(
        finish(cfg, dm, checkpoint.best_model_path or str(run_dir / "last.ckpt"), run_dir, train_s)
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


#: environment variable that hands the run directory to the processes of a distributed run
RUN_DIR_ENV = "ATOMNET_RUN_DIR"


def launched_rank_zero() -> bool:
    """Whether this process is rank 0 of its run (or the only process), from the launchers' variables."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def launched_world_size() -> int:
    """Processes of a run started by torchrun (``WORLD_SIZE``) or SLURM's srun (``SLURM_NTASKS``), else 1."""
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def _logger(kind: str, run_dir: Path):
    """Per-epoch metrics logger: CSV (default) or TensorBoard, under ``<run_dir>/logs``."""
    from pytorch_lightning.loggers import CSVLogger

    if kind == "tensorboard":
        try:
            from pytorch_lightning.loggers import TensorBoardLogger

            return TensorBoardLogger(run_dir, name="logs")
        except ModuleNotFoundError as exc:
            from atomnet.errors import ConfigError

            raise ConfigError(f"train.logger: tensorboard is not installed ({exc}); use csv") from None
    return CSVLogger(run_dir, name="logs")


def _quiet_lightning() -> None:
    """Hide Lightning's tips and warnings that do not apply to atomnet's runs."""
    import logging
    import warnings

    for pattern in (
        "exists and is not empty",
        "LeafSpec",
        "transfer_batch_to_device",
        "smaller than the logging interval",
        "does not have many workers",
    ):
        warnings.filterwarnings("ignore", message=f".*{pattern}.*")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


def finish(cfg: Config, dm, best: str, run_dir: Path, train_s: float) -> dict:
    """Evaluate the best checkpoint on the test split (validation split if the test split is empty),
    write metrics and plots, and export it as an atomnet model file ``model.pt`` with metadata."""
    from atomnet.loading import load_potential
    from atomnet.models import save_model
    from atomnet.training.evaluate import evaluate

    potential, meta = load_potential(best)
    part = "test" if len(dm.split.test) else "val"
    ds = dm.dataset(part)
    metrics, paths = evaluate(
        potential.to(dm.dtype),
        ds,
        run_dir / part,
        title=f"{cfg.model.name} {part} set",
        plots=cfg.train.plots,
        units=dm.property_units(),
    )
    model_meta = {
        "dataset": cfg.data.path,
        "energy_key": cfg.data.energy_key,
        "source_energy_unit": cfg.data.energy_unit,
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom", **dm.property_units()},
        "targets": cfg.data.targets,
        "split_sizes": {k: int(len(dm.split[k])) for k in ("train", "val", "test")},
        "split_mode": cfg.data.split_mode if cfg.data.split_file is None else f"file {cfg.data.split_file}",
        "evaluated_on": part,
        f"{part}_metrics": metrics,
        "best_epoch": meta.get("epoch"),
        "train_seconds": round(train_s, 1),
        "config": cfg.to_dict(),
    }
    model_file = save_model(potential.model.float(), run_dir / "model.pt", meta=model_meta)
    return {
        "evaluated_on": part,
        "metrics": metrics,
        "model_file": str(model_file),
        **{f"{k}_file": str(v) for k, v in paths.items()},
    }


def run(args: argparse.Namespace) -> int:
    from atomnet.errors import ConfigError
    from atomnet.training.evaluate import format_metrics

    if args.resume is not None:
        cfg = resume_config(args.resume, args.overrides)
    elif args.config is None:
        raise ConfigError("atomnet train needs a config file (or --resume CKPT)")
    else:
        cfg = load_config(args.config, args.overrides)
    s = train(cfg, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite)
    if "rank" in s:  # a process of a distributed run other than rank 0: rank 0 reports
        return 0
    m = s["metrics"]
    print(format_metrics(m, f"{s['evaluated_on']} set, best checkpoint ({s['best_checkpoint']}):"))
    line = f"{s['evaluated_on']} MAE: energy {m['energy_mae_eV'] * 1000:.2f} meV ({m['energy_mae_kcal/mol']:.3f} kcal/mol)"
    if "forces_mae_eV/A" in m:
        line += (
            f", forces {m['forces_mae_eV/A'] * 1000:.2f} meV/Å ({m['forces_mae_kcal/mol/A']:.3f} kcal/mol/Å)"
        )
    print(line)
    print(f"trained {s['epochs']} epochs in {s['train_seconds']:.0f} s; model: {s['model_file']}")
    if "parity_file" in s:
        print(f"parity plot: {s['parity_file']}")
    return 0
