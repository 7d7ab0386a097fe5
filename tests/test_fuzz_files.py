"""Fuzzed inputs of atomnet's own files (reliability issue 17; docs/reliability.md, "Fuzzed inputs"): HDF5
stores, model files and checkpoints, split files and YAML configs.

Seeds are built with the library (a store written by ``write_store``, a tiny SchNet saved by
``model_to_dict``/``torch.save``, a ``random_split``) or are the repository's ``configs/*.yaml``; mutations are
byte-level (flips, truncation) and structural (wrong dtypes, shapes, NaN/inf values, odd attributes,
hyperparameters and YAML values), see ``tests/fuzz_inputs.py``. Each input ends in a one-line AtomNetError
naming the file (``atomnet data info`` on a store: exit 2, one line) or a valid result: a store whose every
array reads back and is finite where the layout requires, a model that predicts finite energies and forces,
a split of disjoint in-range indices, a config that saves and reads back equal. ``-m slow``: 1,000 each.
"""

from __future__ import annotations

import gc
import math
import warnings

import fuzz_inputs as fz
import h5py
import numpy as np
import pytest
import torch

from atomnet.data.splits import load_split
from atomnet.data.store import Store
from atomnet.errors import AtomNetError, ConfigError, DataFormatError
from atomnet.loading import load_potential
from atomnet.training.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

#: the readers of this file; cases per reader: fz.DEFAULT_EXAMPLES (default run), fz.SLOW_EXAMPLES (slow)
NAMES = ["store", "model", "split", "config"]


@pytest.mark.parametrize("name", NAMES)
def test_fuzz(name, record_property):
    record_property("cases", fz.checked_campaign(name, fz.DEFAULT_EXAMPLES[name]).as_dict())


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fuzz_many(name, record_property):
    record_property("cases", fz.checked_campaign(name, fz.SLOW_EXAMPLES).as_dict())


# ---------------------------------------------------------------------------------------------- store
def store_refused(path, match: str) -> str:
    with pytest.raises(DataFormatError, match=match) as info:
        with Store(path) as s:
            s.summary()
    rc, out, err = fz.run_cli(["data", "info", path])
    fz.assert_cli_error(rc, err, path)
    return str(info.value)


def test_store_with_corrupt_object_headers_is_a_clear_error(tmp_path):
    """Found: a few zeroed bytes in the root group's header escaped as h5py's KeyError from the attribute check."""
    path = fz.write_seed_store(tmp_path / "store.h5", 1)
    path.write_bytes(fz.apply_binary(path.read_bytes(), [("bit", 109, 6), ("zero", 109, 23)]))
    store_refused(path, r"store\.h5: corrupt store")


def test_store_with_unreadable_attribute_is_refused_at_open(tmp_path):
    """Found: attribute values were not read when opening, so a corrupt one failed later in ``data info`` with
    h5py's OSError (the bytes of the seed store's 'unit' strings damaged)."""
    path = fz.write_seed_store(tmp_path / "store.h5", 1)
    ops = [("zero", 356, 4), ("bit", -470, 6), ("bit", 0.47246343342458746, 0), ("bit", 60, 6)]
    path.write_bytes(fz.apply_binary(path.read_bytes(), ops))
    store_refused(path, r"store\.h5: corrupt store")


@pytest.mark.parametrize("name", ["positions", "atom_properties/charges"])
def test_store_with_a_corrupt_compressed_chunk_is_a_clear_error(tmp_path, name):
    """Found: a damaged gzip chunk (stores re-packed with compression are read) escaped from ``Store.property``
    and ``data info`` as h5py's OSError "filter returned failure during read"."""
    path = fz.write_seed_store(tmp_path / "store.h5", 0)
    with h5py.File(path, "r") as f:
        if name not in f:
            pytest.skip(f"the seed store has no {name} (../shared/data absent)")
    fz._edit_store(path, [("chunked", name)])  # a gzip-compressed, chunked copy of the dataset
    with h5py.File(path, "r") as f:
        at = f[name].id.get_chunk_info(0).byte_offset + 5
    data = bytearray(path.read_bytes())
    data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    path.write_bytes(bytes(data))
    store_refused(path, rf"store\.h5: corrupt (store|dataset '{name}'): .*filter returned failure")


def test_store_attribute_that_is_not_utf8_prints(tmp_path):
    """Found: h5py returns invalid UTF-8 as surrogate escapes, which ``print`` cannot write to a terminal."""
    path = fz.write_seed_store(tmp_path / "store.h5", 0)
    with h5py.File(path, "r+") as f:
        f.attrs.create("source", data=b"qm9\xff.tar", dtype=h5py.string_dtype("utf-8"))
    with Store(path) as s:
        assert s.attrs["source"] == "qm9\ufffd.tar"
    rc, out, err = fz.run_cli(["data", "info", path])  # run_cli checks that stdout is valid UTF-8
    assert rc == 0 and "source: qm9\ufffd.tar" in out


def looping_global_heap(path) -> int:
    """Give the first object of the store's global heap collection (its first string attribute) the size that
    makes HDF5's walk land in the zeroed free space: an entry of index 0 and size 0. Returns its offset."""
    data = bytearray(path.read_bytes())
    at = data.find(b"GCOL\x01\x00\x00\x00")
    p = at + 16
    while int.from_bytes(data[p : p + 2], "little"):  # to the free-space entry (index 0)
        p += 16 + -(-int.from_bytes(data[p + 8 : p + 16], "little") // 8) * 8
    data[at + 24 : at + 32] = (p + 16 - (at + 32)).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return at


def test_store_with_a_looping_global_heap_is_refused_before_hdf5_reads_it(tmp_path):
    """Found: one shifted byte in the heap of string attributes made HDF5 loop for ever inside the C library
    (``Store`` and ``atomnet data info`` hung; no signal can stop it). The heap is now walked first."""
    path = fz.write_seed_store(tmp_path / "store.h5", 1)
    at = looping_global_heap(path)
    message = store_refused(
        path, rf"store\.h5: corrupt store: the HDF5 global heap at byte {at} has an object"
    )
    assert "of size 0" in message


def test_store_with_an_array_attribute_is_summarised(tmp_path):
    """Found: a file attribute holding an array (allowed: numbers, at most 4,096) made ``data info`` raise
    numpy's "can only convert an array of size 1" ValueError."""
    path = fz.write_seed_store(tmp_path / "store.h5", 0)
    with h5py.File(path, "r+") as f:
        f.attrs["meta.format"] = np.arange(3)
    with Store(path) as s:
        assert s.attrs["meta.format"] == [0, 1, 2]
    rc, out, err = fz.run_cli(["data", "info", path])
    assert rc == 0 and not err and "molecules: 3" in out


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_store_with_non_finite_positions_is_refused(tmp_path, value):
    """Found: a store with NaN/inf positions opened and trained (the writer refuses them, the reader did not)."""
    path = fz.write_seed_store(tmp_path / "store.h5", 0)
    with h5py.File(path, "r+") as f:
        atom = int(f["offsets"][1]) + 1  # the second atom of the second molecule
        f["positions"][atom, 1] = value
    store_refused(path, r"store\.h5 \(molecule 1, atom 1\): non-finite position")


def test_store_summary_of_huge_values_warns_nothing(tmp_path):
    """Found: ``data info`` of energies near 1e306 eV printed numpy's "overflow in multiply" (two lines)."""
    path = fz.write_seed_store(tmp_path / "store.h5", 0)
    with h5py.File(path, "r+") as f:
        f["properties/U0"][0] = 1e306
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Store(path) as s:
            assert s.summary()["properties"]["U0"]["std"] == math.inf


# ----------------------------------------------------------------------------------------------- model
def saved(tmp_path, which: int, *edits) -> object:
    path = tmp_path / ("model.pt" if which == 0 else "last.ckpt")
    torch.save(fz.edit_model_content(fz.model_contents()[which], edits), path)
    return path


@pytest.mark.parametrize("which", [0, 1], ids=["model-file", "checkpoint"])
@pytest.mark.parametrize(
    "edit, match",
    [
        (("state", 0, ("value", math.nan, 0.0)), r"weight '.*' holds NaN or inf values"),
        (("state", 49, ("value", math.inf, 0.0)), r"weight '.*' holds NaN or inf values"),
        (("state", 27, ("dtype", "complex64")), r"weight '.*' holds complex values"),
        (("hparam", "cutoff", math.nan), r"hyperparameter cutoff=nan is not a finite number"),
        (("hparam", "n_rbf", {}), r"model 'schnet': linspace\(\) received an invalid combination"),
        (("hparam", "n_rbf", 0), r"weights do not match the model's hyperparameters"),
        (("hparam", "cutoff", 0), r"cannot build model 'schnet' from the file \(float division by zero\)"),
        (("hparam", "n_interactions", 10**9), r"hyperparameter n_interactions=1000000000 is larger than the"),
    ],
    ids=[
        "nan-weight",
        "inf-weight",
        "complex-weight",
        "nan-cutoff",
        "dict-n_rbf",
        "zero-n_rbf",
        "zero-cutoff",
        "billion-interactions",
    ],
)
def test_model_with_bad_numbers_is_a_one_line_error(tmp_path, which, edit, match):
    """Found: NaN/inf weights loaded and predicted NaN energies, complex weights lost their imaginary part
    with a UserWarning, a wrong hyperparameter type gave torch's multi-line TypeError, and ``n_rbf = 0``
    printed torch's "zero-element tensors" UserWarning before the error (``check_model`` fails on warnings);
    ``cutoff = 0`` escaped as ZeroDivisionError; ``n_interactions = 10**9`` hung building a shape-only shell of
    10^9 blocks (the integer bound now comes first)."""
    path = saved(tmp_path, which, edit)
    with pytest.raises(AtomNetError, match=match) as info:
        load_potential(path)
    assert "\n" not in str(info.value) and path.name in str(info.value)
    (tmp_path / "check").mkdir()
    assert fz.check_model(("content", which, [edit], False), tmp_path / "check")[0] == "error"


def test_clean_model_still_predicts_finite_values(tmp_path):
    assert fz.check_model(("content", 0, [], False), tmp_path)[0] == "valid"
    assert fz.check_model(("content", 1, [], True), tmp_path)[0] == "valid"


# ----------------------------------------------------------------------------------------------- split
def test_corrupt_split_leaves_no_open_file(tmp_path):
    """Found: ``np.load(path)`` on a broken zip left the split file open (ResourceWarning when collected)."""
    path = fz.write_mutated_npz(
        tmp_path / "split.npz", fz.split_arrays(), ("file", [("delete", -279, 31)], False)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataFormatError, match="not a readable split .npz file"):
            load_split(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "text, match",
    [
        (b"optim:\n  lr: \xff\n", r"c\.yaml \(line 2\): not UTF-8 text"),
        (b"optim:\n  lr: 2001-13-01\n", r"c\.yaml: not valid YAML \(ValueError: month must be in 1\.\.12\)"),
        (b"optim:\n  lr: 1e-3\n X 0 0 0\n", r"c\.yaml \(line 3, column 2\): not valid YAML \(.*\)$"),
        (b"\0model: {}\n", r"c\.yaml \(line 1\): not valid YAML \(unacceptable character #x0000: special characters are not allowed\)$"),
        (b"model: 5\n", r"c\.yaml: model: expected a mapping, got 5"),
        (b"data: abc\n", r"c\.yaml: data: expected a mapping, got 'abc'"),
        (b"- 1\n- 2\n", r"c\.yaml: config: expected a mapping of sections"),
        (b"model:\n  hparams: [1]\n", r"c\.yaml: model\.hparams: expected a mapping, got \[1\]"),
        (b"optim:\n  lr: .nan\n", r"c\.yaml: optim\.lr: expected a finite number, got nan"),
        (b"optim:\n  lr: 1e400\n", r"c\.yaml: optim\.lr: expected a finite number, got '1e400'"),
        (b"optim:\n  lr: 99999999999999999999" + b"9" * 400 + b"\n", r"optim\.lr: expected a finite number"),
        (b"optim:\n  lr: fast\n", r"c\.yaml: optim\.lr: expected a number, got 'fast'"),
    ],
    ids=["not-utf8", "bad-date", "syntax", "nul", "model-int", "data-str", "list", "hparams-list", "nan", "1e400",
         "huge-int", "named-file"],
)  # fmt: skip
def test_config_errors_are_one_line_and_name_the_file(tmp_path, text, match):
    """Found: non-UTF-8 bytes, a date YAML cannot build and a section that is not a mapping escaped as
    UnicodeDecodeError/ValueError/TypeError; YAML errors took 4 lines; ``lr: .nan`` was accepted; errors named
    the key but not the file."""
    path = tmp_path / "c.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    assert fz.check_config((0, []), tmp_path)[0] == "valid"  # the seed itself is valid


def test_config_error_from_an_override_is_not_blamed_on_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1.0e-3\n")
    with pytest.raises(ConfigError, match=r"^--set 'optim=1': the key must be section\.key"):
        load_config(path, ["optim=1"])
    with pytest.raises(ConfigError, match=r"c\.yaml \(with --set overrides\): optim\.lr: expected a number"):
        load_config(path, ["optim.lr=fast"])
