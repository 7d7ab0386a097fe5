"""``atomnet evaluate``: JSON + PNGs, and MAE equal to an independent numpy computation."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from atomnet import keys
from atomnet.cli import main
from atomnet.data import batch_from_atoms
from atomnet.models import build_model, save_model
from atomnet.potential import Potential

XTB = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(
        "schnet", n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10
    )
    model.set_statistics(
        mean=-0.1, std=0.5, atomref=np.array([0, -13.6, 0, 0, 0, 0, -1030.0, 0, -2040.0, 0, 0])
    )
    return save_model(model, tmp_path_factory.mktemp("model") / "model.pt", meta={"test": True})


def test_evaluate_writes_metrics_and_plots(model_file, tmp_path, capsys):
    frames = ase.io.read(XTB, index="0:25")
    data = tmp_path / "frames.extxyz"
    ase.io.write(data, frames)
    out = tmp_path / "eval"
    args = ["evaluate", str(model_file), str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "kcal/mol" in printed and "parity" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("parity.png", "errors.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"

    # independent computation: ASE frames -> batch -> potential, references from the file
    content = torch.load(model_file, weights_only=True)
    potential = Potential(build_model("schnet", **content["hparams"]))
    potential.model.load_state_dict(content["state_dict"])
    pred = potential.eval()(batch_from_atoms(frames, cutoff=4.0))
    e_ref = np.array([a.get_potential_energy() for a in frames])
    f_ref = np.concatenate([a.get_forces() for a in frames])
    e_mae = np.mean(np.abs(pred[keys.ENERGY].double().numpy() - e_ref))
    f_mae = np.mean(np.abs(pred[keys.FORCES].double().numpy() - f_ref))
    assert metrics["n_molecules"] == 25
    assert metrics["energy_mae_eV"] == pytest.approx(e_mae, rel=1e-4)
    assert metrics["forces_mae_eV/A"] == pytest.approx(f_mae, rel=1e-4)
    assert metrics["energy_mae_kcal/mol"] == pytest.approx(e_mae * 23.060548, rel=1e-4)


def test_evaluate_unit_mismatch(model_file, tmp_path, capsys):
    from atomnet.data.ase_io import read_ase
    from atomnet.data.store import write_store

    store = write_store(read_ase(XTB, index="0:5", energy_unit="eV"), tmp_path / "s.h5", progress=False)
    assert (
        main(["evaluate", str(model_file), str(store), "--energy-unit", "kcal/mol", "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "--energy-unit" in err and "pass --energy-unit eV" in err
    )  # the flag the user can pass, not a config key


def test_units_come_from_the_file_or_the_model(shared_data, tmp_path, capsys):
    """QM9 energies are in Hartree and the reader knows it: ``atomnet evaluate schnet-qm9-u0 <tarball>
    --energy-key U0`` needs no unit; a wrong ``--energy-unit`` is one line naming the flag and the right value.
    An extxyz file without units is read in the model's training unit (MD17: kcal/mol)."""
    import atomnet

    qm9 = shared_data / "qm9" / "qm9_subset.tar.bz2"
    common = ["--limit", "60", "--forces-key", "none", "--cache-dir", str(tmp_path / "cache")]
    assert (
        main(
            [
                "evaluate",
                "schnet-qm9-u0",
                str(qm9),
                "--energy-key",
                "U0",
                "--out",
                str(tmp_path / "a"),
                *common,
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert 0 < metrics["energy_mae_eV"] < 1.0  # a U0 model in eV on U0 converted from Hartree, not 27× off
    capsys.readouterr()
    rc = main(["evaluate", "schnet-qm9-u0", str(qm9), "--energy-key", "U0", "--energy-unit", "eV",
               "--out", str(tmp_path / "b"), *common])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--energy-unit" in err and "pass --energy-unit Hartree" in err and "data.energy_unit" not in err
    frames = ase.io.read(shared_data / "md17" / "ethanol_dft_1200.xyz", index="1000:1020")
    ase.io.write(tmp_path / "md17.extxyz", frames)
    assert main(["evaluate", "schnet-md17-ethanol", str(tmp_path / "md17.extxyz"), "--out", str(tmp_path / "c"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    assert "taken to be in kcal/mol" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    entry = {e["name"]: e for e in atomnet.list_models()}["schnet-md17-ethanol"]
    assert metrics["energy_mae_kcal/mol"] < 3 * entry["errors"]["energy_mae_kcal/mol"]


def test_write_extxyz_holds_the_structures_references_and_predictions(model_file, tmp_path):
    """``--write-extxyz``: ASE reads back each input structure with its reference values and the model's
    predictions, equal to an independent evaluation of the same frames."""
    frames = ase.io.read(XTB, index="3:9")
    data = tmp_path / "frames.extxyz"
    ase.io.write(data, frames)
    written = tmp_path / "out" / "predictions.xyz"
    args = ["evaluate", str(model_file), str(data), "--out", str(tmp_path / "eval"), "--energy-unit", "eV"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--write-extxyz", str(written)]) == 0
    back = ase.io.read(written, index=":")
    assert len(back) == len(frames)
    content = torch.load(model_file, weights_only=True)
    potential = Potential(build_model("schnet", **content["hparams"])).double()
    potential.model.load_state_dict(content["state_dict"])
    for atoms, ref in zip(back, frames, strict=True):
        assert (atoms.numbers == ref.numbers).all()
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-6)
        assert atoms.info["energy_ref"] == pytest.approx(ref.get_potential_energy(), abs=1e-4)  # float32 data
        np.testing.assert_allclose(atoms.arrays["forces_ref"], ref.get_forces(), atol=1e-5)
        out = potential.eval()(batch_from_atoms([ref], cutoff=4.0))
        assert atoms.info["energy_pred"] == pytest.approx(float(out[keys.ENERGY][0]), abs=1e-3)
        np.testing.assert_allclose(atoms.arrays["forces_pred"], out[keys.FORCES].numpy(), atol=1e-4)
        np.testing.assert_allclose(atoms.arrays["energies_pred"].sum(), atoms.info["energy_pred"], atol=1e-3)
        assert atoms.info["energy_error"] == pytest.approx(
            atoms.info["energy_pred"] - atoms.info["energy_ref"]
        )
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")]  # no temp file left
