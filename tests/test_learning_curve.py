"""The learning-curve script: one run per training size, shared val/test molecules, JSON + log-log PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

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
    assert result["sizes"] == [20, 40]
    assert all(np.isfinite(result["energy_mae_kcal/mol"]))
    assert (tmp_path / "lc" / "learning_curve.png").stat().st_size > 1000
    small, large = (
        load_split(tmp_path / "lc" / "split_n20.npz"),
        load_split(tmp_path / "lc" / "split_n40.npz"),
    )
    np.testing.assert_array_equal(small.test, large.test)
    np.testing.assert_array_equal(small.val, large.val)
    assert len(small.train) == 20 and set(small.train) <= set(large.train)
    assert not set(large.train) & set(large.test)
