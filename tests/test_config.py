"""Config validation: unknown keys and wrong types name the key; --set overrides; path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from atomnet.cli import main
from atomnet.errors import ConfigError
from atomnet.training.config import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"optim": {"lrr": 1e-3}}, "optim.lrr"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"train": {"max_epochs": 2.5}}, "train.max_epochs"),
        ({"train": {"precision": 16}}, "train.precision"),
        ({"data": {"split": "all"}}, "data.split"),
        ({"model": {"name": "schnet", "n_interactions": "six"}}, "model.n_interactions"),
        ({"model": {"name": "schnet", "n_layers": 3}}, "model.n_layers"),
        ({"model": {"name": "painn"}}, "model.name"),
        ({"trainer": {}}, "trainer"),
    ],
)
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        config_from_dict(raw)


def test_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "dtnn", "n_interactions": 2}, "optim": {"lr": 1e-3}}))
    cfg = load_config(path, ["optim.lr=5e-4", "model.n_interactions=6", "data.split=[100,20,0]"])
    assert cfg.optim.lr == 5e-4 and cfg.model.name == "dtnn"
    assert cfg.model.hparams["n_interactions"] == 6
    assert cfg.data.split == [100, 20, 0]
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(path, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="section.key"):
        load_config(path, ["lr=1"])


def test_relative_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "data.xyz").write_text("")
    path = tmp_path / "sub" / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "../data.xyz"}}))
    assert load_config(path).data.path == str((tmp_path / "data.xyz").resolve())


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["model.n_interactions=4", "optim.ema_decay=0.99"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


def test_cli_reports_config_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1.0e-3}\n")
    assert main(["train", str(path), "--set", "optim.lr=fast"]) == 2
    assert "optim.lr" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")))
def test_recipes_are_valid(recipe):
    cfg = load_config(recipe)
    from atomnet.models import MODELS

    assert cfg.model.name in MODELS
