"""Distributed training (Lightning DDP, gloo on CPU): two processes with batch B each follow the same
trajectory as one process with batch 2B; validation covers every molecule exactly once; rank 0 alone writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from atomnet.data.ase_io import read_ase
from atomnet.data.store import write_store
from atomnet.errors import ConfigError
from atomnet.training.config import config_from_dict
from atomnet.training.datamodule import EpochSampler

XTB = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"


@pytest.mark.parametrize("n, world", [(15, 2), (16, 2), (7, 3), (1, 1), (10, 4)])
def test_evaluation_shards_cover_every_index_exactly_once(n, world):
    shards = [list(EpochSampler(n, 0, shuffle=True, rank=r, world=world, pad=False)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(EpochSampler(n, 0, True, r, world, pad=False)) for r in range(world)] == list(
        map(len, shards)
    )


def test_training_shards_rebuild_the_single_process_batches():
    """Process r's k-th batch of size B ∪ over r = the k-th batch of size world·B of one process."""
    n, world, b = 48, 2, 4
    for epoch in (0, 3):
        samplers = [EpochSampler(n, 7, True, r, world, pad=True) for r in range(world)]
        for s in samplers:
            s.set_epoch(epoch)
        one = EpochSampler(n, 7, True)
        one.set_epoch(epoch)
        order = list(one)
        shards = [list(s) for s in samplers]
        for k in range(n // (world * b)):
            together = sorted(i for s in shards for i in s[k * b : (k + 1) * b])
            assert together == sorted(order[k * world * b : (k + 1) * world * b])
    padded = [list(EpochSampler(9, 0, True, r, 2, pad=True)) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 5 and set(padded[0] + padded[1]) == set(range(9))


def test_distributed_settings_are_validated():
    with pytest.raises(ConfigError, match="need train.strategy: ddp"):
        config_from_dict({"train": {"devices": 2}})
    with pytest.raises(ConfigError, match="train.devices: expected an integer >= 1"):
        config_from_dict({"train": {"devices": 0}})
    with pytest.raises(ConfigError, match="train.strategy: expected one of"):
        config_from_dict({"train": {"strategy": "horovod"}})


def _metrics(run: Path) -> list[dict]:
    """Validation rows of every logger version (a resumed run adds one), in order."""
    rows = []
    for path in sorted((run / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("val_loss")]
    return rows


def _run(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ATOMNET_RUN_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "atomnet.cli", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _train(tmp_path: Path, name: str, store: Path, devices: int, batch: int) -> Path:
    cfg = {
        "model": {"name": "schnet", "n_atom_basis": 8, "n_filters": 8, "n_interactions": 1, "n_rbf": 8},
        "data": {"path": str(store), "split": [32, 15, 13], "batch_size": batch, "val_batch_size": 4},
        "optim": {"lr": 5e-3, "ema_decay": 0.9, "warmup_steps": 2},
        "train": {
            "max_epochs": 3,
            "precision": 64,
            "num_threads": 1,
            "progress_bar": False,
            "plots": False,
            "devices": devices,
            "strategy": "ddp" if devices > 1 else "auto",
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / name
    _run(["train", str(path), "--run-dir", str(run)], tmp_path)
    return run


def test_two_processes_train_like_one_with_the_global_batch(tmp_path):
    store = write_store(read_ase(XTB, index="0:60", energy_unit="eV"), tmp_path / "s.h5", progress=False)
    one = _train(tmp_path, "one", store, devices=1, batch=8)
    two = _train(tmp_path, "two", store, devices=2, batch=4)
    m1, m2 = _metrics(one), _metrics(two)
    assert len(m1) == len(m2) == 3
    for a, b in zip(m1, m2, strict=True):  # every epoch: same validation over the same 15 molecules
        for key in ("val_loss", "val_energy_mae", "val_forces_mae"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-6), key
    w1 = torch.load(one / "model.pt", weights_only=True)["state_dict"]
    w2 = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s2["world_size"] == 2 and s2["global_batch_size"] == 8 == s1["global_batch_size"]
    assert s2["metrics"]["n_molecules"] == 13  # the test set, evaluated once by rank 0
    assert s2["metrics"]["energy_mae_eV"] == pytest.approx(s1["metrics"]["energy_mae_eV"], rel=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["one", "two"]  # no run-2 folders

    # --resume continues both runs alike: the 4th epoch matches too
    for run in (one, two):
        _run(["train", "--resume", str(run / "last.ckpt"), "--set", "train.max_epochs=4"], tmp_path)
    m1, m2 = _metrics(one), _metrics(two)
    assert len(m1) == len(m2) == 4
    assert float(m2[-1]["val_loss"]) == pytest.approx(float(m1[-1]["val_loss"]), rel=1e-6)


@pytest.mark.slow
def test_torchrun_launch_equals_lightnings_own(tmp_path):
    """An outside launcher (torchrun, as on a cluster) gives the run Lightning's own launcher gives."""
    import shutil

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    store = write_store(read_ase(XTB, index="0:60", energy_unit="eV"), tmp_path / "s.h5", progress=False)
    own = _train(tmp_path, "own", store, devices=2, batch=4)
    cfg = tmp_path / "own.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ATOMNET_RUN_DIR", None)
    argv = ["torchrun", "--nproc-per-node", "2", "-m", "atomnet.cli", "train", str(cfg), "--run-dir"]
    proc = subprocess.run([*argv, str(tmp_path / "tr")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _metrics(own), _metrics(tmp_path / "tr")
    assert [float(r["val_loss"]) for r in b] == pytest.approx([float(r["val_loss"]) for r in a], rel=1e-6)
