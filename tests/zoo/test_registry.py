"""models.yaml is validated on load: a wrong field names the entry and the field."""

from __future__ import annotations

import re

import pytest
import yaml

from zoo.registry import RegistryError, get_entry, load_registry, registry_path

GOOD = {
    "description": "test entry",
    "architecture": {"name": "lipconv", "input_shape": [1, 8, 8], "num_classes": 10},
    "recipe": {
        "dataset": "digits",
        "loss": {"name": "hkr", "params": {"alpha": 10.0}},
        "optimizer": {"name": "adam", "lr": 0.001},
        "epochs": 2,
        "batch_size": 32,
    },
}


def write(tmp_path, models) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return str(path)


def test_the_shipped_registry_is_valid():
    entries = load_registry()
    assert "lipconv_s.digits_hkr" in entries
    assert registry_path().name == "models.yaml"


def test_a_good_entry_loads(tmp_path):
    entry = load_registry(write(tmp_path, {"lipconv.test": GOOD}))["lipconv.test"]
    assert entry.recipe.epochs == 2 and entry.architecture.input_shape == (1, 8, 8)


def _with(path: list[str], value) -> dict:
    entry = yaml.safe_load(yaml.safe_dump(GOOD))
    node = entry
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return entry


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["recipe", "epochs"], "many", "recipe.epochs"),
        (["recipe", "epochs"], 0, "recipe.epochs"),
        (["recipe", "dataset"], "imagenet", "recipe.dataset"),
        (["recipe", "optimizer", "lr"], -1.0, "recipe.optimizer.lr"),
        (["recipe", "loss", "name"], "mse", "recipe.loss.name"),
        (["architecture", "input_shape"], [1, 8], "architecture.input_shape"),
        (["recipe", "typo_field"], 3, "recipe.typo_field"),
        (["sha256"], "not-a-hash", "sha256"),
    ],
)
def test_a_wrong_field_names_entry_and_field(tmp_path, path, value, field):
    path_ = write(tmp_path, {"lipconv.broken": _with(path, value)})
    with pytest.raises(RegistryError, match=rf"entry 'lipconv\.broken': field '{re.escape(field)}"):
        load_registry(path_)


def test_unknown_architecture_option_is_named(tmp_path):
    entry = _with(["architecture", "options"], {"widthz": [8]})
    with pytest.raises(RegistryError, match=r"entry 'lipconv.broken'.*no option 'widthz'"):
        load_registry(write(tmp_path, {"lipconv.broken": entry}))


def test_bad_names_and_shapes_are_refused(tmp_path):
    with pytest.raises(RegistryError, match=r"arch\.tag"):
        load_registry(write(tmp_path, {"NoDot": GOOD}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [1, 2]")
    with pytest.raises(RegistryError, match="top-level mapping"):
        load_registry(bad)
    bad.write_text("models: {a.b: [unclosed")
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(bad)
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "missing.yaml")


def test_unknown_model_name():
    with pytest.raises(RegistryError, match=r"no model named .nope\.x."):
        get_entry("nope.x")
