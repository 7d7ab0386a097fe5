"""Untrusted files: pickled objects with a malicious ``__reduce__`` are refused without running, and stores
with lying metadata are refused before any allocation of the size they claim.

Every payload is real: loading it unsafely (``torch.load(weights_only=False)``, ``np.load(allow_pickle=True)``,
``pickle.loads``) creates a marker file, which each test checks first. The safe paths users take must then
refuse the file with a one-line :class:`AtomNetError` naming it, and leave no marker.
"""

from __future__ import annotations

import os
import pickle
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

import atomnet
from atomnet.cli import main
from atomnet.data.ase_io import read_ase
from atomnet.data.splits import Split, load_split, save_split
from atomnet.data.store import FORMAT_NAME, FORMAT_VERSION, Store, write_store
from atomnet.errors import AtomNetError, DataFormatError
from atomnet.models import registry
from atomnet.models.registry import MODELS, model_to_dict, save_model
from atomnet.models.schnet import SchNet

pytestmark = pytest.mark.usefixtures("one_thread")

XTB = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"
TINY = dict(n_atom_basis=8, n_filters=8, n_interactions=1, n_rbf=8, cutoff=4.0, max_z=10)


class OpenPayload:
    """Unpickling calls ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class SystemPayload:
    """Unpickling runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def tiny_model() -> SchNet:
    torch.manual_seed(0)
    return SchNet(**TINY)


def checkpoint_dict(model) -> dict:
    """A dict shaped like the Lightning checkpoints ``atomnet train`` writes."""
    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"potential.model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [],
        "atomnet": {
            "format": "atomnet-lightning",
            "model": model.name,
            "hparams": dict(model.hparams),
            "weights": "potential.model.",
            "config": {},
        },
    }


def _model_file(path: Path, marker: Path, where: str) -> Path:
    model = tiny_model()
    content = model_to_dict(model, meta={"units": {"energy": "eV"}})
    if where == "object":
        torch.save(OpenPayload(marker), path)
    elif where == "meta":
        content["meta"]["note"] = OpenPayload(marker)
        torch.save(content, path)
    elif where == "hparams":
        content["hparams"]["cutoff"] = OpenPayload(marker)
        torch.save(content, path)
    elif where == "state_dict":
        content["state_dict"]["rbf.centres"] = OpenPayload(marker)
        torch.save(content, path)
    elif where == "checkpoint":
        ckpt = checkpoint_dict(model)
        ckpt["optimizer_states"] = [{"state": OpenPayload(marker)}]
        torch.save(ckpt, path)
    elif where == "legacy-format":
        content["meta"]["note"] = OpenPayload(marker)
        torch.save(content, path, _use_new_zipfile_serialization=False)
    elif where == "os.system":
        content["meta"]["note"] = SystemPayload(marker)
        torch.save(content, path)
    elif where == "plain-pickle":
        content["meta"]["note"] = OpenPayload(marker)
        path.write_bytes(pickle.dumps(content))
    return path


MODEL_PAYLOADS = [
    "object",
    "meta",
    "hparams",
    "state_dict",
    "checkpoint",
    "legacy-format",
    "os.system",
    "plain-pickle",
]


def load_unsafely(path: Path, where: str) -> None:
    """What must never happen: the full unpickler runs the payload."""
    if where == "plain-pickle":
        pickle.loads(path.read_bytes())
    else:
        try:
            torch.load(path, weights_only=False)
        except Exception:  # noqa: BLE001 - the payload ran before any later failure
            pass


def assert_cli_refuses(capsys, argv: list[str], path: Path, marker: Path, *fragments: str) -> str:
    """``atomnet ARGV`` exits 2 with one line on stderr naming ``path``; the payload did not run."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not marker.exists()
    return err


@pytest.fixture(scope="module")
def structure(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("structure") / "water.xyz"
    write(path, molecule("H2O"))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Five xTB ethanol frames (energies and forces, eV) as a store."""
    table = read_ase(XTB, index="0:5", energy_unit="eV")
    return write_store(table, tmp_path_factory.mktemp("store") / "ethanol5.h5", progress=False)


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    return save_model(
        tiny_model(), tmp_path_factory.mktemp("model") / "good.pt", meta={"energy_key": "energy"}
    )


# ------------------------------------------------------------------------------------- model files
def test_clean_variants_load(tmp_path):
    """The containers used below are valid without their payloads: only the payload causes the refusals."""
    model = tiny_model()
    torch.save(checkpoint_dict(model), tmp_path / "clean.ckpt")
    torch.save(model_to_dict(model), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    batch = atomnet.batch_from_atoms([molecule("H2O")], cutoff=4.0)
    reference = atomnet.Potential(model).eval()(batch)["energy"]
    for name in ("clean.ckpt", "legacy.pt"):
        torch.testing.assert_close(atomnet.load_model(tmp_path / name)(batch)["energy"], reference)


@pytest.mark.parametrize("where", MODEL_PAYLOADS)
def test_model_payload_is_real_and_refused_by_every_loader(where, tmp_path, capsys, structure):
    marker = tmp_path / "marker"
    path = _model_file(tmp_path / f"evil-{where}.pt", marker, where)
    load_unsafely(path, where)
    assert marker.exists(), "the payload must really run when unpickled unsafely"
    marker.unlink()

    with pytest.raises(AtomNetError) as info:
        atomnet.load_model(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(path) in message
    assert "weights_only" in message
    assert not marker.exists()
    if where not in ("plain-pickle", "legacy-format"):  # torch names the refused global in these formats
        func = os.system if where == "os.system" else open
        assert f"pickled Python object ({func.__module__}.{func.__name__})" in message, message

    out = tmp_path / "out"
    for argv in (
        ["evaluate", path, XTB, "--out", out],
        ["md", path, structure, "--steps", 1, "--out", out, "--no-progress"],
        ["relax", path, structure],
        ["vibrate", path, structure],
        ["train", "--resume", path],
    ):
        assert_cli_refuses(capsys, argv, path, marker, "weights_only")
    assert not out.exists()


def test_absurd_hyperparameters_are_refused_before_the_model_is_built(tmp_path, monkeypatch):
    """A tiny file claiming 10¹² features: refused before the model is built at all (an integer
    hyperparameter beyond the stored weights); a plausible size that disagrees with the weights is found by
    loading them into a shell built on the meta device."""
    content = model_to_dict(tiny_model())
    content["hparams"]["n_atom_basis"] = 10**12
    path = tmp_path / "huge.pt"
    torch.save(content, path)
    devices = []

    class Spy(SchNet):
        def __init__(self, **hparams):
            devices.append(str(torch.get_default_device()))
            super().__init__(**hparams)

    monkeypatch.setitem(MODELS, "schnet", Spy)
    with pytest.raises(AtomNetError, match=r"huge\.pt: hyperparameter n_atom_basis=1000000000000 is larger"):
        atomnet.load_model(path)
    assert devices == [], devices  # not even a shape-only shell

    # a model that builds on the meta device (CMNet) is compared tensor by tensor
    from atomnet.models.cmnet import CMNet

    cm = model_to_dict(CMNet(max_atoms=5, hidden=[4]))
    cm["hparams"]["hidden"] = [999]  # within the bound: the meta shell finds the mismatch
    torch.save(cm, tmp_path / "huge_cm.pt")
    devices.clear()

    class CMSpy(CMNet):
        def __init__(self, **hparams):
            devices.append(str(torch.get_default_device()))
            super().__init__(**hparams)

    monkeypatch.setitem(MODELS, "cmnet", CMSpy)
    with pytest.raises(AtomNetError, match=r"huge_cm\.pt: weights do not match.*999"):
        atomnet.load_model(tmp_path / "huge_cm.pt")
    assert devices == ["meta"]


def test_compressed_bomb_is_refused(tmp_path):
    """torch reads deflate-compressed zip members: 64 MB of weights in a ~100 kB file is refused unread."""
    content = model_to_dict(tiny_model())
    content["state_dict"]["padding"] = torch.zeros(16 * 1024 * 1024)
    plain = tmp_path / "plain.pt"
    torch.save(content, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < 1_000_000
    assert torch.load(bomb, weights_only=True)["state_dict"]["padding"].numel() == 16 * 1024 * 1024  # real
    with pytest.raises(AtomNetError, match=r"bomb\.pt: refused: its compressed members expand"):
        registry.read_safely(bomb)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.update(model=7), "model name must be a string"),
        (lambda c: c.update(hparams=[1, 2]), "hyperparameters must be a dict"),
        (lambda c: c.update(state_dict={"w": [1.0]}), "must be a dict of named tensors"),
        (lambda c: c.update(model="gpt"), "unknown model 'gpt'"),
        (lambda c: c.pop("state_dict"), "lacks ['state_dict']"),
        (lambda c: c.update(meta=torch.zeros(2)), "'meta' must be a dict"),
        (lambda c: c["hparams"].update(n_rbf=-3), "cannot build model"),
        (lambda c: c["hparams"].update(colour="red"), "unexpected keyword argument 'colour'"),
    ],
)
def test_hostile_but_unpicklable_content_is_a_one_line_error(tmp_path, mutate, message):
    content = model_to_dict(tiny_model())
    mutate(content)
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(AtomNetError) as info:
        atomnet.load_model(path)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith(str(path)) and message in text, text


# ------------------------------------------------------------------------------------- split files
@pytest.mark.parametrize("key", ["train", "seed", "notes"])
def test_split_payload_is_real_and_refused(key, tmp_path, capsys, store, good_model):
    marker = tmp_path / "marker"
    arrays = {"train": np.arange(3), "val": np.arange(3, 4), "test": np.arange(4, 5), "seed": np.int64(0)}
    arrays[key] = np.array([OpenPayload(marker)], dtype=object)
    path = tmp_path / f"evil-{key}.npz"
    np.savez(path, **arrays)
    with np.load(path, allow_pickle=True) as data:
        data[key]
    assert marker.exists()
    marker.unlink()

    with pytest.raises(DataFormatError) as info:
        load_split(path)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and str(path) in text
    assert f"array {key!r} holds pickled Python objects" in text
    assert not marker.exists()
    argv = ["evaluate", good_model, store, "--split-file", path, "--out", tmp_path / "out"]
    assert_cli_refuses(capsys, argv, path, marker, "pickled Python objects")


def test_split_header_claiming_a_trillion_indices_is_refused_unallocated(tmp_path):
    path = save_split(tmp_path / "split.npz", Split(np.arange(3), np.arange(3, 4), np.arange(4, 5), 0))
    lying = tmp_path / "lying.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(lying, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "train.npy":
                data = data.replace(b"'shape': (3,)", b"'shape': (1000000000000,)")
            dst.writestr(info.filename, data)
    tracemalloc.start()
    try:
        with pytest.raises(
            DataFormatError, match=r"lying\.npz: array 'train' claims shape \(1000000000000,\)"
        ):
            load_split(lying)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


# ------------------------------------------------------------------------------------- stores
def _store_payload(path: Path, store: Path, marker: Path, where: str) -> Path:
    """A copy of a valid store with a pickle (``__reduce__`` creating ``marker``) hidden in it."""
    path.write_bytes(store.read_bytes())
    text = pickle.dumps(OpenPayload(marker), protocol=0).decode("latin-1")  # protocol 0 is ASCII
    blob = np.void(pickle.dumps(OpenPayload(marker)))
    with h5py.File(path, "a") as f:
        if where == "opaque property":
            f["properties"]["evil"] = np.full(len(f["offsets"]) - 1, blob)
        elif where == "opaque file attribute":
            f.attrs["meta.note"] = blob
        elif where == "opaque unit attribute":
            f["positions"].attrs["unit"] = blob
        elif where == "string dataset":
            f["payload"] = np.array([text], dtype=h5py.string_dtype("ascii"))
        elif where == "string property":
            n = len(f["offsets"]) - 1
            f["properties"]["evil"] = np.array([text] * n, dtype=h5py.string_dtype("ascii"))
    return path


def _unpickle_from_store(path: Path, where: str) -> None:
    with h5py.File(path, "r") as f:
        if where == "opaque property":
            pickle.loads(f["properties/evil"][0].tobytes())
        elif where == "opaque file attribute":
            pickle.loads(f.attrs["meta.note"].tobytes())
        elif where == "opaque unit attribute":
            pickle.loads(f["positions"].attrs["unit"].tobytes())
        elif where == "string dataset":
            pickle.loads(f["payload"][0])
        elif where == "string property":
            pickle.loads(f["properties/evil"][0])


#: where the pickle hides → what the refusal says
STORE_PAYLOADS = {
    "opaque property": "dataset 'properties/evil' has dtype |V",
    "opaque file attribute": "file attribute 'meta.note' has dtype |V",
    "opaque unit attribute": "dataset 'positions' attribute 'unit' has dtype |V",
    "string dataset": "unexpected dataset 'payload'",
    "string property": "dataset 'properties/evil' has dtype object, expected numbers",
}


@pytest.mark.parametrize("where", list(STORE_PAYLOADS))
def test_store_payload_is_real_and_refused(where, tmp_path, capsys, store, good_model):
    marker = tmp_path / "marker"
    path = _store_payload(tmp_path / "evil.h5", store, marker, where)
    _unpickle_from_store(path, where)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(DataFormatError) as info:
        Store(path)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith(str(path)) and STORE_PAYLOADS[where] in text, text
    assert not marker.exists()
    assert_cli_refuses(capsys, ["data", "info", path], path, marker, STORE_PAYLOADS[where])
    argv = ["evaluate", good_model, path, "--out", tmp_path / "out"]
    assert_cli_refuses(capsys, argv, path, marker, STORE_PAYLOADS[where])


def test_training_refuses_a_store_with_a_payload(tmp_path, capsys, store):
    marker = tmp_path / "marker"
    path = _store_payload(tmp_path / "evil.h5", store, marker, "opaque property")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{name: schnet, n_atom_basis: 8, n_filters: 8, n_interactions: 1, n_rbf: 8}}\n"
        f"data: {{path: {path}, split: [3, 1, 1]}}\n"
        f"train: {{max_epochs: 1, out_dir: {tmp_path / 'runs'}, progress_bar: false}}\n"
    )
    assert_cli_refuses(capsys, ["train", config], path, marker, STORE_PAYLOADS["opaque property"])


def _lying_store(path: Path, kind: str) -> Path:
    """A store built with h5py directly: tiny real datasets, lying shapes, offsets or dtypes."""
    n = 5
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        numbers, positions = np.full(n, 6, np.int8), np.zeros((n, 3), np.float32)
        offsets = np.array([0, 2, n], np.int64)
        if kind == "10^12 atoms":
            f.create_dataset("numbers", shape=(10**12,), dtype=np.int8, chunks=(4096,))
            f.create_dataset("positions", shape=(10**12, 3), dtype=np.float32, chunks=(4096, 3))
            offsets = np.array([0, 10**12], np.int64)
        elif kind == "10^12 molecules":
            f.create_dataset("offsets", shape=(10**12,), dtype=np.int64, chunks=(4096,))
        elif kind == "10^12 property values":
            f.create_dataset("properties/energy", shape=(2, 10**12), dtype=np.float64, chunks=(1, 4096))
        elif kind == "offsets past the end":
            offsets = np.array([0, 2, 10**12], np.int64)
        elif kind == "negative count":
            offsets = np.array([0, 4, 2, n], np.int64)
        elif kind == "more offsets than atoms":
            offsets = np.arange(n + 3, dtype=np.int64)
        elif kind == "external data":
            f.create_dataset(
                "numbers", shape=(10**9,), dtype=np.int8, external=[("/dev/zero", 0, h5py.h5f.UNLIMITED)]
            )
        elif kind == "float offsets":
            offsets = offsets.astype(np.float64)
        elif kind == "integer positions":
            positions = positions.astype(np.int32)
        elif kind == "string property":
            f["properties/smiles"] = np.array([b"CC", b"O"])
        elif kind == "foreign dataset":
            f["extra"] = np.zeros(3)
        elif kind == "nested group":
            f["properties/sub/x"] = np.zeros(2)
        elif kind == "soft link":
            f["ids"] = h5py.SoftLink("/offsets")
        elif kind == "external link":
            f["cells"] = h5py.ExternalLink(str(path.with_name("elsewhere.h5")), "/cells")
        for name, data in (("numbers", numbers), ("positions", positions), ("offsets", offsets)):
            if name not in f:
                f[name] = data
    return path


LIES = {
    "10^12 atoms": "dataset 'numbers' claims shape (1000000000000,)",
    "10^12 molecules": "dataset 'offsets' claims shape (1000000000000,)",
    "10^12 property values": "dataset 'properties/energy' claims shape (2, 1000000000000)",
    "offsets past the end": "offsets are inconsistent with the number of atoms (they run from 0 to 1000000000000",
    "negative count": "molecule 1 has -2 atoms",
    "more offsets than atoms": "a store of 5 atoms has 1..6 offsets",
    "external data": "dataset 'numbers' reads its data from other files",
    "float offsets": "dataset 'offsets' has dtype float64, expected integers",
    "integer positions": "dataset 'positions' has dtype int32, expected floats",
    "string property": "dataset 'properties/smiles' has dtype |S2, expected numbers",
    "foreign dataset": "unexpected dataset 'extra'",
    "nested group": "properties/sub is not a dataset of the store layout",
    "soft link": "'ids' is a link to other data",
    "external link": "'cells' is a link to other data",
}


def test_allocation_detector_sees_hdf5_reads(tmp_path):
    """The measurement below can fail: reading 4 MiB of the lying dataset shows up in tracemalloc."""
    path = _lying_store(tmp_path / "lie.h5", "10^12 atoms")
    tracemalloc.start()
    try:
        with h5py.File(path, "r") as f:
            f["numbers"][: 4 * 2**20]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= 4 * 2**20


@pytest.mark.parametrize("kind", list(LIES))
def test_lying_store_is_refused_before_allocation(kind, tmp_path, capsys):
    path = _lying_store(tmp_path / "lie.h5", kind)
    assert path.stat().st_size < 200_000  # the claims are metadata, not data
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError) as info:
            Store(path)
        capsys.readouterr()
        assert main(["data", "info", str(path)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err.strip()
    text = str(info.value)
    assert len(text.splitlines()) == 1 and text.startswith(str(path)) and LIES[kind] in text, text
    assert len(err.splitlines()) == 1 and LIES[kind] in err
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB allocated while refusing"


def test_valid_store_still_opens_compressed(store, tmp_path):
    """Validation keeps accepting what users legitimately have: a gzip-compressed copy of a store."""
    path = tmp_path / "gz.h5"
    with h5py.File(store, "r") as src, h5py.File(path, "w") as dst:
        dst.attrs.update(src.attrs)

        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                d = dst.create_dataset(name, data=obj[()], compression="gzip", chunks=True)
                d.attrs.update(obj.attrs)
            else:
                dst.require_group(name)

        src.visititems(copy)
    with Store(store) as a, Store(path) as b:
        np.testing.assert_array_equal(a.property("energy"), b.property("energy"))
        assert a.summary()["properties"]["forces"]["molecules"] == 5
