"""Model cards: a Markdown page with two PNG plots (certified accuracy against eps, per-layer bounds)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from zoo.hub import CertifiedModel
from zoo.registry import ModelEntry
from zoo.robustness import certified_radius

__all__ = ["write_model_card"]


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


def _plot_layer_bounds(certified: CertifiedModel, path: Path) -> None:
    layers = certified.certificate.layers
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=120)
    axes.bar(range(len(layers)), [layer.bound for layer in layers])
    axes.set_xticks(
        range(len(layers)), [f"{layer.name} {layer.op}" for layer in layers], rotation=70, fontsize=7
    )
    axes.set(ylabel="Lipschitz bound")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_model_card(
    entry: ModelEntry, certified: CertifiedModel, x_test: torch.Tensor, y_test: torch.Tensor, out_dir: Path
) -> Path:
    """Evaluate ``certified`` on the test set and write ``out_dir/<name>.md`` with its plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        logits = torch.cat([certified.model(x_test[i : i + 512]) for i in range(0, len(x_test), 512)])
    bound = certified.certificate.lipschitz_bound
    radius = certified_radius(logits, bound).numpy()
    correct = (logits.argmax(1) == y_test).numpy()
    accuracy_plot, layers_plot = f"{entry.name}.certified_accuracy.png", f"{entry.name}.layer_bounds.png"
    _plot_certified_accuracy(radius, correct, out_dir / accuracy_plot)
    _plot_layer_bounds(certified, out_dir / layers_plot)

    rows = "\n".join(
        f"| {e} | {100 * float((correct & (radius > e)).mean()):.1f} |" for e in (0.0, 0.1, 0.25, 0.5, 1.0)
    )
    lines = [
        f"# {entry.name}",
        "",
        entry.description,
        "",
        f"- architecture: `{entry.architecture.name}` {entry.architecture.options or ''}, input "
        f"{list(entry.architecture.input_shape)}, {entry.architecture.num_classes} classes",
        f"- recipe: {entry.recipe.dataset}, loss `{entry.recipe.loss.name}` {entry.recipe.loss.params}, "
        f"{entry.recipe.optimizer.name} lr {entry.recipe.optimizer.lr}, {entry.recipe.epochs} epochs, "
        f"seed {entry.recipe.seed}",
        f"- certified Lipschitz bound: **{bound:.6f}** ({certified.certificate.method}; relative margin "
        f"{certified.certificate.relative_margin:g} per layer)",
        f"- input space: {certified.preprocessing}",
        f"- weights sha256: `{certified.certificate.weights_sha256}`",
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
    card = out_dir / f"{entry.name}.md"
    card.write_text("\n".join(lines))
    return card
