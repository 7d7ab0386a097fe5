"""``atomnet explain``: JSON and pictures from real files; bad input as one line, exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from atomnet.cli import main
from atomnet.explain import create_analyzer
from atomnet.models import build_model, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("schnet", n_atom_basis=16, n_filters=16, n_interactions=2, n_rbf=10, cutoff=4.0)
    model.set_statistics(-1.0, 0.5)
    return str(save_model(model, tmp_path_factory.mktemp("m") / "model.pt"))


@pytest.fixture(scope="module")
def xyz(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "mols.xyz"
    write(path, [molecule("CH3CH2OH"), molecule("C6H6"), molecule("H2O")])
    return str(path)


def test_json_and_png(model_file, xyz, tmp_path, capsys):
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    rc = main(["explain", model_file, xyz, "--method", "lrp-epsilon", "--param", "epsilon=0.1",
               "--json", str(out_json), "--png", str(out_png), "--no-progress"])  # fmt: skip
    assert rc == 0
    records = json.loads(out_json.read_text())["molecules"]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [len(r["relevance"]) for r in records] == [9, 12, 3]
    # the same numbers as the Python interface
    [e] = create_analyzer("lrp-epsilon", model_file, dtype=torch.float64, epsilon=0.1).analyze(
        molecule("C6H6")
    )
    np.testing.assert_allclose(records[1]["relevance"], e.relevance, rtol=1e-9)
    assert records[1]["params"] == {"epsilon": 0.1} and records[1]["units"] == "eV"
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_compare_and_index(model_file, xyz, tmp_path):
    out_json, out_png = tmp_path / "c.json", tmp_path / "c.png"
    rc = main(["explain", model_file, xyz, "--compare", "lrp-gamma,contributions,gradient", "--index", "1:3",
               "--json", str(out_json), "--png", str(out_png), "--no-progress"])  # fmt: skip
    assert rc == 0
    records = json.loads(out_json.read_text())["molecules"]
    assert [r["index"] for r in records] == [1, 2]
    assert set(records[0]) == {"index", "lrp-gamma", "contributions", "gradient"}
    assert out_png.is_file()


def test_real_data_files(model_file, shared_data, tmp_path):
    """The QM9 tarball and the MD17 npz go through the same readers as training."""
    qm9 = shared_data / "qm9" / "qm9_subset.tar.bz2"
    out = tmp_path / "q.json"
    assert main(["explain", model_file, str(qm9), "--limit", "5", "--index", "-1", "--method", "lrp-0",
                 "--json", str(out), "--no-progress"]) == 0  # fmt: skip
    [rec] = json.loads(out.read_text())["molecules"]
    assert rec["index"] == 4
    assert abs(sum(rec["relevance"]) + rec["unexplained"] - rec["energy"]) < 1e-9 * abs(rec["energy"])
    npz = shared_data / "md17" / "ethanol_ccsd_t-train.npz"
    assert main(["explain", model_file, str(npz), "--limit", "2", "--method", "contributions",
                 "--json", str(out), "--no-progress"]) == 0  # fmt: skip
    assert len(json.loads(out.read_text())["molecules"]) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "lrp-magic"], "unknown explanation method 'lrp-magic'"),
        (["--method", "lrp-gamma", "--param", "gamma"], "expected KEY=VALUE"),
        (["--method", "lrp-gamma", "--param", "gamma=-2"], "gamma must be >= 0"),
        (["--index", "7"], "is not a molecule of"),
    ],
)
def test_bad_arguments(model_file, xyz, extra, message, capsys):
    assert main(["explain", model_file, xyz, "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_bad_files(model_file, tmp_path, capsys):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    assert main(["explain", model_file, str(empty), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty.xyz" in err and len(err.splitlines()) == 1, err
    assert main(["explain", model_file, str(tmp_path / "missing.xyz")]) == 2
    assert "no such file" in capsys.readouterr().err
    nan = tmp_path / "nan.xyz"
    nan.write_text("2\n\nH 0 0 0\nH nan 0 0\n")
    assert main(["explain", model_file, str(nan), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err


def test_walks_json_and_png(model_file, xyz, tmp_path):
    from atomnet.explain import pair_relevance, walks

    out_json, out_png = tmp_path / "w.json", tmp_path / "w.png"
    rc = main(["explain", model_file, xyz, "--walks", "--index", "2", "--method", "lrp-epsilon",
               "--json", str(out_json), "--png", str(out_png), "--no-progress"])  # fmt: skip
    assert rc == 0
    rec = json.loads(out_json.read_text())
    water = molecule("H2O")
    e = walks(model_file, water, rule="lrp-epsilon")
    assert rec["walks"] == e.walks.tolist() and rec["rule"] == "lrp-epsilon"
    np.testing.assert_allclose(rec["relevance"], e.relevance, rtol=1e-9)
    np.testing.assert_allclose(
        rec["pair_relevance"], pair_relevance(model_file, water, "lrp-epsilon"), rtol=1e-9
    )
    np.testing.assert_allclose(sum(rec["body_order_relevance"]), e.relevance.sum(), rtol=1e-9)
    assert out_png.stat().st_size > 10_000
    # top-k: no body orders, K walks
    assert main(["explain", model_file, xyz, "--walks", "--top-k", "5", "--index", "0",
                 "--json", str(out_json), "--png", str(out_png), "--no-progress"]) == 0  # fmt: skip
    rec = json.loads(out_json.read_text())
    assert len(rec["walks"]) == 5 and not rec["complete"] and "body_order_relevance" not in rec


def test_walks_needs_one_structure(model_file, xyz, capsys):
    assert main(["explain", model_file, xyz, "--walks", "--no-progress"]) == 2
    assert "--walks explains one structure" in capsys.readouterr().err


def test_hdf5_store(model_file, xyz, tmp_path):
    """An atomnet HDF5 store explains like the raw file it was converted from."""
    from atomnet.data.ase_io import read_ase
    from atomnet.data.store import write_store

    store = write_store(read_ase(xyz), tmp_path / "mols.h5", progress=False)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert (
        main(["explain", model_file, str(store), "--method", "lrp-0", "--json", str(a), "--no-progress"]) == 0
    )
    assert main(["explain", model_file, xyz, "--method", "lrp-0", "--json", str(b), "--no-progress"]) == 0
    ra, rb = (json.loads(p.read_text())["molecules"] for p in (a, b))
    assert len(ra) == 3
    for x, y in zip(ra, rb, strict=True):  # the store keeps positions in float32
        np.testing.assert_allclose(x["relevance"], y["relevance"], rtol=1e-6)


def test_evaluate_statistics_and_probe_map(model_file, xyz, tmp_path):
    out_json, out_png = tmp_path / "e.json", tmp_path / "e.png"
    assert main(["explain", model_file, xyz, "--evaluate", "deletion", "--methods", "lrp-gamma,gradient",
                 "--steps", "4", "--json", str(out_json), "--png", str(out_png), "--no-progress"]) == 0  # fmt: skip
    rec = json.loads(out_json.read_text())
    assert set(rec["methods"]) == {"lrp-gamma", "gradient"} and rec["n_molecules"] == 3
    assert len(rec["methods"]["gradient"]["morf"]) == 5 and out_png.is_file()
    assert main(["explain", model_file, xyz, "--evaluate", "fidelity", "--methods", "contributions",
                 "--perturbation", "mask", "--json", str(out_json), "--no-progress"]) == 0  # fmt: skip
    assert -1 <= json.loads(out_json.read_text())["methods"]["contributions"]["pearson"] <= 1
    assert main(["explain", model_file, xyz, "--statistics", "--json", str(out_json), "--png", str(out_png),
                 "--no-progress"]) == 0  # fmt: skip
    assert json.loads(out_json.read_text())["element"]["H"]["count"] == 6 + 6 + 2
    assert main(["explain", model_file, xyz, "--probe-map", "C", "--index", "2", "--spacing", "0.5",
                 "--json", str(out_json), "--png", str(out_png), "--no-progress"]) == 0  # fmt: skip
    rec = json.loads(out_json.read_text())
    assert np.asarray(rec["values"]).shape == (len(rec["y"]), len(rec["x"]))
    assert main(["explain", model_file, xyz, "--probe-map", "Xx", "--index", "2", "--no-progress"]) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--probe-map", "C", "--index", "0", "--spacing", "0"], "--spacing must be > 0"),
        (["--probe-map", "C"], "--probe-map draws one structure"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (
            ["--evaluate", "deletion", "--methods", "lrp-gamma,lrp-magic"],
            "unknown explanation method 'lrp-magic'",
        ),
        (["--statistics", "--method", "lrp-gamma", "--param", "gamma=x"], "not a valid float"),
    ],
)
def test_bad_options_of_the_evaluation_views(model_file, xyz, tmp_path, extra, message, capsys):
    out = tmp_path / "never.png"
    assert main(["explain", model_file, xyz, "--no-progress", "--png", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_pattern_methods_fit_on_a_training_file(tmp_path, xyz, capsys):
    """A CMNet explained with PatternAttribution: --fit reads training structures; without it, one line."""
    torch.manual_seed(0)
    model = build_model("cmnet", max_atoms=12, hidden=[16], n_steps=3, theta=5.0, max_z=20)
    path = str(save_model(model, tmp_path / "cm.pt"))
    train = tmp_path / "train.xyz"
    mols = []
    for k, name in enumerate(["CH4", "NH3", "H2O", "CH3OH", "C2H6", "C2H4"] * 3):
        m = molecule(name)
        m.rattle(0.1, seed=k)
        mols.append(m)
    write(train, mols)
    out = tmp_path / "p.json"
    rc = main(["explain", path, xyz, "--method", "patternattribution", "--fit", str(train),
               "--json", str(out), "--entries", str(tmp_path / "entries.png"), "--no-progress"])  # fmt: skip
    assert rc == 0
    assert (tmp_path / "entries.png").stat().st_size > 20_000
    records = json.loads(out.read_text())["molecules"]
    from ase.io import read

    back = read(train, ":")  # the file's 8 decimals, as the command read them
    [e] = create_analyzer("patternattribution", path, dtype=torch.float64).fit(back).analyze(molecule("C6H6"))
    np.testing.assert_allclose(records[1]["relevance"], e.relevance, rtol=1e-9)
    capsys.readouterr()
    assert main(["explain", path, xyz, "--method", "patternnet", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fit FILE" in err[0]
    assert main(["explain", path, xyz, "--method", "patternnet", "--fit", str(tmp_path / "missing.xyz"),
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.xyz: no such file" in err[0]


def test_entries_need_a_coulomb_matrix_model(model_file, xyz, tmp_path, capsys):
    assert main(["explain", model_file, xyz, "--entries", str(tmp_path / "e.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Coulomb-matrix" in err[0] and not (tmp_path / "e.png").exists()
