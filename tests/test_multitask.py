"""Multitask training (several QM9 properties at once) for SchNet, DTNN and CMNet: heads, per-target
standardisation and metrics, evaluation with one parity panel per target, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atomnet.cli import main
from atomnet.data.batch import batch_from_atoms
from atomnet.errors import ConfigError
from atomnet.models import build_model, load_model_file
from atomnet.training.commands import train
from atomnet.training.config import config_from_dict
from atomnet.units import unit_factor

MODELS = {
    "schnet": dict(
        name="schnet", n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10
    ),
    "dtnn": dict(
        name="dtnn", n_atom_basis=8, n_factors=8, n_interactions=1, n_hidden=4, cutoff=4.0, max_z=10
    ),
    "cmnet": dict(name="cmnet", max_atoms=29, hidden=[16], n_steps=3, theta=2.0, max_z=10),
}
TARGETS = ["U0", "HOMO", "lumo", "gap"]


def config(qm9, out, model="schnet", **data):
    raw = {
        "model": dict(MODELS[model]),
        "data": {
            "path": str(qm9),
            "format": "qm9",
            "energy_unit": "Hartree",
            "forces_key": None,
            "limit": 120,
            "split": [80, 20, 20],
            "batch_size": 20,
            "targets": TARGETS,
            **data,
        },  # fmt: skip
        "optim": {"lr": 3e-3, "energy_weight": 1.0, "forces_weight": 0.0},
        "train": {"max_epochs": 2, "out_dir": str(out), "progress_bar": False, "plots": True},
    }
    return config_from_dict(raw)


@pytest.fixture(scope="module")
def qm9(shared_data):
    return shared_data / "qm9" / "qm9_subset.tar.bz2"


@pytest.fixture(scope="module")
def runs(qm9, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("mt")
    return {m: train(config(qm9, out, m), run_dir=out / m, quiet=True) for m in MODELS}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_target_is_trained_evaluated_and_pictured(runs, model):
    s = runs[model]
    m = s["metrics"]
    for name in ("homo", "lumo", "gap"):
        assert np.isfinite(m[f"{name}_mae_eV"]) and m[f"{name}_mae_eV"] > 0
    assert np.isfinite(m["energy_mae_eV"])
    # per-target metrics equal the MAE of the same predictions computed here
    pred = np.load(s["predictions_file"])
    assert list(pred["properties"]) == ["homo", "lumo", "gap"]
    for name in ("homo", "lumo", "gap"):
        assert m[f"{name}_mae_eV"] == pytest.approx(
            np.mean(np.abs(pred[name] - pred[f"{name}_ref"])), rel=1e-12
        )
    np.testing.assert_allclose(m["energy_mae_eV"], np.mean(np.abs(pred["energy"] - pred["energy_ref"])))
    assert pytest.approx(float(np.mean(pred["homo_ref"])), abs=3.0) == -6.5  # eV (QM9 HOMO ≈ −0.24 Ha)
    # the model file knows its targets; the intensive ones have a mean readout
    model_obj, meta = load_model_file(s["model_file"])
    assert model_obj.properties == ["homo", "lumo", "gap"]
    assert all(model_obj.head(p).aggregate.reduce == "mean" for p in ("homo", "lumo", "gap"))
    assert meta["targets"] == ["U0", "homo", "lumo", "gap"] and meta["units"]["gap"] == "eV"
    # validation logs every target
    logged = next((s and __import__("pathlib").Path(s["run_dir"]) / "logs").glob("version_*")) / "metrics.csv"
    header = logged.read_text().splitlines()[0]
    assert "val_gap_mae" in header and "train_homo_mae" in header
    assert __import__("pathlib").Path(s["parity_file"]).stat().st_size > 20_000


def test_heads_are_standardised_per_target(runs, qm9):
    """A head's standardisation: mean readout with the training mean and std of the molecular values."""
    from atomnet.data.qm9 import read_qm9_tarball
    from atomnet.data.splits import load_split

    s = runs["schnet"]
    model, _ = load_model_file(s["model_file"])
    split = load_split(__import__("pathlib").Path(s["run_dir"]) / "split.npz")
    table = read_qm9_tarball(qm9, limit=120, progress=False)
    gap = table.properties["gap"] * unit_factor("Hartree")
    head = model.head("gap").standardize
    assert float(head.mean) == pytest.approx(gap[split.train].mean(), rel=1e-5)
    assert float(head.std) == pytest.approx(gap[split.train].std(), rel=1e-5)
    assert float(head.atomref.abs().max()) == 0


def test_evaluate_reports_every_target(runs, qm9, tmp_path, capsys):
    s = runs["cmnet"]
    split = __import__("pathlib").Path(s["run_dir"]) / "split.npz"
    rc = main(["evaluate", s["model_file"], str(qm9), "--format", "qm9", "--energy-key", "U0", "--energy-unit",
               "Hartree", "--forces-key", "none", "--limit", "120", "--split-file", str(split), "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "gap" in text and "homo" in text and "eV" in text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for name in ("homo", "lumo", "gap"):
        assert metrics[f"{name}_mae_eV"] == pytest.approx(s["metrics"][f"{name}_mae_eV"], rel=1e-5)
    assert (tmp_path / "parity.png").stat().st_size > 20_000


def test_single_target_models_are_unchanged():
    """A model without properties has no heads and the same outputs as before (files of earlier versions
    load); heads predict every extra target next to the energy."""
    from ase.build import molecule

    torch.manual_seed(0)
    plain = build_model("schnet", **{k: v for k, v in MODELS["schnet"].items() if k != "name"})
    torch.manual_seed(0)
    multi = build_model("schnet", **{k: v for k, v in MODELS["schnet"].items() if k != "name"},
                        properties=[{"name": "gap", "reduce": "mean"}])  # fmt: skip
    assert len(plain.heads) == 0 and plain.properties == []
    batch = batch_from_atoms([molecule("H2O"), molecule("CH4")], cutoff=4.0)
    a, b = plain(batch), multi(batch)
    torch.testing.assert_close(a["energy"], b["energy"])  # same seed: heads are built after the energy path
    assert b["gap"].shape == (2,) and "gap" not in a
    # the mean readout: the head of a molecule is the mean of its atoms' values
    head = multi.head("gap")
    head.standardize.set(1.5, 0.5)
    out = multi(batch)["gap"]
    assert torch.isfinite(out).all()


def test_bad_targets_are_one_line_errors(qm9, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"data\.targets: .* no per-molecule property 'HOMOO'"):
        train(config(qm9, tmp_path, targets=["U0", "HOMOO"]), run_dir=tmp_path / "bad", quiet=True)
    with pytest.raises(ConfigError, match="repeated"):
        config(qm9, tmp_path, targets=["U0", "u0"])
    with pytest.raises(ConfigError, match="target_weights"):
        config_from_dict({"data": {"targets": ["U0"]}, "optim": {"target_weights": {"gap": 1.0}}})
    with pytest.raises(ConfigError, match=r"model\.properties"):
        config_from_dict({"model": {"name": "schnet", "properties": [{"name": "gap"}]}})
    with pytest.raises(ConfigError, match=r"data\.intensive"):
        config(qm9, tmp_path, intensive=["alpha"])
    # a first target that is not an energy, and a wrong energy unit, are named with the option to change
    with pytest.raises(ConfigError, match=r"data\.energy_key: .*'alpha'.* not an energy"):
        train(config(qm9, tmp_path, targets=["alpha", "U0"]), run_dir=tmp_path / "alpha", quiet=True)
    with pytest.raises(ConfigError, match=r"data\.energy_unit"):
        train(config(qm9, tmp_path, energy_unit="eV"), run_dir=tmp_path / "unit", quiet=True)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"data: {{path: {qm9}, targets: [U0, nope], limit: 30, format: qm9, energy_unit: Hartree}}\n"
    )
    assert main(["train", str(cfg_file), "--set", f"train.out_dir={tmp_path}"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the conversion's progress bars
    assert "nope" in last and "available" in last and "Traceback" not in last
