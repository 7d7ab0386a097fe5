"""Format versions: model files, checkpoints and stores written by a newer atomnet are refused naming both
versions; every file the current code writes (and the shipped models) still loads; the docs list every key."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from ase.build import molecule

import atomnet
from atomnet.cli import main
from atomnet.data.ase_io import read_ase
from atomnet.data.store import FORMAT_VERSION, GROUPS, LAYOUT, Store, write_store
from atomnet.errors import AtomNetError, DataFormatError
from atomnet.loading import CHECKPOINT_VERSION
from atomnet.models.registry import MODEL_FILE_FORMAT, MODEL_FILE_VERSION, model_to_dict, save_model
from atomnet.models.schnet import SchNet

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
XTB = ROOT / "data" / "ethanol_xtb.extxyz"
TINY = dict(n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10)


def tiny_model() -> SchNet:
    torch.manual_seed(0)
    return SchNet(**TINY)


def one_line(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    table = read_ase(XTB, index="0:4", energy_unit="eV")
    return write_store(table, tmp_path_factory.mktemp("store") / "ethanol4.h5", progress=False)


# ------------------------------------------------------------------------------------- model files
def test_current_model_files_round_trip_with_their_version(tmp_path):
    model = tiny_model()
    path = save_model(model, tmp_path / "m.pt", meta={"note": "x"})
    content = torch.load(path, weights_only=True)
    assert content["format"] == MODEL_FILE_FORMAT and content["version"] == MODEL_FILE_VERSION
    batch = atomnet.batch_from_atoms([molecule("H2O")], cutoff=4.0)
    torch.testing.assert_close(
        atomnet.load_model(path)(batch)["energy"], atomnet.Potential(model).eval()(batch)["energy"]
    )


def test_shipped_models_carry_a_version_this_code_reads():
    names = [entry["name"] for entry in atomnet.list_models()]
    assert len(names) >= 6
    pretrained = Path(atomnet.__file__).parent / "pretrained"
    for name in names:
        entry = {e["name"]: e for e in atomnet.list_models()}[name]
        content = torch.load(pretrained / entry["file"], weights_only=True)
        assert 1 <= content["version"] <= MODEL_FILE_VERSION, name
        assert not atomnet.load_model(name).training


def test_newer_model_file_names_both_versions(tmp_path, capsys):
    newer = MODEL_FILE_VERSION + 1
    content = model_to_dict(tiny_model())
    content["version"] = newer
    path = tmp_path / "future.pt"
    torch.save(content, path)
    expected = (
        f"{path}: written by atomnet model-file format version {newer}; this atomnet reads up to format "
        f"version {MODEL_FILE_VERSION}: upgrade atomnet"
    )
    with pytest.raises(AtomNetError) as info:
        atomnet.load_model(path)
    assert str(info.value) == expected
    assert one_line(capsys, ["evaluate", path, XTB, "--out", tmp_path / "out"]).endswith(expected)


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, True, None])
def test_invalid_model_file_versions_are_refused(tmp_path, version):
    content = model_to_dict(tiny_model())
    if version is None:
        del content["version"]
    else:
        content["version"] = version
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(AtomNetError, match=rf"odd\.pt: invalid model-file format version {version!r}"):
        atomnet.load_model(path)


def _checkpoint(model, version=None) -> dict:
    info = {"format": "atomnet-lightning", "model": model.name, "hparams": dict(model.hparams)}
    info.update(weights="potential.model.", config={})
    if version is not None:
        info["version"] = version
    state = {f"potential.model.{k}": v for k, v in model.state_dict().items()}
    return {"epoch": 3, "global_step": 9, "state_dict": state, "atomnet": info}


def test_checkpoints_without_or_with_the_current_version_load_newer_are_refused(tmp_path, capsys):
    model = tiny_model()
    batch = atomnet.batch_from_atoms([molecule("H2O")], cutoff=4.0)
    reference = atomnet.Potential(model).eval()(batch)["energy"]
    for version in (None, CHECKPOINT_VERSION):
        torch.save(_checkpoint(model, version), tmp_path / "ok.ckpt")
        torch.testing.assert_close(atomnet.load_model(tmp_path / "ok.ckpt")(batch)["energy"], reference)
    path = tmp_path / "future.ckpt"
    torch.save(_checkpoint(model, CHECKPOINT_VERSION + 1), path)
    expected = (
        f"written by atomnet checkpoint format version {CHECKPOINT_VERSION + 1}; this atomnet reads up to "
        f"format version {CHECKPOINT_VERSION}: upgrade atomnet"
    )
    with pytest.raises(AtomNetError, match=expected):
        atomnet.load_model(path)
    assert expected in one_line(capsys, ["md", path, XTB, "--steps", 1, "--out", tmp_path / "md"])


# ------------------------------------------------------------------------------------- stores
def test_current_store_carries_its_version(store):
    with h5py.File(store, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
    with Store(store) as s:
        assert s.n_molecules == 4


def _with_version(store: Path, path: Path, version) -> Path:
    path.write_bytes(store.read_bytes())
    with h5py.File(path, "a") as f:
        if version is None:
            del f.attrs["format_version"]
        else:
            f.attrs["format_version"] = version
    return path


def test_newer_store_names_both_versions(store, tmp_path, capsys):
    newer = FORMAT_VERSION + 1
    path = _with_version(store, tmp_path / "future.h5", newer)
    expected = (
        f"{path}: written by atomnet store format version {newer}; this atomnet reads up to format version "
        f"{FORMAT_VERSION}: upgrade atomnet"
    )
    with pytest.raises(DataFormatError) as info:
        Store(path)
    assert str(info.value) == expected
    assert one_line(capsys, ["data", "info", path]).endswith(expected)


@pytest.mark.parametrize("version", [0, "1", 1.5, None])
def test_invalid_store_versions_are_refused(store, tmp_path, version):
    path = _with_version(store, tmp_path / "odd.h5", version)
    with pytest.raises(DataFormatError, match=r"odd\.h5: store format version .* is not supported"):
        Store(path)


# ------------------------------------------------------------------------------------- documentation
def test_model_format_doc_lists_every_key_and_the_version():
    text = (ROOT / "docs" / "model_format.md").read_text()
    content = model_to_dict(tiny_model(), meta={})
    for key in content:
        assert f"`{key}`" in text, key
    for key in ("weights", "hparams", "config", "epoch", "global_step"):  # the checkpoint entry
        assert f"`{key}`" in text, key
    assert f"`MODEL_FILE_VERSION = {MODEL_FILE_VERSION}`" in text
    assert "weights_only=True" in text


def test_store_format_doc_lists_every_dataset_and_the_version():
    text = (ROOT / "docs" / "store_format.md").read_text()
    for name in [*LAYOUT, *GROUPS, "unit", "source_unit", "format", "format_version"]:
        assert f"`{name}`" in text, name
    assert f"`FORMAT_VERSION = {FORMAT_VERSION}`" in text
    assert np.int8(0).dtype.name in text  # dtypes are spelled as numpy names
