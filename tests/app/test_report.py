"""`zoo report` on each kind of source: a models.yaml name, a checkpoint a user trained, an exported
file (whose radii use the bound recomputed from the file)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import hostile_files as hostile
import pytest
from typer.testing import CliRunner

from export.pipeline import export_model
from export.verify import verify_artifact
from training.data import load_digits
from zoo.app.cli import app
from zoo.app.report import CertificateContradictedError, radius_examples
from zoo.checkpoint import read_checkpoint, write_checkpoint
from zoo.hub import PACKAGE_DIR, load

runner = CliRunner()


def report(source: Path | str, out: Path, *options: str):
    return runner.invoke(app, ["report", str(source), "--out", str(out), "--no-progress", *options])


def _accuracy_rows(card: str) -> dict[str, float]:
    """The card's table: eps -> certified accuracy (%)."""
    return {
        eps: float(value) for eps, value in re.findall(r"^\| ([0-9.]+) \| ([0-9.]+) \|$", card, re.MULTILINE)
    }


def test_a_checkpoint_gets_a_card_measured_on_the_dataset_its_certificate_records(short_run, tmp_path):
    result = report(short_run.checkpoint, tmp_path)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "model.safetensors.md").read_text()
    assert f"Checkpoint `{short_run.checkpoint}`" in card
    assert f"**{short_run.certificate.lipschitz_bound:.6f}**" in card
    rows = _accuracy_rows(card)  # the trainer measured the same test set with its own code
    assert rows["0.0"] == pytest.approx(100 * short_run.metrics["clean_accuracy"], abs=0.051)
    for eps, accuracy in short_run.metrics["certified_accuracy"].items():
        assert rows[eps] == pytest.approx(100 * accuracy, abs=0.051)
    for plot in ("certified_accuracy", "layer_bounds"):
        assert (tmp_path / f"model.safetensors.{plot}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_an_exported_file_gets_a_card_with_the_bound_recomputed_from_the_file(short_run, tmp_path):
    certified = load(short_run.checkpoint)
    checks = export_model(certified, tmp_path / "export", onnx=True, torchscript=True, pt2=True)
    expected = _accuracy_rows(_card_of(short_run.checkpoint, tmp_path / "checkpoint"))
    for check in checks:
        recomputed = verify_artifact(check.path).lipschitz_bound
        card = _card_of(check.path, tmp_path / check.format)
        assert f"- Lipschitz bound: **{recomputed:.6f}**, recomputed from the file alone" in card
        assert f"the file's certificate states **{certified.certificate.lipschitz_bound:.6f}**" in card
        assert _accuracy_rows(card) == expected, check.format  # the same logits within 1e-5


def _card_of(source: Path, out: Path) -> str:
    result = report(source, out, *([] if source.suffix in (".onnx", ".safetensors") else ["--trust-program"]))
    assert result.exit_code == 0, result.output
    return (out / f"{source.name}.md").read_text()


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_a_program_file_is_reported_only_when_trusted(tmp_path, suffix):
    """Measuring a TorchScript / .pt2 file runs its program unconfined: this one would create a file."""
    canary = tmp_path / "created-by-the-program"
    if suffix == ".pt":
        path = hostile.scripted(hostile.WritesAFile(str(canary)), tmp_path / "writes.pt")
    else:
        path = hostile.pt2_writing_a_file(tmp_path / "writes.pt2", canary)
    result = report(path, tmp_path / "cards")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}: measuring it runs its program in this process")
    assert "--trust-program" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not canary.exists() and not (tmp_path / "cards").exists()


def test_a_checkpoint_without_a_recorded_dataset_needs_the_option(short_run, tmp_path):
    checkpoint = read_checkpoint(short_run.checkpoint)
    preprocessing = {k: v for k, v in checkpoint.certificate.preprocessing.items() if k != "dataset"}
    bare = tmp_path / "bare.safetensors"
    certificate = dataclasses.replace(checkpoint.certificate, preprocessing=preprocessing)
    write_checkpoint(bare, checkpoint.state_dict, checkpoint.architecture, certificate)
    result = report(bare, tmp_path / "cards")
    assert result.exit_code == 1
    assert (
        result.stderr.strip() == f"error: {bare}: its certificate records no dataset: name it with --dataset"
    )
    result = report(bare, tmp_path / "cards", "--dataset", "digits")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cards" / "bare.safetensors.md").is_file()


def test_a_checkpoint_of_a_class_subset_is_refused_with_the_reason(tmp_path):
    subset = PACKAGE_DIR / "weights" / "lipconv_xs.digits_transfer_l2.safetensors"
    result = report(subset, tmp_path)
    assert result.exit_code == 1
    assert (
        f"{subset.name} has 5 outputs but the digits test set has 10 classes "
        "(a model of a class subset is reported by its models.yaml name)"
    ) in result.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_registry_name_keeps_its_recipe_and_refuses_another_dataset(tmp_path):
    result = report("lipconv_xs.digits_transfer_l2", tmp_path, "--dataset", "mnist")
    assert result.exit_code == 1
    assert "lipconv_xs.digits_transfer_l2 is a model of digits, not mnist" in result.stderr


def test_radius_examples_are_per_class_and_bracket_the_robust_radius():
    certified = load("lipmlp_s.digits_hkr")
    digits = load_digits()
    examples = radius_examples(certified, digits.x_test, digits.y_test, per_class=2, attack_steps=100)
    assert [example.label for example in examples] == [k for k in range(10) for _ in range(2)]
    for example in examples:
        first = [i for i, y in enumerate(digits.y_test.tolist()) if y == example.label][:2]
        assert example.index in first
        if example.predicted == example.label:
            assert 0 < example.certified <= example.attack < float("inf")


def test_an_inflated_certificate_is_contradicted_by_the_attack():
    certified = load("lipmlp_s.digits_hkr")
    digits = load_digits()
    claimed = dataclasses.replace(
        certified.certificate, lipschitz_bound=certified.certificate.lipschitz_bound / 20
    )
    with pytest.raises(CertificateContradictedError, match="lies within its certified radius"):
        radius_examples(dataclasses.replace(certified, certificate=claimed), digits.x_test, digits.y_test)
