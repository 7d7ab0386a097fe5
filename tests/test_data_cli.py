"""``atomnet data`` end to end: real shared files -> store -> batch equal to a direct parse, units converted."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from atomnet import keys
from atomnet.cli import main
from atomnet.data.dataset import StoreDataset
from atomnet.data.store import open_store
from atomnet.units import HARTREE, KCAL_PER_MOL

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared data file {path} not found (expected ../shared/data next to the repository)")
    return path


def convert(capsys, *argv) -> str:
    assert main(["data", "convert", *map(str, argv), "--no-progress"]) == 0
    return capsys.readouterr().out


def whole_batch(path, **kwargs):
    ds = StoreDataset(path, cutoff=5.0, **kwargs)
    return ds, ds.__getitems__(list(range(len(ds))))


def test_qm9_tarball_round_trip(tmp_path, capsys):
    from atomnet.data.qm9 import read_qm9_tarball

    src = shared("qm9/qm9_subset.tar.bz2")
    out = tmp_path / "qm9.h5"
    text = convert(capsys, src, out, "--limit", 200)
    assert "molecules: 200" in text and "U0" in text and "Hartree" in text
    table = read_qm9_tarball(src, limit=200, progress=False)
    ds, batch = whole_batch(out, targets=["U0", "homo", "mu", "charges"], energy_key="U0")
    assert torch.equal(batch.numbers, torch.from_numpy(table.numbers))
    torch.testing.assert_close(batch.positions, torch.tensor(table.positions, dtype=torch.float32))
    torch.testing.assert_close(
        batch.targets[keys.ENERGY], torch.tensor(table.properties["U0"] * HARTREE).float()
    )
    torch.testing.assert_close(
        batch.targets["homo"], torch.tensor(table.properties["homo"] * HARTREE).float()
    )
    torch.testing.assert_close(batch.targets["mu"], torch.tensor(table.properties["mu"]).float())  # Debye
    assert batch.targets["charges"].shape == (len(table.numbers),)
    # independent check of the first molecule against the raw property line (U0 is field 13, Hartree)
    with tarfile.open(src) as tar:
        member = next(m for m in tar if m.isfile())
        lines = tar.extractfile(member).read().decode().splitlines()
    gdb, u0 = int(lines[1].split()[1]), float(lines[1].split()[12])
    with open_store(out) as store:
        assert store.file["ids"][0] == gdb
        assert store.property("U0")[0] == pytest.approx(u0 * HARTREE, rel=1e-12)
        assert store.unit("U0") == "eV" and store.source_unit("U0") == "Hartree"
        assert store.unit("alpha") == "Angstrom^3" and store.source_unit("alpha") == "Bohr^3"
        assert len(store.attrs["source_sha256"]) == 64


def test_md17_npz_round_trip(tmp_path, capsys):
    src = shared("md17/ethanol_ccsd_t-train.npz")
    out = tmp_path / "md17.h5"
    convert(capsys, src, out)  # format guessed from the npz keys
    raw = np.load(src)
    e_ev = raw["E"].ravel() * KCAL_PER_MOL
    assert e_ev[0] == pytest.approx(raw["E"].ravel()[0] / 23.060548, rel=1e-12)
    with open_store(out) as store:
        np.testing.assert_allclose(store.property("energy"), e_ev, rtol=1e-12)
        assert store.attrs["meta.theory"]
    ds, batch = whole_batch(out, targets=["energy", "forces"])
    n, k = raw["R"].shape[:2]
    torch.testing.assert_close(batch.positions, torch.tensor(raw["R"].reshape(-1, 3), dtype=torch.float32))
    torch.testing.assert_close(batch.numbers, torch.from_numpy(np.tile(raw["z"], n)).long())
    torch.testing.assert_close(batch.targets[keys.ENERGY], torch.tensor(e_ev, dtype=torch.float32))
    torch.testing.assert_close(
        batch.targets[keys.FORCES], torch.tensor(raw["F"].reshape(-1, 3) * KCAL_PER_MOL, dtype=torch.float32)
    )
    assert batch.molecule.shape == (n * k,)


def test_qm7_round_trip(tmp_path, capsys):
    from atomnet.data.qm7 import read_qm7

    src, hof = shared("qm7/qm7.tar.gz"), shared("qm7/hof_qm7.txt")
    out = tmp_path / "qm7.h5"
    convert(capsys, src, out, "--limit", 150, "--hof", hof)
    table = read_qm7(src, hof, limit=150)
    _, batch = whole_batch(out)
    torch.testing.assert_close(batch.positions, torch.tensor(table.positions, dtype=torch.float32))
    torch.testing.assert_close(
        batch.targets[keys.ENERGY],
        torch.tensor(table.properties["energy"] * KCAL_PER_MOL, dtype=torch.float32),
    )


def test_rmd17_extxyz_round_trip(tmp_path, capsys):
    pytest.importorskip("atomnet.data.ase_io", reason="ASE reader not available")
    src = shared("rmd17/rmd17_ethanol_1000.xyz")
    out = tmp_path / "rmd17.h5"
    convert(capsys, src, out, "--energy-unit", "kcal/mol", "--limit", 300)
    # direct parse of the extxyz text: count, header with energy=..., lines "El x y z fx fy fz"
    lines, e_kcal, rows = src.read_text().splitlines(), [], []
    start = 0
    while len(e_kcal) < 300:
        n = int(lines[start])
        e_kcal.append(float(lines[start + 1].split("energy=")[1].split()[0]))
        rows += [line.split()[1:7] for line in lines[start + 2 : start + 2 + n]]
        start += n + 2
    e_kcal, rows = np.array(e_kcal), np.array(rows, dtype=float)
    pos, f_kcal = rows[:, :3], rows[:, 3:]
    _, batch = whole_batch(out, targets=["energy", "forces"])
    assert batch.n_molecules == 300
    torch.testing.assert_close(
        batch.targets[keys.ENERGY], torch.tensor(e_kcal / 23.060548, dtype=torch.float32)
    )
    torch.testing.assert_close(
        batch.targets[keys.FORCES], torch.tensor(f_kcal * KCAL_PER_MOL, dtype=torch.float32)
    )
    torch.testing.assert_close(batch.positions, torch.tensor(pos, dtype=torch.float32))


def one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith("atomnet data: error:"), err
    for fragment in fragments:
        assert fragment in err
    return err


def test_bad_inputs_give_one_line(tmp_path, capsys):
    bad_npz = tmp_path / "broken.npz"
    bad_npz.write_text("not a zip file")
    one_line_error(capsys, ["data", "convert", str(bad_npz), str(tmp_path / "o.h5")], "broken.npz")
    unknown = tmp_path / "data.weird"
    unknown.write_text("1 2 3")
    one_line_error(capsys, ["data", "convert", str(unknown), str(tmp_path / "o.h5")], "--format")
    one_line_error(
        capsys, ["data", "convert", str(tmp_path / "nope.npz"), str(tmp_path / "o.h5")], "nope.npz"
    )
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    one_line_error(capsys, ["data", "info", str(corrupt)], "corrupt.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.npz", "corrupt.h5", "data.weird"]


def test_info_prints_units(tmp_path, capsys):
    src = shared("md17/ethanol_ccsd_t-train.npz")
    out = tmp_path / "m.h5"
    convert(capsys, src, out)
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "molecules: 1000" in text and "C 2000" in text and "H 6000" in text and "O 1000" in text
    assert "kcal/mol/Angstrom" in text and "eV/Angstrom" in text


def test_download_command(tmp_path, capsys, monkeypatch):
    download = pytest.importorskip("atomnet.data.download", reason="downloader not available")
    calls = []

    def fake(name, dest):
        calls.append((name, dest))
        return [Path(dest) / "file.npz"]

    monkeypatch.setattr(download, "download", fake)
    assert main(["data", "download", "rmd17", "--dest", str(tmp_path)]) == 0
    assert calls == [("rmd17", str(tmp_path))]
    assert "file.npz" in capsys.readouterr().out
