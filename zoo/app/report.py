"""Model cards: a Markdown page with three PNG plots.

* certified accuracy against the L2 radius eps, the dataset's reported radii marked and tabulated;
* the certificate's per-layer bounds (also as a table);
* a grid of test images, each with its certified radius and the distance of the closest adversarial
  example an attack found (:func:`zoo.attack.minimal_l2_adversarial`): the true robust radius lies
  between the two, so their ratio says how much robustness the certificate leaves unproven. An
  attack distance below a certified radius would disprove the certificate: the card is refused then.

A card describes a models.yaml name, a checkpoint file or an exported file (ONNX, TorchScript, .pt2):
:func:`resolve_card_source` turns each into a :class:`CardSource`, :func:`evaluation_set` loads its
test set, and :func:`write_model_card` evaluates and writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
import torch
from torch import nn

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from zoo.app import EXPORTED_SUFFIXES, PROGRAM_SUFFIXES
from zoo.attack import minimal_l2_adversarial
from zoo.certificate import Certificate
from zoo.hub import CertifiedModel, load
from zoo.registry import ModelEntry, get_entry
from zoo.robustness import certified_radius, eps_name, reported_eps

if TYPE_CHECKING:
    from export.propagation import Progress

__all__ = [
    "CardSource",
    "CertificateContradictedError",
    "RadiusExample",
    "TestSet",
    "evaluation_set",
    "radius_examples",
    "resolve_card_source",
    "write_model_card",
]

EXAMPLES_PER_CLASS = 2


class CertificateContradictedError(RuntimeError):
    """An adversarial example was found closer than an input's certified radius."""


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
        differentiable: whether gradients flow through ``certified.model`` (the attack needs them;
            an ONNX file run by onnxruntime has none).
    """

    name: str
    facts: list[str]
    certified: CertifiedModel
    dataset: str
    entry: ModelEntry | None = None
    layers_label: str = "Lipschitz bound of the layer"
    differentiable: bool = True


@dataclass(frozen=True)
class TestSet:
    """The examples a card is measured on: (N, *input_shape) inputs, (N,) labels, and each label's
    name (empty when the dataset has none)."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple[str, ...] = ()


def resolve_card_source(
    source: str, dataset: str | None = None, progress: Progress | None = None, *, trust_program: bool = False
) -> CardSource:
    """The :class:`CardSource` of a models.yaml name, a checkpoint path or an exported file.

    A checkpoint's dataset is ``dataset`` if given, else the one its certificate's preprocessing
    records. An exported file is verified first (``progress`` is told of each op); its radii use
    the bound recomputed from the file, and its embedded certificate gives the input space. The
    program of a TorchScript or .pt2 file runs in this process, unconfined (aten operators can
    create files): such a file is refused unless ``trust_program``.

    Raises:
        ValueError: no dataset is known, an exported file carries no certificate, or it holds a
            program not trusted.
        export.verify.VerificationError: an exported file cannot be verified or does not satisfy its
            certificate.
    """
    path = Path(source)
    if path.suffix in EXPORTED_SUFFIXES and path.is_file():
        if path.suffix in PROGRAM_SUFFIXES and not trust_program:
            raise ValueError(
                f"{path}: measuring it runs its program in this process, unconfined (a TorchScript or "
                ".pt2 program can do what aten operators do, create files among them): pass "
                "--trust-program if you trust it, or report its ONNX form"
            )
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


def evaluation_set(card: CardSource, data_dir: str | Path | None = None) -> TestSet:
    """The test examples and labels ``card`` is measured on (a transfer recipe's relabelled target
    classes have no names); ValueError when the model's number of classes is not the test set's."""
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
    relabelled = card.entry is not None and card.entry.recipe.transfer is not None
    return TestSet(x_test, y_test, () if relabelled else data.class_names)


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
        differentiable=path.suffix != ".onnx",
    )


def _plot_certified_accuracy(
    radius: np.ndarray, correct: np.ndarray, marks: Sequence[float], path: Path
) -> None:
    eps = np.linspace(0.0, max(float(radius.max()), max(marks), 1e-3) * 1.05, 400)
    accuracy = [(correct & (radius > e)).mean() * 100 for e in eps]
    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    axes.plot(eps, accuracy)
    for e in marks:
        value = (correct & (radius > e)).mean() * 100
        axes.plot([e], [value], "o", color="C1")
        axes.annotate(
            f"{eps_name(e)}: {value:.1f}", (e, value), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
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


@dataclass(frozen=True)
class RadiusExample:
    """One test image: its index in the test set, label, prediction, certified radius and the distance
    of the closest adversarial example found (L2, input units; ``inf`` when the attack found
    nothing, 0 when the image is misclassified, ``nan`` when no attack ran)."""

    index: int
    label: int
    predicted: int
    certified: float
    attack: float


def radius_examples(
    certified: CertifiedModel,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    per_class: int = EXAMPLES_PER_CLASS,
    attack_steps: int = 200,
    attack: bool = True,
) -> list[RadiusExample]:
    """The first ``per_class`` test images of each class (by class) with their certified radius and,
    if ``attack``, the distance of the closest adversarial example found.

    Raises:
        CertificateContradictedError: an adversarial example lies within an image's certified radius.
    """
    labels = y_test.tolist()
    chosen = [i for k in sorted(set(labels)) for i in [j for j, y in enumerate(labels) if y == k][:per_class]]
    x, y = x_test[chosen], y_test[chosen]
    with torch.no_grad():
        logits = certified.model(x)
    radius = certified_radius(logits, certified.certificate.lipschitz_bound)
    predicted = logits.argmax(1)
    if attack:
        distance = minimal_l2_adversarial(certified.model, x, y, steps=attack_steps).distance
    else:
        distance = torch.full((len(chosen),), float("nan"), dtype=torch.float64)
    examples = []
    for row, index in enumerate(chosen):
        example = RadiusExample(
            index, int(y[row]), int(predicted[row]), float(radius[row]), float(distance[row])
        )
        if example.predicted == example.label and example.attack < example.certified:
            raise CertificateContradictedError(
                f"test image {index}: an adversarial example at distance {example.attack:.6f} lies within "
                f"its certified radius {example.certified:.6f}: the certificate is wrong"
            )
        examples.append(example)
    return examples


def _plot_examples(
    examples: list[RadiusExample], x_test: torch.Tensor, class_names: Sequence[str], path: Path
) -> None:
    columns = min(len(examples), 10)
    rows = -(-len(examples) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), dpi=120, squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, example in zip(grid.flat, examples, strict=False):
        image = x_test[example.index].numpy()
        axes.imshow(
            image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1
        )
        caption = _class_name(class_names, example.label)
        if example.predicted != example.label:
            caption += "\nmisclassified"
        else:
            caption += f"\ncert {example.certified:.2f}"
            caption += "" if np.isnan(example.attack) else f"\nattack {example.attack:.2f}"
        axes.set_title(caption, fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _class_name(class_names: Sequence[str], label: int) -> str:
    return class_names[label] if class_names else str(label)


def _example_rows(examples: list[RadiusExample], class_names: Sequence[str]) -> list[str]:
    rows = []
    for example in examples:
        label = _class_name(class_names, example.label)
        predicted = _class_name(class_names, example.predicted)
        if example.predicted != example.label:
            figures = "- | - | -"
        elif np.isnan(example.attack):
            figures = f"{example.certified:.4f} | - | -"
        else:
            ratio = example.certified / example.attack if np.isfinite(example.attack) else 0.0
            figures = f"{example.certified:.4f} | {example.attack:.4f} | {ratio:.2f}"
        rows.append(f"| {example.index} | {label} | {predicted} | {figures} |")
    return rows


def _examples_text(card: CardSource, examples: list[RadiusExample]) -> str:
    if not card.differentiable:
        return (
            f"The first {EXAMPLES_PER_CLASS} test images of each class with their certified radius. No "
            "attack distance: onnxruntime computes no gradients (report the checkpoint or a TorchScript "
            "/ .pt2 export of the model for them)."
        )
    ratios = [e.certified / e.attack for e in examples if e.predicted == e.label and np.isfinite(e.attack)]
    return (
        f"The first {EXAMPLES_PER_CLASS} test images of each class. The true robust radius lies between "
        "the certified radius (from the certificate) and the distance of the closest adversarial example "
        "a minimal-L2 attack found (decoupled direction and norm, 200 steps, then bisection; images kept "
        f"in [0, 1]); median certified / attack ratio: **{np.median(ratios) if ratios else 0.0:.2f}**."
    )


def write_model_card(card: CardSource, test_set: TestSet, out_dir: Path) -> Path:
    """Evaluate ``card``'s model on ``test_set``, attack a few of its images, and write
    ``out_dir/<name>.md`` with its plots.

    Raises:
        CertificateContradictedError: the attack found an adversarial example within a certified radius.
    """
    certified, x_test, y_test = card.certified, test_set.x, test_set.y
    with torch.no_grad():
        logits = torch.cat([certified.model(x_test[i : i + 512]) for i in range(0, len(x_test), 512)])
    radius = certified_radius(logits, certified.certificate.lipschitz_bound).numpy()
    correct = (logits.argmax(1) == y_test).numpy()
    marks = reported_eps(card.dataset)
    examples = radius_examples(certified, x_test, y_test, attack=card.differentiable)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "accuracy": f"{card.name}.certified_accuracy.png",
        "layers": f"{card.name}.layer_bounds.png",
        "examples": f"{card.name}.radius_examples.png",
    }
    _plot_certified_accuracy(radius, correct, marks, out_dir / plots["accuracy"])
    _plot_layer_bounds(certified, card.layers_label, out_dir / plots["layers"])
    _plot_examples(examples, x_test, test_set.class_names, out_dir / plots["examples"])

    accuracy_rows = [
        f"| {eps_name(e)} | {100 * float((correct & (radius > e)).mean()):.1f} |" for e in (0.0, *marks)
    ]
    layer_rows = [
        f"| {layer.name} | {layer.op} | {'x'.join(map(str, layer.input_shape))} | {layer.bound:.6f} |"
        for layer in certified.certificate.layers
    ]
    lines = [
        f"# {card.name}",
        "",
        *card.facts,
        "",
        f"## Certified accuracy ({len(y_test)} test images)",
        "",
        "| eps (L2) | certified accuracy (%) |",
        "|---|---|",
        *accuracy_rows,
        "",
        f"![certified accuracy]({plots['accuracy']})",
        "",
        "## Per-layer bounds",
        "",
        "| layer | op | input shape | bound |",
        "|---|---|---|---|",
        *layer_rows,
        "",
        f"![per-layer bounds]({plots['layers']})",
        "",
        "## Certified radius and attack distance",
        "",
        _examples_text(card, examples),
        "",
        "| test image | label | predicted | certified radius | attack distance | certified / attack |",
        "|---|---|---|---|---|---|",
        *_example_rows(examples, test_set.class_names),
        "",
        f"![certified radius and attack distance]({plots['examples']})",
        "",
    ]
    path = out_dir / f"{card.name}.md"
    path.write_text("\n".join(lines))
    return path
