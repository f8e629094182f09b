"""zoo.load by name: shipped file, cache, download from a url, sha256 checked on every load."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import yaml

import zoo
import zoo.hub
from zoo.checkpoint import CheckpointError
from zoo.registry import get_entry


@pytest.fixture
def registry_with(tmp_path, monkeypatch, short_run):
    """A models.yaml holding the digits entry with the given weight fields, and a private package dir."""
    weights = {"name", "checkpoint", "url", "sha256", "certificate", "metrics"}
    base = get_entry("lipconv_s.digits_hkr").model_dump(mode="json", exclude=weights)
    sha = hashlib.sha256(short_run.checkpoint.read_bytes()).hexdigest()
    monkeypatch.setattr(zoo.hub, "PACKAGE_DIR", tmp_path / "package")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def write(**fields):
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump({"models": {"lipconv_s.digits_hkr": {**base, **fields}}}))
        monkeypatch.setenv("ZOO_MODELS_YAML", str(path))
        return sha

    return write


def test_a_shipped_checkpoint_loads_by_name(registry_with, short_run, tmp_path):
    sha = registry_with(checkpoint="weights/model.safetensors", sha256=None)
    shipped = tmp_path / "package" / "weights" / "model.safetensors"
    shipped.parent.mkdir(parents=True)
    shutil.copyfile(short_run.checkpoint, shipped)
    with pytest.raises(Exception, match="needs its sha256"):
        zoo.load("lipconv_s.digits_hkr")
    registry_with(checkpoint="weights/model.safetensors", sha256=sha)
    loaded = zoo.load("lipconv_s.digits_hkr")
    assert loaded.certificate == short_run.certificate


def test_a_wrong_sha256_is_refused(registry_with, short_run, tmp_path):
    registry_with(checkpoint="weights/model.safetensors", sha256="0" * 64)
    shipped = tmp_path / "package" / "weights" / "model.safetensors"
    shipped.parent.mkdir(parents=True)
    shutil.copyfile(short_run.checkpoint, shipped)
    with pytest.raises(CheckpointError, match="does not have the sha256 recorded"):
        zoo.load("lipconv_s.digits_hkr")


def test_download_into_the_cache_then_offline(registry_with, short_run, tmp_path, monkeypatch):
    sha = registry_with(url=short_run.checkpoint.resolve().as_uri(), sha256=None)
    registry_with(url=short_run.checkpoint.resolve().as_uri(), sha256=sha)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="ZOO_OFFLINE=1"):
        zoo.load("lipconv_s.digits_hkr")
    monkeypatch.delenv("ZOO_OFFLINE")
    loaded = zoo.load("lipconv_s.digits_hkr")
    cached = list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir())
    assert len(cached) == 1 and loaded.certificate == short_run.certificate
    monkeypatch.setenv("ZOO_OFFLINE", "1")  # now served from the cache
    assert zoo.load("lipconv_s.digits_hkr").certificate == short_run.certificate
    cached[0].write_bytes(cached[0].read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.load("lipconv_s.digits_hkr")


def test_an_entry_without_weights_says_how_to_get_them(registry_with):
    registry_with()
    with pytest.raises(CheckpointError, match=r"zoo train lipconv_s\.digits_hkr"):
        zoo.load("lipconv_s.digits_hkr")
