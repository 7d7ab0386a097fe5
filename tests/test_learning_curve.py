"""The learning-curve script: one run per training size, shared val/test molecules, JSON + log-log PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from atomnet.data.splits import load_split

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("learning_curve", ROOT / "scripts" / "learning_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_curve_runs_each_size_on_shared_test_set(tmp_path):
    script = load_script()
    overrides = [
        "model.n_atom_basis=8",
        "model.n_filters=8",
        "model.n_interactions=1",
        "train.max_epochs=1",
        "train.max_time=1",
        "train.progress_bar=false",
        f"train.out_dir={tmp_path}",
    ]
    argv = [
        str(ROOT / "configs" / "quickstart.yaml"),
        "--krr",
        "--sizes",
        "40",
        "20",
        "--n-val",
        "10",
        "--n-test",
        "30",
    ]
    argv += [x for o in overrides for x in ("--set", o)] + ["--out", str(tmp_path / "lc")]
    assert script.main(argv) == 0
    result = json.loads((tmp_path / "lc" / "learning_curve.json").read_text())
    nn, krr = result["curves"]["schnet"], result["curves"]["sorted CM + laplacian KRR"]
    assert nn[0] == krr[0] == [20, 40]
    assert all(np.isfinite(nn[1])) and all(np.isfinite(krr[1]))
    assert result["runs"]["schnet"]["20"]["n_molecules"] == 30  # evaluated on the 30 shared test molecules
    assert (tmp_path / "lc" / "learning_curve.png").stat().st_size > 1000
    small, large = (
        load_split(tmp_path / "lc" / "split_n20.npz"),
        load_split(tmp_path / "lc" / "split_n40.npz"),
    )
    np.testing.assert_array_equal(small.test, large.test)
    np.testing.assert_array_equal(small.val, large.val)
    assert len(small.train) == 20 and set(small.train) <= set(large.train)
    assert not set(large.train) & set(large.test)

    # a second call with the same settings resumes: nothing is retrained, the curves are unchanged
    assert script.main(argv) == 0
    again = json.loads((tmp_path / "lc" / "learning_curve.json").read_text())
    assert again["curves"] == result["curves"]
    assert not (tmp_path / "lc" / "schnet" / "n20" / "version_1").exists()


def test_krr_run_uses_exactly_the_split_molecules(shared_data):
    """KRR on a split equals the `atomnet krr` path on the same training and test molecules."""
    from atomnet.baselines.commands import element_counts, learning_curve, load_dataset
    from atomnet.baselines.coulomb import coulomb_representation
    from atomnet.data.splits import nested_splits
    from atomnet.units import convert_energy

    script = load_script()
    store = shared_data / "qm7" / "qm7.tar.gz"
    numbers, positions, n_atoms, y, unit, _, _ = load_dataset(store, "energy")
    split = nested_splits(len(y), [300], 0, 200, seed=1)[300]
    run = script.krr_run(store, "energy", split, "sorted", "laplacian", 3, 1)
    X = coulomb_representation(numbers, positions, n_atoms, "sorted")
    ref = learning_curve(
        X, convert_energy(y, unit, "kcal/mol"), split.train, split.test, [300], "laplacian", 3, None,
        [1e-9, 1e-6, 1e-3], 1, element_counts(numbers, n_atoms, np.unique(numbers)), progress=False,
    )[300]  # fmt: skip
    assert run["mae"] == pytest.approx(ref["mae"], rel=1e-6)
    assert run["sigma"] == pytest.approx(ref["sigma"], rel=1e-9)
