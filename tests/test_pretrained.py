"""The shipped models' recorded errors (atomnet/pretrained/index.json, quoted in the README) reproduce on the
shared data, computed here independently: ASE frames → batch → potential, references from the file."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch

import atomnet
from atomnet import keys
from atomnet.data import batch_from_atoms
from atomnet.data.splits import random_split
from atomnet.units import KCAL_PER_MOL

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
