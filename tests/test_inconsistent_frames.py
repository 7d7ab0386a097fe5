"""Inconsistent frames: a property present in some frames of a file and missing in others is never dropped
silently; ``skip_incomplete`` / ``--skip-incomplete`` keeps only the frames that have it; ``atomnet data
info`` counts every property (stores: molecules with finite values; raw files: a frame-by-frame scan)."""

from __future__ import annotations

from pathlib import Path

import ase
import ase.db
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from atomnet.cli import main
from atomnet.data.ase_io import read_ase, scan_ase
from atomnet.data.store import Store, write_store
from atomnet.data.table import MoleculeTable
from atomnet.errors import DataFormatError

pytestmark = pytest.mark.usefixtures("one_thread")

N = 6


def frames(no_energy=(), no_forces=()) -> list[ase.Atoms]:
    """N water frames with energy −(k+1) eV and forces k (eV/Å), except where told."""
    out = []
    for k in range(N):
        atoms = ase.Atoms("H2O", positions=np.eye(3) * (1.0 + 0.01 * k))
        results = {}
        if k not in no_energy:
            results["energy"] = -1.0 - k
        if k not in no_forces:
            results["forces"] = np.full((3, 3), float(k))
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


def write(path: Path, images) -> Path:
    if path.suffix == ".db":
        with ase.db.connect(path, append=False) as db:
            for atoms in images:
                db.write(atoms)
    else:
        ase.io.write(path, images)
    return path


@pytest.fixture(params=["xyz", "db"])
def suffix(request) -> str:
    return request.param


def one_line_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -------------------------------------------------------------------------------------------- reader
def test_energy_missing_in_some_frames_is_an_error_naming_the_first(tmp_path, suffix):
    path = write(tmp_path / f"e.{suffix}", frames(no_energy=(2, 4)))
    with pytest.raises(DataFormatError) as info:
        read_ase(path)  # no key given: before, the energy was silently left out of every frame
    text = str(info.value)
    assert text.startswith(f"{path} (frame 2): no energy 'energy'")
    assert f"it is in {N - 2} of {N} frames" in text and "--skip-incomplete" in text
    assert len(text.splitlines()) == 1


def test_forces_missing_in_some_frames_is_an_error(tmp_path, suffix):
    path = write(tmp_path / f"f.{suffix}", frames(no_forces=(3,)))
    with pytest.raises(DataFormatError, match=rf"\(frame 3\): no forces 'forces'.*{N - 1} of {N} frames"):
        read_ase(path)


def test_skip_incomplete_keeps_exactly_the_complete_frames(tmp_path, suffix):
    path = write(tmp_path / f"s.{suffix}", frames(no_energy=(1,), no_forces=(4,)))
    table = read_ase(path, skip_incomplete=True)
    kept = [k for k in range(N) if k not in (1, 4)]
    np.testing.assert_array_equal(table.properties["energy"], [-1.0 - k for k in kept])
    np.testing.assert_array_equal(table.properties["forces"], np.repeat(kept, 9).reshape(-1, 3).astype(float))
    assert table.n_molecules == len(kept) and table.meta["skipped_incomplete_frames"] == "2"
    if suffix == "xyz":  # ASE db rows carry their own ids (1-based row numbers)
        np.testing.assert_array_equal(table.ids, kept)
    np.testing.assert_allclose(table.positions[::3, 0], [1.0 + 0.01 * k for k in kept])


def test_consistent_files_are_unchanged_by_the_option(tmp_path):
    complete = write(tmp_path / "c.xyz", frames())
    a, b = read_ase(complete), read_ase(complete, skip_incomplete=True)
    np.testing.assert_array_equal(a.properties["energy"], b.properties["energy"])
    assert b.meta["skipped_incomplete_frames"] == "0" and a.n_molecules == N
    bare = write(tmp_path / "bare.xyz", frames(no_energy=range(N), no_forces=range(N)))
    assert read_ase(bare).properties == {}  # absent everywhere: nothing to drop, no error


def test_explicit_key_and_nothing_left(tmp_path):
    path = write(tmp_path / "k.xyz", frames(no_energy=(0,)))
    with pytest.raises(DataFormatError, match=r"\(frame 0\): no energy 'energy'"):
        read_ase(path, energy_key="energy")
    assert read_ase(path, energy_key="energy", skip_incomplete=True).n_molecules == N - 1
    with pytest.raises(DataFormatError, match=r"no frame has energy 'dft'.*nothing left"):
        read_ase(path, energy_key="dft", skip_incomplete=True)


# -------------------------------------------------------------------------------------------- commands
def test_convert_refuses_then_skips_with_the_flag(tmp_path, capsys):
    path = write(tmp_path / "p.xyz", frames(no_energy=(2,)))
    out = tmp_path / "p.h5"
    err = one_line_error(capsys, ["data", "convert", path, out, "--no-progress"])
    assert f"{path} (frame 2): no energy 'energy'" in err and not out.exists()
    assert main(["data", "convert", str(path), str(out), "--no-progress", "--skip-incomplete"]) == 0
    assert "skipped incomplete frames: 1" in capsys.readouterr().out
    with Store(out) as store:
        np.testing.assert_allclose(store.property("energy"), [-1.0 - k for k in range(N) if k != 2])
        np.testing.assert_array_equal(store.file["ids"][()], [0, 1, 3, 4, 5])
        assert store.attrs["meta.skipped_incomplete_frames"] == "1"


def test_info_scans_a_raw_file(tmp_path, capsys):
    images = frames(no_energy=(2, 3), no_forces=(0,))
    images[4].info["charge"] = 0
    path = write(tmp_path / "r.xyz", images)
    scan = scan_ase(path)
    assert scan["frames"] == N
    p = scan["properties"]
    assert (p["energy"]["frames"], p["energy"]["first_missing"]) == (N - 2, 2)
    assert (p["forces"]["frames"], p["forces"]["first_missing"], p["forces"]["per_atom"]) == (N - 1, 0, True)
    assert (p["charge"]["frames"], p["charge"]["first_missing"]) == (1, 0)
    capsys.readouterr()
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split() for line in out.splitlines()[2:] if not line.startswith("incomplete")
    }
    assert rows["energy"][-4:] == [str(N - 2), "/", str(N), "2"]
    assert rows["forces"][-4:] == [str(N - 1), "/", str(N), "0"]
    assert "incomplete: charge, energy, forces" in out


def test_store_summary_counts_molecules_with_finite_values(tmp_path, capsys):
    n_atoms = np.array([2, 3, 1, 2])
    total = int(n_atoms.sum())
    energy = np.array([-1.0, np.nan, -3.0, np.nan])
    forces = np.zeros((total, 3))
    forces[3] = np.nan  # an atom of molecule 1
    forces[7, 2] = np.inf  # an atom of molecule 3
    table = MoleculeTable(
        numbers=np.ones(total, int),
        positions=np.arange(total * 3, dtype=float).reshape(-1, 3),
        n_atoms=n_atoms,
        properties={"energy": energy, "forces": forces, "label": np.arange(4)},
        units={"energy": "eV", "forces": "eV/Angstrom"},
        per_atom={"forces"},
    )
    path = write_store(table, tmp_path / "gaps.h5", progress=False)
    with Store(path) as store:
        props = store.summary()["properties"]
    assert {k: v["molecules"] for k, v in props.items()} == {"energy": 2, "label": 4, "forces": 2}
    assert main(["data", "info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("property"))
    assert "molecules" in header.split()
    end = header.index("molecules") + len("molecules")  # the count is right-aligned under the header
    counts = {line.split()[0]: line[end - 10 : end].strip() for line in lines[lines.index(header) + 1 :]}
    assert counts == {"energy": "2", "label": "4", "forces": "2"}


def test_info_of_a_raw_npz(shared_data, capsys):
    src = shared_data / "md17" / "ethanol_ccsd_t-train.npz"
    raw = np.load(src)
    assert main(["data", "info", str(src)]) == 0
    out = capsys.readouterr().out
    n = len(raw["E"])
    assert out.splitlines()[0].endswith(f"{n} molecules (raw file, md17 reader; not converted)")
    assert f"{n} / {n}" in next(line for line in out.splitlines() if line.startswith("energy"))


def test_training_config_opts_in_with_data_skip_incomplete(tmp_path):
    """``data.skip_incomplete`` reaches the conversion of a raw file inside ``atomnet train``."""
    from atomnet.errors import AtomNetError
    from atomnet.training.commands import train
    from atomnet.training.config import config_from_dict

    images = [a for _ in range(5) for a in frames(no_forces=(2,))]  # 30 frames, 5 without forces
    path = write(tmp_path / "water.extxyz", images)

    def cfg(skip: bool):
        return config_from_dict(
            {
                "model": {"name": "schnet", "n_atom_basis": 4, "n_filters": 4, "n_interactions": 1, "n_rbf": 4},
                "data": {"path": str(path), "split": [15, 5, 5], "batch_size": 5, "skip_incomplete": skip,
                         "cache_dir": str(tmp_path / "cache")},
                "train": {"max_epochs": 1, "progress_bar": False, "plots": False, "out_dir": str(tmp_path)},
            }
        )  # fmt: skip

    with pytest.raises(AtomNetError, match="frame 2"):
        train(cfg(False), run_dir=tmp_path / "a", quiet=True)
    summary = train(cfg(True), run_dir=tmp_path / "b", quiet=True)
    assert summary["metrics"]["n_molecules"] == 5
    (cached,) = (tmp_path / "cache").rglob("*.h5")  # the refused conversion left no store behind
    with Store(cached) as s:
        assert s.n_molecules == 25
