"""``zoo ship``: a finished run goes into the package and models.yaml, after every check, and the
rest of models.yaml (comments included) stays as it was."""

from __future__ import annotations

import copy
import json
import shutil
import textwrap

import pytest
import yaml
from typer.testing import CliRunner

import zoo
import zoo.hub
from zoo.app.cli import app
from zoo.app.publish import WEIGHT_FIELDS, ShipError, registry_metrics, ship, with_weight_fields
from zoo.checkpoint import CheckpointError
from zoo.hub import CertificateMismatchError
from zoo.registry import get_entry, registry_path

NAME = "lipconv_s.digits_hkr"
OTHER = "lipconv_s.other"


def _registry_text(epochs: int) -> str:
    """A models.yaml with comments around and inside two entries; NAME's recipe trains ``epochs``."""
    weights = {"name", "checkpoint", "url", "sha256", "certificate", "metrics"}
    fields = get_entry(NAME).model_dump(mode="json", exclude=weights)
    fields["recipe"]["epochs"] = epochs
    document = {"models": {NAME: fields, OTHER: copy.deepcopy(fields)}}
    text = "# my registry\n" + yaml.safe_dump(document, sort_keys=False)
    text = text.replace("    recipe:\n", "    # how it is trained\n    recipe:\n", 1)
    return text.replace(f"  {OTHER}:\n", f"# the next one is a recipe\n  {OTHER}:\n")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Write a models.yaml (``registry(epochs)``) used by zoo, and a private package directory."""
    monkeypatch.setattr(zoo.hub, "PACKAGE_DIR", tmp_path / "package")
    path = tmp_path / "models.yaml"

    def write(epochs: int):
        path.write_text(_registry_text(epochs))
        monkeypatch.setenv("ZOO_MODELS_YAML", str(path))
        return path

    return write


def test_ship_records_the_run_and_keeps_every_other_line(registry, short_run, same_certificate):
    path = registry(epochs=2)  # the recipe of the short run
    before = path.read_text()
    result = CliRunner().invoke(app, ["ship", NAME, str(short_run.checkpoint.parent)])
    assert result.exit_code == 0, result.output
    shipped = zoo.hub.PACKAGE_DIR / "weights" / f"{NAME}.safetensors"
    assert shipped.read_bytes() == short_run.checkpoint.read_bytes()

    after = path.read_text()
    lines = after.splitlines(keepends=True)
    # the weight fields end the entry; the comment before the next entry and all else is unchanged
    first = lines.index(f"    checkpoint: weights/{NAME}.safetensors\n")
    last = lines.index("# the next one is a recipe\n")
    assert "".join(lines[:first] + lines[last:]) == before
    added = yaml.safe_load(textwrap.dedent("".join(lines[first:last])))
    assert list(added) == ["checkpoint", "sha256", "certificate", "metrics"]

    entry = get_entry(NAME)
    assert entry.metrics == registry_metrics(short_run.metrics)
    assert entry.certificate["weights_sha256"] == short_run.certificate.weights_sha256
    assert same_certificate(zoo.load(NAME).certificate, short_run.certificate)
    # shipping again replaces the fields: the file does not change
    CliRunner().invoke(app, ["ship", NAME, str(short_run.checkpoint.parent)])
    assert path.read_text() == after


def test_a_continual_run_records_its_class_incremental_accuracy_and_forgetting(short_run):
    continual = {"class_il": {"final_average_accuracy": 0.912345, "forgetting": 0.031234}, "task_il": {}}
    flat = registry_metrics(short_run.metrics | {"continual": continual})
    assert flat == registry_metrics(short_run.metrics) | {
        "final_average_accuracy": 0.9123,
        "forgetting": 0.0312,
    }
    assert "final_average_accuracy" not in registry_metrics(short_run.metrics)


def _copied_run(short_run, directory):
    directory.mkdir()
    for file in short_run.checkpoint.parent.glob("*.*"):
        shutil.copyfile(file, directory / file.name)
    return directory


def _without_metrics(run):
    (run / "metrics.json").unlink()


def _scaled_bound(factor):
    def scale(run):
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["lipschitz_bound"] *= factor
        (run / "metrics.json").write_text(json.dumps(metrics))

    return scale


def _modified_weights(run):
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-4] ^= 0x40  # a bit of the last weight
    (run / "model.safetensors").write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("epochs", "damage", "error", "message"),
    [
        (2, _without_metrics, ShipError, "no metrics.json: not the output directory of a finished"),
        (40, None, ShipError, r"the run is .*'epochs': 2.* but the entry's recipe is .*'epochs': 40"),
        (2, _scaled_bound(0.5), ShipError, "the metrics are not from this checkpoint"),
        (2, _scaled_bound(1 + 1e-7), ShipError, "the metrics are not from this checkpoint"),
        (2, _modified_weights, (CertificateMismatchError, CheckpointError), "certificate|weights"),
    ],
    ids=["incomplete run", "other recipe", "other metrics", "bound off by 1e-7", "modified weights"],
)
def test_ship_refuses_and_writes_nothing(registry, short_run, tmp_path, epochs, damage, error, message):
    path = registry(epochs)
    before = path.read_text()
    run = _copied_run(short_run, tmp_path / "run")
    if damage is not None:
        damage(run)
    with pytest.raises(error, match=message):
        ship(NAME, run)
    assert path.read_text() == before
    assert not zoo.hub.PACKAGE_DIR.exists()


def test_a_bound_recomputed_with_other_thread_counts_ships(registry, short_run, tmp_path):
    """Training and shipping may sum in another order: last-bit differences are not another run."""
    registry(epochs=2)
    run = _copied_run(short_run, tmp_path / "run")
    _scaled_bound(1 + 1e-13)(run)
    assert ship(NAME, run).read_bytes() == short_run.checkpoint.read_bytes()


def test_a_checkpoint_of_another_architecture_is_refused(registry, short_run, tmp_path):
    path = registry(epochs=2)
    path.write_text(path.read_text().replace("- 128", "- 96"))  # the entry's dense width differs
    with pytest.raises(ShipError, match=r"the checkpoint's architecture .* is not the entry's"):
        ship(NAME, short_run.checkpoint.parent)


def test_an_entry_not_written_as_a_block_cannot_be_edited():
    text = "models: {a.b: {description: x}}\n"
    with pytest.raises(ShipError, match=r"cannot find entry 'a\.b'"):
        with_weight_fields(text, "a.b", {"sha256": "0" * 64})
    quoted = "\n".join(["models:", "  'a.b':   # quoted", "    description: x", "    sha256: old", ""])
    quoted += "\n  c.d:\n    description: y\n"
    edited = with_weight_fields(quoted, "a.b", {"sha256": "f" * 64})
    assert edited == quoted.replace("sha256: old", f"sha256: {'f' * 64}")


def test_the_shipped_registry_is_written_as_zoo_ship_writes_it():
    """Shipping a shipped entry again with the same fields leaves models.yaml byte for byte the same."""
    text = registry_path().read_text()
    shipped = {name: fields for name, fields in yaml.safe_load(text)["models"].items() if "sha256" in fields}
    assert shipped
    for name, fields in shipped.items():
        assert with_weight_fields(text, name, {key: fields[key] for key in WEIGHT_FIELDS}) == text
