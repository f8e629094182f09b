"""The shipped zoo: every model with weights loads (hash and certificate re-checked), reproduces
its recorded accuracy, exports to ONNX and re-verifies from the file (loading from an installed wheel:
tests/test_packaging.py)."""

from __future__ import annotations

import pytest
import torch

import zoo
from export.pipeline import export_model
from export.triton import verify_triton_repository
from export.verify import verify_artifact
from training.data import Dataset, load_dataset
from training.trainer import evaluate, evaluation_split
from zoo.registry import load_registry
from zoo.robustness import reported_eps

SHIPPED = [name for name, entry in load_registry().items() if entry.checkpoint is not None]
# The Fashion-MNIST classifiers trained on all ten classes at once (not the continual models).
FASHION_MNIST = [
    name
    for name in SHIPPED
    if load_registry()[name].recipe.dataset == "fashion_mnist"
    and load_registry()[name].recipe.continual is None
]
FASHION_MNIST_PREPROCESSING = {
    "dataset": "fashion_mnist",
    "transform": "pixel / 255",
    "input_range": [0.0, 1.0],
}


def dataset_or_skip(name: str) -> Dataset:
    """The dataset ``name``; the test is skipped, with the loader's reason, only when its files are
    absent (Fashion-MNIST: ``apt-get install -y dataset-fashion-mnist``, which CI runs)."""
    try:
        return load_dataset(name)
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_reproduces_its_recorded_metrics(name, tmp_path):
    entry = load_registry()[name]
    certified = zoo.load(name)
    assert certified.certificate.lipschitz_bound == pytest.approx(
        entry.certificate["lipschitz_bound"], rel=1e-6
    )
    x_test, y_test = evaluation_split(entry, dataset_or_skip(entry.recipe.dataset))
    eps = reported_eps(entry.recipe.dataset)
    measured = evaluate(certified.model, x_test, y_test, certified.certificate.lipschitz_bound, eps)
    assert measured["clean_accuracy"] == pytest.approx(entry.metrics["clean_accuracy"], abs=1e-3)
    assert len(measured["certified_accuracy"]) == len(eps)
    for key, accuracy in measured["certified_accuracy"].items():
        assert accuracy == pytest.approx(entry.metrics[f"certified_accuracy_{key}"], abs=1e-3)


# The Fashion-MNIST classifiers export to ONNX in the every-format test below.
@pytest.mark.parametrize("name", [name for name in SHIPPED if name not in FASHION_MNIST])
def test_a_shipped_model_exports_to_onnx_and_reverifies(name, tmp_path):
    certified = zoo.load(name)
    (check,) = export_model(certified, tmp_path, onnx=True, torchscript=False)
    report = verify_artifact(check.path)
    assert report.ok and report.embedded == certified.certificate
    assert report.lipschitz_bound == pytest.approx(certified.certificate.lipschitz_bound, rel=1e-9)


def test_the_zoo_ships_models():
    assert len(SHIPPED) >= 1
    assert len(FASHION_MNIST) >= 3


@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:`torch\.jit.*deprecated:FutureWarning")
@pytest.mark.parametrize("name", FASHION_MNIST)
def test_a_shipped_fashion_mnist_model_exports_to_every_format_and_reverifies(name, tmp_path):
    certified = zoo.load(name)
    assert certified.preprocessing == FASHION_MNIST_PREPROCESSING
    checks = export_model(certified, tmp_path, onnx=True, torchscript=True, pt2=True, triton=True)
    assert {check.format for check in checks} == {"onnx", "torchscript", "pt2", "triton"}
    reports = [verify_artifact(check.path) for check in checks if check.format != "triton"]
    reports += verify_triton_repository(tmp_path / "triton")
    assert len(reports) == 5  # ONNX, TorchScript, .pt2, and the repository's ONNX and TorchScript copies
    for report in reports:
        assert report.ok and report.embedded == certified.certificate, report.problems
        assert report.lipschitz_bound == pytest.approx(certified.certificate.lipschitz_bound, rel=1e-9)


@pytest.mark.slow
def test_zoo_train_reproduces_the_shipped_digits_model_bit_for_bit(tmp_path, digits):
    """The trainer applies the thread count the shipped model records (whatever torch's default is),
    so the retrained weights are the shipped ones, bit for bit."""
    from rich.console import Console

    from training.trainer import RunOptions, train

    name = "lipconv_s.digits_hkr"
    entry = load_registry()[name]
    if entry.checkpoint is None:
        pytest.fail(f"{name} is expected to ship with weights")
    threads = torch.get_num_threads()
    torch.set_num_threads(entry.metrics["torch_threads"] + 1)
    try:
        result = train(entry, tmp_path, RunOptions(progress=False), data=digits, console=Console(quiet=True))
    finally:
        torch.set_num_threads(threads)
    assert result.certificate.weights_sha256 == entry.certificate["weights_sha256"]
    assert result.metrics["clean_accuracy"] == pytest.approx(entry.metrics["clean_accuracy"], abs=5e-5)


def test_zoo_report_writes_a_model_card_with_plots(tmp_path):
    from typer.testing import CliRunner

    from zoo.app.cli import app

    name = SHIPPED[0]
    result = CliRunner().invoke(app, ["report", name, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    card = (tmp_path / f"{name}.md").read_text()
    bound = load_registry()[name].certificate["lipschitz_bound"]
    assert f"{bound:.6f}" in card and "| eps (L2) | certified accuracy (%) |" in card
    assert "| layer | op | input shape | bound |" in card
    assert (
        "| test image | label | predicted | certified radius | attack distance | certified / attack |" in card
    )
    for plot in (f"{name}.certified_accuracy.png", f"{name}.layer_bounds.png", f"{name}.radius_examples.png"):
        assert f"]({plot})" in card
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_zoo_report_of_a_fashion_mnist_model_tabulates_its_recorded_accuracies(tmp_path):
    from typer.testing import CliRunner

    from zoo.app.cli import app

    name = FASHION_MNIST[0]
    dataset_or_skip("fashion_mnist")
    result = CliRunner().invoke(app, ["report", name, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    card = (tmp_path / f"{name}.md").read_text()
    metrics = load_registry()[name].metrics
    rows = {"0.0": "clean_accuracy", "0.1": "certified_accuracy_0.1", "36/255": "certified_accuracy_0.1412"}
    rows |= {"0.25": "certified_accuracy_0.25", "72/255": "certified_accuracy_0.2824"}
    rows |= {"0.5": "certified_accuracy_0.5", "1.0": "certified_accuracy_1"}
    for eps, key in rows.items():
        assert f"| {eps} | {100 * metrics[key]:.1f} |" in card
    assert "| Ankle boot | Ankle boot |" in card  # the grid names Fashion-MNIST's classes
