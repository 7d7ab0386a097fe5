"""Smoke runs of the explanation experiment scripts on tiny settings (real shared data)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roar_runs_and_resumes(shared_data, tmp_path):
    roar = load("roar")
    argv = ["--data", str(shared_data / "qm9" / "qm9_subset.tar.bz2"), "--n-train", "40", "--n-test", "20",
            "--budget", "0.5", "--methods", "lrp-gamma", "--fractions", "0.5", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    assert roar.main(argv) == 0
    first = json.loads((tmp_path / "roar.json").read_text())
    assert set(first["runs"]) == {"none@0.0", "lrp-gamma@0.5", "random@0.5"}
    assert all(r["test_mae_eV"] > 0 for r in first["runs"].values())
    assert (tmp_path / "roar.png").stat().st_size > 5_000
    assert roar.main(argv) == 0  # resumed: nothing retrained
    assert json.loads((tmp_path / "roar.json").read_text())["runs"] == first["runs"]


def test_masks_mask_the_top_ranked_atoms():
    import numpy as np

    roar = load("roar")
    [m] = roar.masks_for([np.array([0.1, 0.9, -0.3, 0.5])], 0.5)
    np.testing.assert_array_equal(m, [1, 0, 1, 0])


def test_explain_report_smoke(shared_data, tmp_path):
    report = load("explain_report")
    assert report.main(["--out", str(tmp_path), "--molecules", "4", "--sanity-molecules", "3", "--threads", "1",
                        "--roar", str(tmp_path / "none")]) == 0  # fmt: skip
    text = (tmp_path / "report.md").read_text()
    assert "## Faithfulness" in text and "lrp-gamma" in text and "input invariance" in text
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["models"]) == {"schnet-qm9-u0", "dtnn-qm9-u0", "schnet-md17-ethanol", "dtnn-md17-ethanol"}
    assert (tmp_path / "probe_C_dtnn-qm9-u0.png").is_file()


def test_roar_cm_runs_and_resumes(shared_data, tmp_path):
    roar = load("roar_cm")
    argv = ["--data", str(shared_data / "qm7" / "qm7.tar.gz"), "--limit", "120", "--n-test", "30", "--budget", "0.3",
            "--hidden", "16", "--methods", "lrp-epsilon,patternattribution", "--fractions", "0.5", "--out", str(tmp_path)]  # fmt: skip
    assert roar.main(argv) == 0
    first = json.loads((tmp_path / "roar_cm.json").read_text())
    assert set(first["runs"]) == {"base", "random@0.5", "lrp-epsilon@0.5", "patternattribution@0.5"}
    assert all(r["test_mae_kcal"] > 0 for r in first["runs"].values())
    assert (tmp_path / "roar_cm.png").stat().st_size > 5_000
    assert roar.main(argv) == 0  # resumed: nothing retrained
    assert json.loads((tmp_path / "roar_cm.json").read_text())["runs"] == first["runs"]


def test_roar_cm_masks_the_top_ranked_entries():
    import numpy as np
    import torch

    roar = load("roar_cm")
    x = torch.ones(1, 6)
    out = roar.masked(x, [np.array([4, 1, 0, 2])], 0.5)  # 4 real entries ranked; the top 2 become the mean
    np.testing.assert_array_equal(out.numpy(), [[1, 0, 1, 1, 0, 1]])
