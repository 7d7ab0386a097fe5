"""The MD benchmark and the tabulation-error script run end to end (their numbers go into the README)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows of a script's output, by first cell."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


@pytest.mark.usefixtures("one_thread")
def test_tabulation_error_script_on_md17_ethanol(shared_data, capsys):
    """On real MD17 frames the shipped SchNet's tabulated forces stay below float32 round-off."""
    script = load_script("tabulation_error")
    path = shared_data / "md17" / "ethanol_dft_1200.xyz"
    assert script.main(["schnet-md17-ethanol", str(path), "--frames", "5"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert set(rows) >= {"exact float32", "tabulated float64", "tabulated float32"}
    tab64_energy, tab64_force = float(rows["tabulated float64"][1]), float(rows["tabulated float64"][3])
    round_off_force = float(rows["exact float32"][3])
    assert tab64_energy < 1e-7 and tab64_force < round_off_force


@pytest.mark.usefixtures("one_thread")
def test_bench_md_runs_without_schnetpack(capsys, tmp_path):
    """A tiny run of every atomnet column (DTNN, eager), the ratio table against eager atomnet, the PNG."""
    script = load_script("bench_md")
    argv = ["--model", "dtnn", "--no-schnetpack", "--no-compile", "--steps-small", "2", "--steps-large", "1"]
    assert script.main([*argv, "--repeats", "1", "--png", str(tmp_path / "speed.png")]) == 0
    assert (tmp_path / "speed.png").read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert "tabulated float32" in out and "atomnet tabulated / atomnet" in out
    for system in ("C7H12O2 (21 atoms)", "water box (1029 atoms, PBC)"):
        rates = [float(x) for x in rows[system][:2]]
        assert all(rate > 0 for rate in rates) and rows[system][2].endswith("x")
