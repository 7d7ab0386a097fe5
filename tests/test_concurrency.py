"""Concurrency (issue 17): readers of one store next to a conversion, DataLoader workers, trainings started
at once in one parent folder, and a run folder that holds another run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from atomnet.cli import main
from atomnet.data.ase_io import read_ase
from atomnet.data.dataset import pass_through
from atomnet.data.store import Store, write_store
from atomnet.training.datamodule import EpochSampler, open_dataset

XTB = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

#: a reader process: iterates over every molecule of a store in batches and prints checksums
READER = r"""
import sys, numpy as np
from atomnet.training.datamodule import open_dataset
ds = open_dataset(sys.argv[1], 5.0, "energy", "forces", None)
e = p = f = 0.0
for start in range(0, len(ds), 64):
    b = ds.__getitems__(list(range(start, min(start + 64, len(ds)))))
    e += float(b.targets["energy"].double().sum()); f += float(b.targets["forces"].double().abs().sum())
    p += float(b.positions.double().sum()) + float(b.pair_i.numel())
print(repr((e, p, f)))
"""


def checksums(store: Path) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", READER, str(store)], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    return eval(out.stdout.strip())  # noqa: S307 - our own repr of a tuple of floats


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    table = read_ase(XTB, index="0:1000", energy_unit="eV")
    return write_store(table, tmp_path_factory.mktemp("data") / "xtb.h5", progress=False)


def test_two_readers_while_a_third_process_converts(store, tmp_path):
    import ase.io

    expected = checksums(store)
    source = tmp_path / "frames.extxyz"
    ase.io.write(source, ase.io.read(XTB, index="1000:1600"))
    other = tmp_path / "other.h5"
    argv = [sys.executable, "-m", "atomnet.cli", "data", "convert", str(source), str(other), "--energy-unit", "eV"]  # fmt: skip
    convert = subprocess.Popen(
        argv,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(store)], env=ENV, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        outs = [r.communicate(timeout=300)[0] for r in readers]
        _, err = convert.communicate(timeout=300)
    finally:
        for p in (*readers, convert):
            p.kill()
    assert convert.returncode == 0, err[-2000:]
    for out in outs:
        assert eval(out.strip()) == expected  # noqa: S307 - bit-identical sums while the store is shared
    sequential = tmp_path / "sequential.h5"
    write_store(read_ase(source, energy_unit="eV"), sequential, progress=False)
    with Store(other) as a, Store(sequential) as b:
        assert a.n_molecules == b.n_molecules == 600
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.property("energy"), b.property("energy"))


def test_dataloader_workers_give_the_batches_of_the_main_process(store):
    """Each worker opens the store itself (memory maps opened lazily, never pickled): the batches, in order,
    equal those read in the main process."""
    ds = open_dataset(store, 5.0, "energy", "forces", np.arange(0, 1000, 3))

    def batches(workers: int) -> list:
        sampler = EpochSampler(len(ds), seed=3, shuffle=True)
        loader = DataLoader(ds, batch_size=16, sampler=sampler, collate_fn=pass_through, num_workers=workers)
        return list(loader)

    ref, par = batches(0), batches(2)
    assert len(ref) == len(par) == -(-len(ds) // 16)
    for a, b in zip(ref, par, strict=True):
        for name in ("positions", "numbers", "pair_i", "pair_j", "molecule"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.targets["energy"], b.targets["energy"])
        assert torch.equal(a.targets["index"], b.targets["index"])


def _config(path: Path, store: Path, out: Path) -> Path:
    cfg = {
        "model": {"name": "schnet", "n_atom_basis": 8, "n_filters": 8, "n_interactions": 1, "n_rbf": 8},
        "data": {"path": str(store), "split": [40, 10, 10], "batch_size": 8},
        "train": {"max_epochs": 2, "num_threads": 1, "progress_bar": False, "plots": False},
    }
    cfg["train"].update(out_dir=str(out), name="run")
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_trainings_started_together_get_their_own_folders(tmp_path):
    small = write_store(read_ase(XTB, index="0:60", energy_unit="eV"), tmp_path / "s.h5", progress=False)
    cfg = _config(tmp_path / "c.yaml", small, tmp_path / "runs")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "atomnet.cli", "train", str(cfg)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        errs = [p.communicate(timeout=600)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [e[-1500:] for e in errs]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == ["run", "run-2"]
    for name in folders:
        assert (tmp_path / "runs" / name / "model.pt").is_file()
        assert (tmp_path / "runs" / name / "summary.json").is_file()


def test_a_run_folder_holding_another_run_is_refused_unless_asked(tmp_path, capsys):
    small = write_store(read_ase(XTB, index="0:60", energy_unit="eV"), tmp_path / "s.h5", progress=False)
    cfg = _config(tmp_path / "c.yaml", small, tmp_path / "runs")
    run = tmp_path / "mine"
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    before = (run / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (run / "model.pt").read_bytes() == before  # untouched
    assert main(["train", str(cfg), "--run-dir", str(run), "--overwrite", "--set", "train.seed=1"]) == 0
    assert (run / "model.pt").read_bytes() != before
