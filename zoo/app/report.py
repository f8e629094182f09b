"""Model cards: a Markdown page with two PNG plots (certified accuracy against eps, per-layer bounds).

A card describes a models.yaml name, a checkpoint file or an exported file (ONNX, TorchScript, .pt2):
:func:`resolve_card_source` turns each into a :class:`CardSource`, :func:`evaluation_set` loads its
test set, and :func:`write_model_card` evaluates and writes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import torch
from torch import nn

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from zoo.app import EXPORTED_SUFFIXES
from zoo.certificate import Certificate
from zoo.hub import CertifiedModel, load
from zoo.registry import ModelEntry, get_entry
from zoo.robustness import certified_radius

if TYPE_CHECKING:
    from export.propagation import Progress

__all__ = ["CardSource", "evaluation_set", "resolve_card_source", "write_model_card"]


@dataclass(frozen=True)
class CardSource:
    """The model a card describes.

    Attributes:
        name: the card's title and the stem of its files (a models.yaml name or a file name).
        facts: Markdown lines on the model: what it is, where it comes from, its bound.
        certified: the network, computing logits from inputs in the certificate's input space, and
            the certificate whose ``lipschitz_bound`` gives the certified radii.
        dataset: models.yaml name of the dataset whose test set the card is measured on.
        entry: the registry entry when the source is a name (a transfer recipe is evaluated on its
            target classes), else None.
        layers_label: what the bars of the bounds plot show.
    """

    name: str
    facts: list[str]
    certified: CertifiedModel
    dataset: str
    entry: ModelEntry | None = None
    layers_label: str = "Lipschitz bound of the layer"


def resolve_card_source(
    source: str, dataset: str | None = None, progress: Progress | None = None
) -> CardSource:
    """The :class:`CardSource` of a models.yaml name, a checkpoint path or an exported file.

    A checkpoint's dataset is ``dataset`` if given, else the one its certificate's preprocessing
    records. An exported file is verified first (``progress`` is told of each op); its radii use
    the bound recomputed from the file, and its embedded certificate gives the input space.

    Raises:
        ValueError: no dataset is known, or an exported file carries no certificate.
        export.verify.VerificationError: an exported file cannot be verified or does not satisfy its
            certificate.
    """
    path = Path(source)
    if path.suffix in EXPORTED_SUFFIXES and path.is_file():
        return _exported(path, dataset, progress)
    if path.is_file():
        certified = load(path)
        facts = [
            f"Checkpoint `{path}`.",
            "",
            f"- architecture: {_architecture(certified.architecture)}",
            f"- certified Lipschitz bound: {_bound(certified.certificate)}, computed from the weights",
            *_certificate_facts(certified.certificate),
        ]
        return CardSource(path.name, facts, certified, _dataset_of(certified.certificate, dataset, path))
    entry = get_entry(source)
    certified = load(source)
    recipe = entry.recipe
    facts = [
        entry.description,
        "",
        f"- architecture: {_architecture(entry.architecture.model_dump())}",
        f"- recipe: {recipe.dataset}, loss `{recipe.loss.name}` {recipe.loss.params}, "
        f"{recipe.optimizer.name} lr {recipe.optimizer.lr}, {recipe.epochs} epochs, seed {recipe.seed}",
        f"- certified Lipschitz bound: {_bound(certified.certificate)}, computed from the weights",
        *_certificate_facts(certified.certificate),
    ]
    if dataset not in (None, recipe.dataset):
        raise ValueError(f"{entry.name} is a model of {recipe.dataset}, not {dataset}: leave --dataset out")
    return CardSource(entry.name, facts, certified, recipe.dataset, entry)


def evaluation_set(card: CardSource, data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test examples and labels ``card`` is measured on; ValueError when the model's number of
    classes is not the test set's."""
    from training.data import load_dataset
    from training.trainer import evaluation_split

    data = load_dataset(card.dataset, data_dir)
    x_test, y_test = (data.x_test, data.y_test) if card.entry is None else evaluation_split(card.entry, data)
    with torch.no_grad():
        outputs = card.certified.model(x_test[:1]).shape[-1]
    labels = int(y_test.max()) + 1
    if outputs != labels:
        raise ValueError(
            f"{card.name} has {outputs} outputs but the {card.dataset} test set has {labels} classes "
            "(a model of a class subset is reported by its models.yaml name)"
        )
    return x_test, y_test


def _architecture(architecture: dict) -> str:
    shape = list(architecture.get("input_shape", []))
    return (
        f"`{architecture.get('name')}` {architecture.get('options') or ''}, input {shape}, "
        f"{architecture.get('num_classes')} classes"
    )


def _bound(certificate: Certificate) -> str:
    return (
        f"**{certificate.lipschitz_bound:.6f}** ({certificate.method}; relative margin "
        f"{certificate.relative_margin:g} per layer)"
    )


def _certificate_facts(certificate: Certificate) -> list[str]:
    """The input space and the weights hash a certificate states."""
    return [
        f"- input space: {dict(certificate.preprocessing)}",
        f"- weights sha256: `{certificate.weights_sha256}`",
    ]


def _dataset_of(certificate: Certificate, dataset: str | None, path: Path) -> str:
    recorded = certificate.preprocessing.get("dataset")
    if dataset is not None:
        return dataset
    if not isinstance(recorded, str):
        raise ValueError(f"{path}: its certificate records no dataset: name it with --dataset")
    return recorded


class _OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime on the CPU, as a module from inputs to logits (no gradients)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from export.runtime import onnx_session

        self.session = onnx_session(path, "cpu")
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().cpu().numpy().astype(np.float32)
        (logits, *_) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


def _exported(path: Path, dataset: str | None, progress: Progress | None) -> CardSource:
    from export.verify import VerificationError, verify_artifact
    from export.writers import load_torchscript, read_pt2_certificate

    report = verify_artifact(path, progress)
    if not report.ok:
        raise VerificationError(f"{path}: {'; '.join(report.problems)}")
    if report.embedded is None:
        raise ValueError(f"{path}: carries no certificate, so no input space for its test set")
    if path.suffix == ".onnx":
        model: nn.Module = _OnnxModule(path)
    elif path.suffix == ".pt2":
        model = read_pt2_certificate(path)[0].module()
    else:
        model = load_torchscript(path)[0].eval()
    certificate = dataclasses.replace(
        report.embedded, lipschitz_bound=report.lipschitz_bound, layers=report.layers
    )
    facts = [
        f"Exported file `{path}` ({report.format}), verified by `zoo verify`.",
        "",
        f"- Lipschitz bound: **{report.lipschitz_bound:.6f}**, recomputed from the file alone; "
        f"the file's certificate states {_bound(report.embedded)}",
        *_certificate_facts(report.embedded),
    ]
    return CardSource(
        path.name,
        facts,
        CertifiedModel(model, certificate, {}),
        _dataset_of(report.embedded, dataset, path),
        layers_label="bound from the input to the op's output",
    )


def _plot_certified_accuracy(radius: np.ndarray, correct: np.ndarray, path: Path) -> None:
    eps = np.linspace(0.0, max(float(radius.max()), 1e-3) * 1.05, 200)
    accuracy = [(correct & (radius > e)).mean() * 100 for e in eps]
    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    axes.plot(eps, accuracy)
    axes.set(xlabel="L2 radius eps (input units)", ylabel="certified accuracy (%)", ylim=(0, 100))
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _plot_layer_bounds(certified: CertifiedModel, label: str, path: Path) -> None:
    layers = certified.certificate.layers
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=120)
    axes.bar(range(len(layers)), [layer.bound for layer in layers])
    axes.set_xticks(
        range(len(layers)), [f"{layer.name} {layer.op}" for layer in layers], rotation=70, fontsize=7
    )
    axes.set(ylabel=label)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_model_card(card: CardSource, x_test: torch.Tensor, y_test: torch.Tensor, out_dir: Path) -> Path:
    """Evaluate ``card``'s model on the test set and write ``out_dir/<name>.md`` with its plots."""
    certified = card.certified
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        logits = torch.cat([certified.model(x_test[i : i + 512]) for i in range(0, len(x_test), 512)])
    bound = certified.certificate.lipschitz_bound
    radius = certified_radius(logits, bound).numpy()
    correct = (logits.argmax(1) == y_test).numpy()
    accuracy_plot, layers_plot = f"{card.name}.certified_accuracy.png", f"{card.name}.layer_bounds.png"
    _plot_certified_accuracy(radius, correct, out_dir / accuracy_plot)
    _plot_layer_bounds(certified, card.layers_label, out_dir / layers_plot)

    rows = "\n".join(
        f"| {e} | {100 * float((correct & (radius > e)).mean()):.1f} |" for e in (0.0, 0.1, 0.25, 0.5, 1.0)
    )
    lines = [
        f"# {card.name}",
        "",
        *card.facts,
        "",
        "| eps (L2) | certified accuracy (%) |",
        "|---|---|",
        rows,
        "",
        f"![certified accuracy]({accuracy_plot})",
        "",
        f"![per-layer bounds]({layers_plot})",
        "",
    ]
    path = out_dir / f"{card.name}.md"
    path.write_text("\n".join(lines))
    return path
