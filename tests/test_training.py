"""Training on tiny data: loss decreases, exact resume, NaN loss, unit mismatch, load_model round trip."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import atomnet
from atomnet import keys
from atomnet.cli import main
from atomnet.data.ase_io import read_ase
from atomnet.data.store import write_store
from atomnet.errors import AtomNetError, ConfigError
from atomnet.training.commands import train
from atomnet.training.config import config_from_dict
from atomnet.training.datamodule import open_dataset
from atomnet.training.lightning_module import NonFiniteLossError

XTB = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"
TINY_MODEL = dict(name="schnet", n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The first 60 xtb ethanol frames as an HDF5 store (source unit eV)."""
    table = read_ase(XTB, index="0:60", energy_unit="eV")
    return write_store(table, tmp_path_factory.mktemp("data") / "ethanol60.h5", progress=False)


def tiny_config(path, out, **sections):
    raw = {
        "model": dict(TINY_MODEL),
        "data": {"path": str(path), "split": [30, 15, 15], "batch_size": 6},
        "optim": {"lr": 5e-3, "scheduler": "plateau", "warmup_steps": 3, "ema_decay": 0.9},
        "train": {"max_epochs": 3, "out_dir": str(out), "progress_bar": False, "plots": False},
    }
    for name, values in sections.items():
        raw[name].update(values)
    return config_from_dict(raw)


def epoch_losses(run_dir: Path) -> list[float]:
    (metrics,) = Path(run_dir, "logs").glob("version_*/metrics.csv")
    with open(metrics) as f:
        return [float(r["train_loss_epoch"]) for r in csv.DictReader(f) if r.get("train_loss_epoch")]


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("runs")
    return train(tiny_config(store, out, train={"max_epochs": 3}), run_dir=out / "run", quiet=True)


def test_training_reduces_loss(trained):
    losses = epoch_losses(Path(trained["run_dir"]))
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    run = Path(trained["run_dir"])
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "split.npz", "model.pt"):
        assert (run / name).is_file(), name
    assert trained["evaluated_on"] == "test"


def test_load_model_round_trip(trained, store):
    run = Path(trained["run_dir"])
    from_ckpt = atomnet.load_model(run / "best.ckpt")
    from_file = atomnet.load_model(run / "model.pt")
    assert not from_ckpt.training
    ds = open_dataset(store, 4.0, "energy", "forces", np.arange(10))
    batch = ds.__getitems__(list(range(10)))
    a, b = from_ckpt(batch), from_file(batch)
    torch.testing.assert_close(a[keys.ENERGY], b[keys.ENERGY])
    torch.testing.assert_close(a[keys.FORCES], b[keys.FORCES])
    meta = torch.load(run / "model.pt", weights_only=True)["meta"]
    assert meta["split_sizes"] == {"train": 30, "val": 15, "test": 15}
    assert meta["test_metrics"]["energy_mae_eV"] == pytest.approx(trained["metrics"]["energy_mae_eV"])


class Payload:
    """An arbitrary object: unpickling it would need code from the file."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(trained, tmp_path):
    content = torch.load(Path(trained["run_dir"]) / "best.ckpt", weights_only=True)
    content["payload"] = Payload()
    bad = tmp_path / "evil.ckpt"
    torch.save(content, bad)
    with pytest.raises(AtomNetError, match="weights_only"):
        atomnet.load_model(bad)
    with pytest.raises(AtomNetError, match="neither a file nor a pretrained model"):
        atomnet.load_model("no-such-model")


def test_resume_gives_same_weights(store, tmp_path):
    full = train(tiny_config(store, tmp_path, train={"max_epochs": 4}), run_dir=tmp_path / "full", quiet=True)
    half = train(tiny_config(store, tmp_path, train={"max_epochs": 2}), run_dir=tmp_path / "half", quiet=True)
    assert (
        main(
            [
                "train",
                "--resume",
                half["last_checkpoint"],
                "--set",
                "train.max_epochs=4",
                "--set",
                "train.progress_bar=false",
            ]
        )
        == 0
    )
    a = torch.load(full["last_checkpoint"], weights_only=True)
    b = torch.load(half["last_checkpoint"], weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    torch.testing.assert_close(a["state_dict"], b["state_dict"], rtol=0, atol=0)
    torch.testing.assert_close(a["optimizer_states"], b["optimizer_states"], rtol=0, atol=0)


def test_nan_loss_names_batch_and_molecule(tmp_path):
    table = read_ase(XTB, index="0:40", energy_unit="eV")
    offsets = table.offsets
    table.properties["forces"][offsets[7] : offsets[8]] = np.nan  # molecule 7 has NaN forces
    path = write_store(table, tmp_path / "nan.h5", progress=False)
    cfg = tiny_config(path, tmp_path, data={"split": [30, 10, 0], "split_mode": "sequential"})
    with pytest.raises(NonFiniteLossError, match=r"batch \d+.*molecules: \[.*\b7\b"):
        train(cfg, run_dir=tmp_path / "nan", quiet=True)


def test_unit_mismatch_is_reported_before_training(store, tmp_path):
    cfg = tiny_config(store, tmp_path, data={"energy_unit": "kcal/mol"})
    with pytest.raises(ConfigError, match=r"data\.energy_unit.*kcal/mol.*'eV'"):
        train(cfg, run_dir=tmp_path / "units", quiet=True)
    cfg = tiny_config(store, tmp_path, data={"energy_key": "U0"})
    with pytest.raises(ConfigError, match=r"data\.energy_key"):
        train(cfg, run_dir=tmp_path / "key", quiet=True)
    assert not (tmp_path / "units" / "last.ckpt").exists()


def test_raw_file_is_converted_and_dtnn_trains(tmp_path):
    table = read_ase(XTB, index="0:30", energy_unit="eV")
    from atomnet.data.ase_io import write_extxyz

    raw = write_extxyz(table, tmp_path / "small.extxyz")
    cfg = config_from_dict(
        {
            "model": {
                "name": "dtnn",
                "n_atom_basis": 8,
                "n_factors": 8,
                "n_interactions": 1,
                "n_hidden": 4,
                "cutoff": 4.0,
                "max_z": 10,
            },
            "data": {"path": str(raw), "split": [20, 5, 5], "batch_size": 5, "split_mode": "sequential"},
            "optim": {"scheduler": "cosine", "warmup_steps": 2},
            "train": {"max_epochs": 1, "out_dir": str(tmp_path), "progress_bar": False, "plots": False},
        }
    )
    s = train(cfg, run_dir=tmp_path / "dtnn", quiet=True)
    assert list((tmp_path / "cache").glob("small-*.h5"))
    split = np.load(tmp_path / "dtnn" / "split.npz")
    np.testing.assert_array_equal(split["train"], np.arange(20))
    assert np.isfinite(s["metrics"]["forces_mae_eV/A"])


def test_pretrained_models_load_by_name():
    from ase.build import molecule

    from atomnet.data import batch_from_atoms

    entries = atomnet.list_models()
    for entry in entries:
        assert {"name", "dataset", "split_sizes", "units", "errors", "command"} <= set(entry)
        pot = atomnet.load_model(entry["name"])
        assert not pot.training
        out = pot(batch_from_atoms([molecule("CH3CH2OH")], cutoff=pot.cutoff))
        assert torch.isfinite(out[keys.ENERGY]).all() and torch.isfinite(out[keys.FORCES]).all()


def test_adam_runs_fused_and_takes_the_steps_of_the_foreach_path(tmp_path):
    """Training's AdamW is torch's fused kernel where every parameter allows it; its steps equal the
    reference (foreach) implementation's, weight decay included (float64, 25 steps)."""
    from atomnet.models import build_model
    from atomnet.potential import Potential
    from atomnet.training.lightning_module import PotentialModule, fused_adam

    cfg = tiny_config(tmp_path / "x.h5", tmp_path, optim={"weight_decay": 1e-2, "lr": 1e-2})
    module = PotentialModule(Potential(build_model(cfg.model.name, **cfg.model.hparams)), cfg)
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    assert opt.defaults["fused"] is True
    assert not fused_adam([torch.zeros(3, dtype=torch.float16)]) and not fused_adam([])

    torch.manual_seed(0)
    x, y = torch.randn(40, 7, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)
    nets = [torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()]
    nets.append(copy.deepcopy(nets[0]))
    opts = [
        torch.optim.AdamW(n.parameters(), 1e-2, weight_decay=1e-2, fused=f)
        for n, f in zip(nets, (True, False), strict=True)
    ]
    for _ in range(25):
        for net, o in zip(nets, opts, strict=True):
            o.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            o.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
