"""The shipped models' recorded errors (atomnet/pretrained/index.json, quoted in the README) reproduce on the
shared data, computed here independently of the training code: frames → batch → potential, references from
the file (QM9 read with the tarball reader, split recomputed from its seed)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms

import atomnet
from atomnet import keys
from atomnet.data import batch_from_atoms
from atomnet.data.qm9 import read_qm9_tarball
from atomnet.data.splits import random_split
from atomnet.units import HARTREE, KCAL_PER_MOL

#: name → (file under ../shared/data, frames of the split the errors were measured on); kcal/mol files
EVALUATED = {
    "schnet-md17-ethanol": ("md17/ethanol_dft_1200.xyz", np.arange(1000, 1200)),  # sequential: last 200
    "dtnn-md17-ethanol": ("md17/ethanol_dft_1200.xyz", np.arange(1000, 1200)),
    "schnet-rmd17-ethanol": (
        "rmd17/rmd17_ethanol_1000.xyz",
        random_split(1000, (800, 100, 100), seed=0).test,
    ),
}


def errors(name: str, path, frames: np.ndarray) -> tuple[float, float]:
    """Energy MAE (eV) and force-component MAE (eV/Å) of a shipped model on ``frames`` of ``path``."""
    atoms = ase.io.read(path, index=":")
    atoms = [atoms[i] for i in frames]
    pot = atomnet.load_model(name)
    e_ref = np.array([a.get_potential_energy() for a in atoms]) * KCAL_PER_MOL  # file: kcal/mol → eV
    f_ref = np.concatenate([a.get_forces() for a in atoms]) * KCAL_PER_MOL
    e, f = [], []
    for start in range(0, len(atoms), 50):
        out = pot(batch_from_atoms(atoms[start : start + 50], cutoff=pot.cutoff, dtype=torch.float64))
        e.append(out[keys.ENERGY].numpy())
        f.append(out[keys.FORCES].numpy())
    return float(np.mean(np.abs(np.concatenate(e) - e_ref))), float(
        np.mean(np.abs(np.concatenate(f) - f_ref))
    )


QM9_MODELS = ["schnet-qm9-u0", "dtnn-qm9-u0"]


@pytest.fixture(scope="module")
def qm9_test_molecules(shared_data) -> tuple[list[Atoms], np.ndarray]:
    """The test molecules of the shipped QM9 models (random 5,000 / 500 / 1,000 of the shared subset, seed 0)
    and their U0 in eV."""
    table = read_qm9_tarball(shared_data / "qm9" / "qm9_subset.tar.bz2", progress=False)
    starts = np.concatenate([[0], np.cumsum(table.n_atoms)])
    test = random_split(len(table.n_atoms), (5000, 500, 1000), seed=0).test
    molecules = [
        Atoms(
            numbers=table.numbers[starts[i] : starts[i + 1]],
            positions=table.positions[starts[i] : starts[i + 1]],
        )
        for i in test
    ]
    assert table.units["U0"] == "Hartree"
    return molecules, table.properties["U0"][test] * HARTREE


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", QM9_MODELS)
def test_recorded_qm9_errors_reproduce(name, qm9_test_molecules):
    entry = {e["name"]: e for e in atomnet.list_models()}[name]
    molecules, reference = qm9_test_molecules
    assert entry["errors_on"] == "test" and len(molecules) == entry["split_sizes"]["test"]
    pot = atomnet.load_model(name)
    energies = []
    for start in range(0, len(molecules), 250):
        batch = batch_from_atoms(molecules[start : start + 250], cutoff=pot.cutoff, dtype=torch.float64)
        energies.append(pot(batch, forces=False)[keys.ENERGY].detach().numpy())
    energy_mae = float(np.mean(np.abs(np.concatenate(energies) - reference)))
    assert energy_mae == pytest.approx(entry["errors"]["energy_mae_eV"], rel=2e-3)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", sorted(EVALUATED))
def test_recorded_errors_reproduce(name, shared_data):
    entries = {e["name"]: e for e in atomnet.list_models()}
    if name not in entries:
        pytest.skip(f"{name} is not shipped")
    relative_path, frames = EVALUATED[name]
    entry = entries[name]
    assert entry["source_energy_unit"] == "kcal/mol"
    assert len(frames) == entry["split_sizes"][entry["errors_on"]]
    energy_mae, forces_mae = errors(name, shared_data / relative_path, frames)
    # recorded in float32 during training; recomputed here in float64
    assert energy_mae == pytest.approx(entry["errors"]["energy_mae_eV"], rel=2e-3, abs=2e-5)
    assert forces_mae == pytest.approx(entry["errors"]["forces_mae_eV/A"], rel=2e-3)


SPLIT_MODELS = sorted(e["name"] for e in atomnet.list_models() if "split_file" in e)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", SPLIT_MODELS)
def test_models_with_a_shipped_split_reproduce_through_evaluate(name, shared_data, tmp_path):
    """``atomnet evaluate NAME DATA --split-file NAME --subset test`` (the split shipped in the package)
    reproduces the recorded test MAE; the split file is part of the package."""
    import json

    from atomnet.cli import main
    from atomnet.pretrained import split_file

    entry = {e["name"]: e for e in atomnet.list_models()}[name]
    assert split_file(name).is_file() and entry["errors_on"] == "test"
    args = entry["evaluate_args"]
    rc = main(["evaluate", name, str(shared_data / entry["data_file"]), *args, "--split-file", name,
               "--subset", "test", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_molecules"] == entry["split_sizes"]["test"]
    assert metrics["energy_mae_eV"] == pytest.approx(entry["errors"]["energy_mae_eV"], rel=2e-3)


def test_split_file_of_a_model_without_one_is_an_error():
    from atomnet.errors import AtomNetError
    from atomnet.pretrained import resolve_split, split_file

    with pytest.raises(AtomNetError, match="ships no split file"):
        split_file("schnet-qm9-u0")
    with pytest.raises(AtomNetError, match="neither a split file nor a pretrained model"):
        resolve_split("runs/missing/split.npz")
