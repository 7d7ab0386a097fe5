"""The Lightning data module: HDF5 store (converted on the fly from a raw file), split, statistics, loaders.

* A raw source (QM9 tarball, MD17 npz, extxyz, ...) is converted once into a cached store
  ``<cache_dir>/<stem>-<key>.h5`` (default cache_dir: ``<train.out_dir>/cache``); the key hashes the
  source path, size, mtime and the reader options, so a changed file is converted again.
* The store is checked against the config (energy/forces present, source units as configured) before
  anything is trained.
* The split is drawn from ``data.split``/``split_mode`` or read from ``data.split_file``; it is saved as
  ``split.npz`` in the run directory.
* Statistics (per-element atomrefs, per-atom mean and std, eV) come from the training split only.
* Loaders memory-map the store (:class:`~atomnet.data.dataset.StoreDataset`): workers share the page cache.
  Shuffling is a function of (seed, epoch) only, so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from atomnet import keys
from atomnet.data.batch import AtomsBatch
from atomnet.data.dataset import StoreDataset, pass_through
from atomnet.data.splits import Split, check_split, load_split, random_split, save_split
from atomnet.data.store import Store
from atomnet.errors import ConfigError
from atomnet.training.config import Config, DataConfig

#: batch.targets key of the store indices of the molecules of a batch, (n_molecules,) int64.
INDEX = "index"


def is_store(path: str | Path) -> bool:
    return str(path).endswith((".h5", ".hdf5"))


def cached_store(cfg: DataConfig, cache_dir: str | Path, progress: bool = True) -> Path:
    """Path of an HDF5 store for ``cfg.path``: the path itself for a store, else a converted cached copy."""
    src = Path(cfg.path)
    if not src.exists():
        raise FileNotFoundError(f"{src}: data file not found (data.path)")
    if is_store(src):
        return src
    st = src.stat()
    key = f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}|{cfg.format}|{cfg.energy_unit}|{cfg.limit}"
    key += "|skip-incomplete" if cfg.skip_incomplete else ""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = src.name.split(".")[0]
    out = Path(cache_dir) / f"{name}-{digest}.h5"
    if not out.exists():
        from atomnet.data.commands import read_source
        from atomnet.data.store import write_store

        fmt = None if cfg.format == "auto" else cfg.format
        table = read_source(
            str(src),
            fmt,
            limit=cfg.limit,
            energy_unit=cfg.energy_unit,
            progress=progress,
            skip_incomplete=cfg.skip_incomplete,
        )
        write_store(table, out, progress=progress, source=str(src))
    return out


#: how :func:`check_store` names the options in its messages (config keys; the CLI passes its flags)
CONFIG_NAMES = {
    "energy_key": "data.energy_key",
    "energy_unit": "data.energy_unit",
    "forces_key": "data.forces_key",
}


def _setting(option: str, value: str) -> str:
    """How the user sets ``option``: ``pass --energy-unit Hartree`` or ``set data.energy_unit=Hartree``."""
    return f"pass {option} {value}" if option.startswith("--") else f"set {option}={value}"


def check_store(path: str | Path, cfg: DataConfig, need_forces: bool, names: dict | None = None) -> dict:
    """Raise :class:`ConfigError` if the store lacks the configured properties or has other units; messages
    name the option to change (``names``: config keys by default, e.g. ``--energy-unit`` for a command).

    Returns ``{"energy_unit": ..., "n_molecules": ...}`` for the run's records.
    """
    opt = {**CONFIG_NAMES, **(names or {})}
    with Store(path) as store:
        names = store.property_names + store.atom_property_names
        if cfg.energy_key not in store.property_names:
            raise ConfigError(
                f"{opt['energy_key']}: store {path} has no per-molecule property {cfg.energy_key!r}; available: {names}"
            )
        unit, source_unit = store.unit(cfg.energy_key), store.source_unit(cfg.energy_key)
        if unit != "eV":
            raise ConfigError(
                f"{opt['energy_key']}: property {cfg.energy_key!r} of {path} is in {unit!r}, not an energy (eV)"
            )
        if source_unit and source_unit != cfg.energy_unit:
            raise ConfigError(
                f"{opt['energy_unit']}: energies are taken to be in {cfg.energy_unit!r}, but store {path} "
                f"was converted from {source_unit!r} ({cfg.energy_key!r}); {_setting(opt['energy_unit'], source_unit)}"
            )
        if need_forces:
            if cfg.forces_key is None or cfg.forces_key not in store.atom_property_names:
                raise ConfigError(
                    f"{opt['forces_key']}: store {path} has no per-atom forces {cfg.forces_key!r} "
                    f"(available: {names}); set optim.forces_weight=0 and data.forces_key=null to train on "
                    "energies only"
                )
            f_unit = store.unit(cfg.forces_key)
            if f_unit != "eV/Angstrom":
                raise ConfigError(
                    f"{opt['forces_key']}: {cfg.forces_key!r} of {path} is in {f_unit!r}, not eV/Å"
                )
            f_src = store.source_unit(cfg.forces_key)
            expected = {f"{cfg.energy_unit}/{u}" for u in ("Angstrom", "Å", "A")}
            if f_src and f_src not in expected:
                raise ConfigError(
                    f"{opt['energy_unit']}: forces in {path} were converted from {f_src!r}, expected "
                    f"{cfg.energy_unit}/Angstrom"
                )
        return {"energy_unit": source_unit or cfg.energy_unit, "n_molecules": store.n_molecules}


#: QM9 properties that are intensive (mean readout) unless ``data.intensive`` says otherwise
INTENSIVE = ("homo", "lumo", "gap")


def cache_dir_of(cfg: Config) -> str:
    return cfg.data.cache_dir or str(Path(cfg.train.out_dir).resolve() / "cache")


def resolve_targets(cfg: Config, progress: bool = True) -> list[dict]:
    """For several targets (``data.targets``): match the names to the store's per-molecule properties
    (case-insensitively), set ``data.targets``/``data.intensive`` to the store's names and ``data.energy_key``
    to the first, and return the extra targets as model ``properties`` [{"name", "reduce"}].

    Raises :class:`ConfigError` naming a target the store does not have (with the available names)."""
    d = cfg.data
    if d.targets is None:
        return []
    store = cached_store(d, cache_dir_of(cfg), progress)
    with Store(store) as s:
        available = [n for n in s.property_names if not s.is_per_atom(n)]
    by_lower = {n.lower(): n for n in available}
    resolved = []
    for t in d.targets:
        if t.lower() not in by_lower:
            raise ConfigError(
                f"data.targets: store {store} has no per-molecule property {t!r}; available: {available}"
            )
        resolved.append(by_lower[t.lower()])
    wanted = [t.lower() for t in d.intensive] if d.intensive is not None else list(INTENSIVE)
    d.targets = resolved
    d.intensive = [t for t in resolved if t.lower() in wanted]
    d.energy_key = resolved[0]
    return [{"name": t, "reduce": "mean" if t in d.intensive else "sum"} for t in resolved[1:]]


def make_split(cfg: DataConfig, n: int, seed: int) -> Split:
    """The split of a store of ``n`` molecules: from ``split_file``, or ``split`` + ``split_mode``."""
    if cfg.split_file is not None:
        return load_split(cfg.split_file, n)
    try:
        if cfg.split_mode == "sequential":
            from atomnet.data.splits import _resolve_sizes

            a, b, c = _resolve_sizes(n, cfg.split)
            idx = np.arange(n, dtype=np.int64)
            split = Split(idx[:a], idx[a : a + b], idx[a + b : a + b + c], seed=-1)
        else:
            split = random_split(n, cfg.split, seed=cfg.split_seed if cfg.split_seed is not None else seed)
    except ValueError as exc:
        raise ConfigError(f"data.split: {exc}") from None
    return check_split(split, n)


class EpochSampler(Sampler[int]):
    """Random permutation that depends only on (seed, epoch); Lightning calls :meth:`set_epoch`.

    In a distributed run (``world`` processes) process ``rank`` takes every ``world``-th index of the same
    order, so the processes' k-th batches together are the k-th batch of one process with a ``world`` times
    larger batch. ``pad`` (training) repeats the first indices so every process gets as many; without it
    (validation, test) every index is seen exactly once and the shards differ in length by at most one.
    """

    def __init__(
        self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1, pad: bool = True
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside 0..{world - 1}")
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.rank, self.world, self.pad = rank, world, pad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world)
        return len(range(self.rank, self.n, self.world))

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        if self.world == 1:
            return iter(order)
        if self.pad and self.n:
            total = len(self) * self.world
            order = (order * (total // self.n + 1))[:total]
        return iter(order[self.rank :: self.world])


class TrainingDataset(StoreDataset):
    """A :class:`StoreDataset` whose batches carry the store indices (``targets["index"]``) and use
    :data:`atomnet.keys.FORCES` for the configured forces property."""

    forces_key: str | None = None

    def __getitems__(self, indices: Sequence[int]) -> AtomsBatch:
        batch = super().__getitems__(indices)
        if self.forces_key and self.forces_key != keys.FORCES and self.forces_key in batch.targets:
            batch.targets[keys.FORCES] = batch.targets.pop(self.forces_key)
        batch.targets[INDEX] = torch.from_numpy(self.indices[np.asarray(indices, dtype=np.int64)])
        return batch


def open_dataset(
    store: str | Path,
    cutoff: float,
    energy_key: str,
    forces_key: str | None,
    indices=None,
    dtype: torch.dtype = torch.float32,
    properties: Sequence[str] = (),
) -> TrainingDataset:
    """A dataset over ``store`` yielding batches with ``energy`` (and ``forces``) targets in eV, eV/Å, and
    the extra target ``properties`` under their own names (internal units)."""
    targets = [energy_key] + list(properties) + ([forces_key] if forces_key else [])
    ds = TrainingDataset(store, cutoff, targets=targets, indices=indices, dtype=dtype, energy_key=energy_key)
    ds.forces_key = forces_key
    return ds


class StoreDataModule(pl.LightningDataModule):
    """Train/val/test loaders over an HDF5 store, as configured by ``cfg.data``.

    Call :meth:`prepare` once (it converts, checks, splits and computes statistics) before training;
    Lightning's hooks then only build loaders.
    """

    def __init__(self, cfg: Config, cutoff: float, run_dir: str | Path | None = None, progress: bool = True):
        super().__init__()
        self.cfg = cfg
        self.cutoff = cfg.data.cutoff if cfg.data.cutoff is not None else cutoff
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.store_path: Path | None = None
        self.split: Split | None = None
        self.info: dict = {}
        self.dtype = torch.float64 if cfg.train.precision == 64 else torch.float32

    @property
    def need_forces(self) -> bool:
        return self.cfg.optim.forces_weight > 0

    def prepare(self, split: Split | None = None) -> None:
        """Convert (if needed), check the store against the config, split (or take ``split``), save the split."""
        d = self.cfg.data
        self.store_path = cached_store(d, cache_dir_of(self.cfg), self.progress)
        self.info = check_store(self.store_path, d, self.need_forces)
        n = self.info["n_molecules"]
        self.split = check_split(split, n) if split is not None else make_split(d, n, self.cfg.train.seed)
        if len(self.split.train) == 0 or len(self.split.val) == 0:
            raise ConfigError(
                f"data.split: need at least one training and one validation molecule, got {self.split.sizes()}"
            )
        if self.run_dir is not None:
            save_split(self.run_dir / "split.npz", self.split)

    @property
    def properties(self) -> list[str]:
        """The extra targets (``data.targets`` after the first)."""
        return list(self.cfg.data.targets[1:]) if self.cfg.data.targets else []

    def property_units(self) -> dict[str, str]:
        """Internal unit of every extra target, from the store."""
        if not self.properties:
            return {}
        with Store(self.store_path) as store:
            return {name: store.unit(name) for name in self.properties}

    def reduce_of(self, name: str) -> str:
        return "mean" if name in (self.cfg.data.intensive or []) else "sum"

    def target_statistics(self, name: str, max_z: int) -> tuple[np.ndarray | None, float, float, float]:
        """(atomref, mean, std, spread) of target ``name`` on the training split (:func:`atomnet.data.stats.target_statistics`)."""
        assert self.store_path is not None and self.split is not None, "call prepare() first"
        from atomnet.data.stats import target_statistics

        return target_statistics(
            self.store_path, name, self.split.train, max_z, self.reduce_of(name), self.cfg.data.atomrefs
        )

    def statistics(self, max_z: int) -> tuple[np.ndarray | None, float, float]:
        """(atomref (max_z+1,) eV or None, per-atom mean eV, per-atom std eV) of the training split."""
        from atomnet.data.stats import fit_atomrefs, mean_energy_per_atom

        assert self.store_path is not None and self.split is not None, "call prepare() first"
        key, idx = self.cfg.data.energy_key, self.split.train
        if self.cfg.data.targets is not None:  # several targets: the first may be intensive
            return self.target_statistics(key, max_z)[:3]
        if self.cfg.data.atomrefs == "fit":
            atomref, mean, std = fit_atomrefs(self.store_path, key, idx, max_z=max_z)
            return atomref, mean, max(std, 1e-3)
        mean = mean_energy_per_atom(self.store_path, key, idx)
        with Store(self.store_path) as store:
            e = store.property(key)[idx] / store.n_atoms[idx]
        return None, mean, max(float(np.std(e)), 1e-3)

    def dataset(self, part: str) -> TrainingDataset:
        assert self.store_path is not None and self.split is not None, "call prepare() first"
        d = self.cfg.data
        fk = d.forces_key if self.need_forces or part != "train" else None
        if fk is not None:
            with Store(self.store_path) as store:
                fk = fk if fk in store.atom_property_names else None
        return open_dataset(
            self.store_path, self.cutoff, d.energy_key, fk, self.split[part], self.dtype, self.properties
        )

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(part)
        d = self.cfg.data
        bs = d.batch_size if part == "train" else (d.val_batch_size or d.batch_size)
        trainer = getattr(self, "trainer", None)
        if part == "train" and trainer is not None:  # batch_growth: rebuilt each epoch with its batch size
            from atomnet.training.schedules import batch_and_lr_scale

            bs = batch_and_lr_scale(self.cfg.optim, bs, trainer.current_epoch)[0]
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if world > len(ds):
            raise ConfigError(f"{part} split: {len(ds)} molecules for {world} processes (need >= 1 each)")
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=EpochSampler(len(ds), self.cfg.train.seed, shuffle, rank, world, pad=part == "train"),
            collate_fn=pass_through,
            num_workers=d.num_workers,
            persistent_workers=d.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
