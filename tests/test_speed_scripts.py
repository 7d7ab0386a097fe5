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
    assert "default AtomNetCalculator (tabulate='auto'): exact filters: not SchNet filter networks" in out
    for system in ("C7H12O2 (21 atoms)", "water box (1029 atoms, PBC)"):
        rates = [float(x) for x in rows[system][:2]]
        assert all(rate > 0 for rate in rates) and rows[system][2].endswith("x")


def test_epoch_workers_script_counts_every_molecule_and_each_process(shared_data, tmp_path, capsys):
    """``scripts/epoch_workers.py`` (README, "Data larger than memory"): an epoch with 0 and 2 workers reads
    every molecule of the store once, and memory is reported for the main process and each worker."""
    import json

    from atomnet.data.qm9 import read_qm9_tarball
    from atomnet.data.store import write_store

    store = tmp_path / "qm9.h5"
    table = read_qm9_tarball(shared_data / "qm9" / "qm9_subset.tar.bz2", limit=250, progress=False)
    write_store(table, store, progress=False)
    script = load_script("epoch_workers")
    out = tmp_path / "epoch.json"
    assert script.main([str(store), "--workers", "0", "2", "--batch-size", "40", "--threads", "1",
                        "--json", str(out)]) == 0  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert [r["workers"] for r in results] == [0, 2]
    for r in results:
        assert r["molecules"] == 250 and r["batches"] == 7  # ceil(250 / 40), no padding
        assert r["atoms"] == int(table.n_atoms.sum())
        assert len(r["worker_processes"]) == r["workers"]
        for mem in [r["main"], *r["worker_processes"]]:
            assert 0 < mem["rss_anon_mib"] <= mem["peak_rss_mib"]
    assert script.main([str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5: no such store" in capsys.readouterr().err


def test_bench_peers_radius_pairs_match_atomnet_pairs(shared_data):
    """The pure-torch radius graph handed to PyG (``scripts/bench_peers.py``) finds exactly atomnet's pairs."""
    import torch

    from atomnet.data.batch import make_batch

    script = load_script("bench_peers")
    molecules = script.raw_molecules("qm9", 50)
    items = script.AtomnetAdapter().items(molecules)
    batch = make_batch(
        torch.from_numpy(items["numbers"]),
        torch.from_numpy(items["positions"]),
        torch.from_numpy(items["n_atoms"]),
        2.5,
    )
    i, j = script.radius_pairs(batch.positions, batch.molecule, batch.n_atoms, 2.5)
    mine = set(zip(batch.pair_i.tolist(), batch.pair_j.tolist(), strict=True))
    assert mine == set(zip(i.tolist(), j.tolist(), strict=True)) and len(mine) == i.numel() > 0


def test_bench_peers_atomnet_only_report(shared_data, tmp_path):
    """A tiny atomnet-only run writes the JSON, Markdown and PNG reports with the FLOP-ceiling figures."""
    import json

    script = load_script("bench_peers")
    argv = [
        "--packages",
        "atomnet",
        "--cases",
        "train_energy_qm9,infer_forces_ethanol,load_qm9",
        "--repeats",
        "1",
    ]
    script.main([*argv, "--warmup", "1", "--batches", "1", "--batch-size", "20", "--load-molecules", "40",
                 "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
    report = json.loads((tmp_path / "peers.json").read_text())
    train = report["results"]["train_energy_qm9"]["atomnet"]
    assert train["n_molecules"] == 20 and train["model_mol_per_s"] > 0 and train["peak_rss_mib"] > 0
    assert report["results"]["load_qm9"]["atomnet"]["n_molecules"] == 40
    assert 0 < report["ceiling"]["fraction"] < 1.5 and report["ceiling"]["step_matmul_gflop"] > 0
    assert "train_energy_qm9" in (tmp_path / "peers.md").read_text()
    assert not (tmp_path / "peers.png").exists()  # no peer ran: no ratio to draw

    # the ratios and their figure, from results of the worker's shape (a peer twice as slow, half the memory)
    results = {
        "train_energy_qm9": {
            "atomnet": train,
            "pyg": {
                **train,
                "model_mol_per_s": train["model_mol_per_s"] / 2,
                "end_to_end_mol_per_s": train["end_to_end_mol_per_s"] / 2,
                "peak_rss_mib": 2 * train["peak_rss_mib"],
                "rss_before_mib": 2 * train["peak_rss_mib"]
                - 4 * (train["peak_rss_mib"] - train["rss_before_mib"]),
            },
        }
    }
    ratios = script.ratios(results)["train_energy_qm9"]
    assert ratios["model_mol_per_s"] == {"ratio": 2.0, "best_peer": "pyg"}
    assert ratios["peak_rss"]["ratio"] == 0.5
    assert abs(ratios["added_rss"]["ratio"] - 0.25) < 1e-12  # the peer's work adds four times the memory
    script.plot({**report, "ratios": {"train_energy_qm9": ratios}}, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").read_bytes().startswith(b"\x89PNG")

    # --render rewrites a stored report with the ratios recomputed and measures nothing
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "peers.json").write_text(json.dumps({**report, "results": results, "ratios": {}}))
    rendered = script.main(["--render", str(tmp_path / "old" / "peers.json"), "--out", str(tmp_path / "new")])
    assert rendered["ratios"]["train_energy_qm9"]["peak_rss"]["ratio"] == 0.5
    table = (tmp_path / "new" / "peers.md").read_text()
    assert "RSS added by the work (MiB)" in table and "0.25× (pyg)" in table
    assert (tmp_path / "new" / "peers.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="bad.json: not a peers.json report"):
        script.main(["--render", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")])
    (tmp_path / "partial.json").write_text(json.dumps({"results": results}))  # no date, cpu, versions ...
    with pytest.raises(SystemExit, match="partial.json: not a peers.json report"):
        script.main(["--render", str(tmp_path / "partial.json"), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # nothing half-written


def test_bench_levers_variants_compute_the_same_model(shared_data, monkeypatch):
    """Each rewritten lever of ``scripts/bench_levers.py`` computes the same energies, forces and parameter
    gradients of a force loss (double backward) as atomnet's modules, in float64."""
    import torch

    from atomnet.models import schnet
    from atomnet.nn import activations, cfconv, fused, fused_filter

    script = load_script("bench_levers")
    peers = load_script("bench_peers")
    originals = {
        (cfconv.CFConv, "forward"): cfconv.CFConv.forward,
        (schnet.SchNetInteraction, "forward"): schnet.SchNetInteraction.forward,
        (schnet.SchNet, "atomic_outputs"): schnet.SchNet.atomic_outputs,
        (cfconv.FilterNetwork, "raw"): cfconv.FilterNetwork.raw,
        (activations.ShiftedSoftplus, "forward"): activations.ShiftedSoftplus.forward,
    }
    for (cls, name), fn in originals.items():
        monkeypatch.setattr(cls, name, fn)  # restored after the test
    monkeypatch.setattr(schnet, "filter_and_convolve", schnet.filter_and_convolve)
    monkeypatch.setattr(fused, "_scale_backward", fused._scale_backward)
    monkeypatch.setattr(fused_filter, "usable", fused_filter.usable)

    torch.manual_seed(0)
    adapter = peers.AtomnetAdapter()
    potential = adapter.model.double()
    batch = adapter.prepare(adapter.items(peers.raw_molecules("qm9", 12)))

    def evaluate():
        out = potential(batch, forces=True, create_graph=True)
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        grads = torch.autograd.grad(loss, list(potential.parameters()))
        return [out["energy"].detach(), out["forces"].detach(), *grads]

    reference = evaluate()
    levers = (script.patch_fused_cfconv, script.patch_one_first_layer, lambda: script.patch_chunked(7))
    scale_backward = fused._scale_backward
    for patch in (
        *levers, script.patch_unfolded_cutoff, script.patch_module_filter_network, script.patch_ops_scale_grads
    ):  # fmt: skip
        patch()
        for got, want in zip(evaluate(), reference, strict=True):
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
        for (cls, name), fn in originals.items():
            setattr(cls, name, fn)
        fused._scale_backward = scale_backward


@pytest.mark.usefixtures("one_thread")
def test_bench_explain_times_every_registered_method(shared_data, tmp_path):
    """``scripts/bench_explain.py`` (in bench_peers' report) runs every method, fitted ones included."""
    import json

    from atomnet.explain import list_methods

    script = load_script("bench_explain")
    out = tmp_path / "explain.json"
    assert script.main(["--batch", "2", "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["method"] for r in rows} == set(list_methods()) and len(rows) == 2 * len(list_methods())
    assert all(r["ms_per_molecule"] > 0 and r["ratio"] > 0 for r in rows)


def test_bench_peers_refuses_unknown_case_or_package(capsys):
    """A misspelt case or package is a one-line usage error naming it, before anything runs."""
    script = load_script("bench_peers")
    for argv in (["--cases", "train_energy_qm10"], ["--packages", "atomnet,dgl"]):
        with pytest.raises(SystemExit) as exit_info:
            script.main(argv)
        assert exit_info.value.code == 2
        assert argv[1].split(",")[-1] in capsys.readouterr().err


def test_flop_count_misses_no_product_of_the_fused_kernels(shared_data, monkeypatch):
    """``bench_peers.flop_ceiling`` counts the energy-training step's matrix products as the plain torch ops of the
    same step would (``ATOMNET_FUSED=0``): the products inside the fused filter-network kernel are no aten ops, but
    the counter's global module hooks route the step through the module path, so none is missed."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    peers = load_script("bench_peers")
    torch.manual_seed(0)
    adapter = peers.AtomnetAdapter()
    batch = adapter.prepare(adapter.items(peers.raw_molecules("qm9", 20)))
    targets = torch.zeros(20)

    def step():
        loss = torch.nn.functional.mse_loss(adapter.energy(batch), targets)
        loss.backward()

    counted = peers.flop_ceiling(step, batch, 0)["step_matmul_flops"]
    monkeypatch.setenv("ATOMNET_FUSED", "0")
    plain = FlopCounterMode(display=False)
    with plain:
        step()
    assert counted == plain.get_total_flops() > 0
