"""Epoch schedules: ``step`` divides the learning rate at milestones, ``batch_growth`` multiplies the batch
size instead (Smith et al. 2017), with the learning rate taking over beyond ``max_batch_size``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from atomnet.data.ase_io import read_ase
from atomnet.data.store import write_store
from atomnet.errors import ConfigError
from atomnet.training.commands import train
from atomnet.training.config import config_from_dict
from atomnet.training.schedules import batch_and_lr_scale, stage

XTB = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"
pytestmark = pytest.mark.usefixtures("one_thread")


def optim(**kw):
    return config_from_dict({"optim": kw, "data": {"batch_size": 4}}).optim


def test_stage_and_scales():
    assert [stage(e, [2, 4]) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    o = optim(scheduler="step", milestones=[2, 4], step_factor=5)
    assert [batch_and_lr_scale(o, 4, e) for e in (0, 2, 5)] == [(4, 1.0), (4, 0.2), (4, pytest.approx(0.04))]
    o = optim(scheduler="batch_growth", milestones=[2, 4], step_factor=5)
    assert [batch_and_lr_scale(o, 4, e) for e in (0, 2, 5)] == [(4, 1.0), (20, 1.0), (100, 1.0)]
    o = optim(scheduler="batch_growth", milestones=[2, 4], step_factor=5, max_batch_size=50)
    # beyond the cap the rest of the factor goes to the learning rate: batch · (1/lr) still grows 25×
    batch, scale = batch_and_lr_scale(o, 4, 5)
    assert batch == 50 and batch / scale == pytest.approx(100)


def test_bad_schedules_are_clear_errors():
    with pytest.raises(ConfigError, match="optim.milestones"):
        optim(scheduler="batch_growth")
    with pytest.raises(ConfigError, match="optim.milestones"):
        optim(scheduler="step", milestones=[5, 3])
    with pytest.raises(ConfigError, match="optim.step_factor"):
        optim(scheduler="step", milestones=[3], step_factor=1)
    with pytest.raises(ConfigError, match="optim.max_batch_size"):
        optim(scheduler="batch_growth", milestones=[3], max_batch_size=2)


def _run(tmp_path, store, **optim_args):
    cfg = config_from_dict(
        {
            "model": {"name": "schnet", "n_atom_basis": 8, "n_filters": 8, "n_interactions": 1, "n_rbf": 8},
            "data": {"path": str(store), "split": [30, 10, 10], "batch_size": 3},
            "optim": {"lr": 1e-3, **optim_args},
            "train": {"max_epochs": 4, "progress_bar": False, "plots": False, "num_threads": 1},
        }
    )
    name = optim_args["scheduler"]
    summary = train(cfg, run_dir=tmp_path / name, quiet=True)
    (path,) = (tmp_path / name / "logs").glob("version_*/metrics.csv")
    with open(path) as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")]
    return summary, lrs


def test_training_follows_the_schedules(tmp_path):
    store = write_store(read_ase(XTB, index="0:50", energy_unit="eV"), tmp_path / "s.h5", progress=False)
    step, lr_step = _run(tmp_path, store, scheduler="step", milestones=[1, 3], step_factor=2)
    grow, lr_grow = _run(tmp_path, store, scheduler="batch_growth", milestones=[1, 3], step_factor=2)
    # batches of 3, 6, 6, 12 over 30 molecules: 10 + 5 + 5 + 3 parameter updates (step: 4 × 10)
    assert grow["optimizer_steps"] == 10 + 5 + 5 + math.ceil(30 / 12)
    assert step["optimizer_steps"] == 40
    assert lr_step == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    assert lr_grow == pytest.approx([1e-3] * 4)
