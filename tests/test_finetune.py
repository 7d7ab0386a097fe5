"""Fine-tuning (``model.init_from``): training starts from the pretrained weights, frozen parts stay
bit-identical, statistics are refitted or kept as asked, architecture mismatches are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atomnet.cli import main
from atomnet.data.ase_io import read_ase
from atomnet.data.store import write_store
from atomnet.errors import ConfigError
from atomnet.models import load_model_file as _load_model_file
from atomnet.training.commands import train
from atomnet.training.config import config_from_dict, load_config

XTB = Path(__file__).resolve().parents[1] / "data" / "ethanol_xtb.extxyz"
TINY = dict(name="schnet", n_atom_basis=8, n_filters=8, n_interactions=2, n_rbf=8, cutoff=4.0, max_z=10)


def load_model_file(path):
    return _load_model_file(path)[0]


def config(store, out, model: dict, **train_args):
    return config_from_dict(
        {
            "model": model,
            "data": {"path": str(store), "split": [30, 15, 15], "batch_size": 6},
            "optim": {"lr": 5e-3},
            "train": {
                "max_epochs": 2,
                "out_dir": str(out),
                "progress_bar": False,
                "plots": False,
                **train_args,
            },
        }
    )


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Frames 0-59 (pretraining) and frames 1000-1059 for fine-tuning, their energies shifted by a constant
    per element as another level of theory would shift them (H −0.5, C −3, O −4 eV)."""
    root = tmp_path_factory.mktemp("data")
    first = write_store(read_ase(XTB, index="0:60", energy_unit="eV"), root / "a.h5", progress=False)
    table = read_ase(XTB, index="1000:1060", energy_unit="eV")
    offsets = {1: -0.5, 6: -3.0, 8: -4.0}
    for m in range(table.n_molecules):
        z = table.numbers[table.offsets[m] : table.offsets[m + 1]]
        table.properties["energy"][m] += sum(offsets[int(a)] for a in z)
    second = write_store(table, root / "b.h5", progress=False)
    return first, second


@pytest.fixture(scope="module")
def pretrained(stores, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("pre")
    summary = train(config(stores[0], out, TINY, max_epochs=30), run_dir=out / "run", quiet=True)
    return Path(summary["model_file"])


def _buffers(model, kind: str) -> dict[str, torch.Tensor]:
    found = {n: b.clone() for n, b in model.named_buffers() if n.startswith("standardize.") and kind in n}
    assert found, f"no standardize buffers named *{kind}*"
    return found


def test_frozen_parts_stay_and_statistics_are_kept(stores, pretrained, tmp_path):
    before = load_model_file(pretrained)
    cfg = config(
        stores[1],
        tmp_path,
        {"init_from": str(pretrained), "freeze": ["embedding", "interactions.0"], "refit_statistics": False},
    )
    summary = train(cfg, run_dir=tmp_path / "ft", quiet=True)
    after = load_model_file(summary["model_file"])
    p0, p1 = dict(before.named_parameters()), dict(after.named_parameters())
    assert p0.keys() == p1.keys()
    for name in p0:
        same = torch.equal(p0[name], p1[name])
        frozen = name.startswith(("embedding.", "interactions.0."))
        assert same == frozen, name  # frozen: bit-identical; every other tensor was trained
    for name, value in _buffers(before, "").items():
        assert torch.equal(value, dict(after.named_buffers())[name]), name
    assert after.hparams == before.hparams  # the architecture came from the pretrained file
    saved = load_config(tmp_path / "ft" / "config.yaml")
    assert saved.model.init_from == str(pretrained) and saved.model.freeze == ["embedding", "interactions.0"]


def test_refit_statistics_equal_a_fresh_fit_on_the_new_data(stores, pretrained, tmp_path):
    cfg = config(stores[1], tmp_path, {"init_from": str(pretrained)}, max_epochs=1)
    tuned = load_model_file(train(cfg, run_dir=tmp_path / "ft", quiet=True)["model_file"])
    scratch = load_model_file(
        train(config(stores[1], tmp_path, TINY, max_epochs=1), run_dir=tmp_path / "s", quiet=True)[
            "model_file"
        ]
    )
    old = load_model_file(pretrained)
    for kind in ("mean", "std", "atomref"):
        (name,) = _buffers(tuned, kind)
        assert torch.allclose(_buffers(tuned, kind)[name], _buffers(scratch, kind)[name]), kind
    (name,) = _buffers(old, "atomref")
    assert not torch.allclose(_buffers(old, "atomref")[name], _buffers(tuned, "atomref")[name], atol=0.1)


def test_every_weight_starts_from_the_pretrained_model(stores, pretrained, tmp_path):
    """At a vanishing learning rate nothing moves: the fine-tuned model is the pretrained one (a fresh model
    with the same seed is not)."""
    cfg = config(stores[1], tmp_path, {"init_from": str(pretrained), "refit_statistics": False}, max_epochs=1)
    cfg.optim.lr, cfg.optim.weight_decay = 1e-12, 0.0
    tuned = dict(
        load_model_file(train(cfg, run_dir=tmp_path / "ft", quiet=True)["model_file"]).named_parameters()
    )
    old = dict(load_model_file(pretrained).named_parameters())
    fresh = config(stores[1], tmp_path, TINY, max_epochs=1)
    fresh.optim.lr = 1e-12
    scratch = dict(
        load_model_file(train(fresh, run_dir=tmp_path / "s", quiet=True)["model_file"]).named_parameters()
    )
    for name, value in old.items():
        torch.testing.assert_close(tuned[name], value, rtol=0, atol=1e-8)
    assert any(not torch.allclose(scratch[n], v, atol=1e-3) for n, v in old.items())


def test_mismatches_and_bad_fine_tuning_keys_are_one_line_errors(stores, pretrained, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"n_interactions=2 \(config: 1\)"):
        train(config(stores[1], tmp_path, {**TINY, "n_interactions": 1, "init_from": str(pretrained)}))
    with pytest.raises(ConfigError, match="is a 'schnet' model"):
        train(config(stores[1], tmp_path, {"name": "dtnn", "init_from": str(pretrained)}))
    with pytest.raises(ConfigError, match="no parameters named 'interaction'"):
        train(config(stores[1], tmp_path, {"init_from": str(pretrained), "freeze": ["interaction"]}))
    with pytest.raises(ConfigError, match="need model.init_from"):
        config(stores[1], tmp_path, {**TINY, "freeze": ["embedding"]})
    with pytest.raises(ConfigError, match="model.refit_statistics: expected true/false"):
        config(stores[1], tmp_path, {"init_from": "x", "refit_statistics": "yes"})
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"data: {{path: {stores[1]}, split: [30, 15, 15]}}\ntrain: {{out_dir: {tmp_path}}}\n")
    assert main(["train", str(yaml), "--set", "model.init_from=no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and len(err.strip().splitlines()) == 1
    # a shipped model by name: its 4 interactions against a config that asks for 3
    argv = [
        "train",
        str(yaml),
        "--set",
        "model.init_from=schnet-md17-ethanol",
        "--set",
        "model.n_interactions=3",
    ]
    assert main(argv) == 2
    assert "n_interactions=4 (config: 3)" in capsys.readouterr().err
