"""The source model of a transfer recipe: found, trained if needed, loaded with its certificate,
and copied into the backbone of the network to fine-tune."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.nn.utils import parametrize

import zoo
from training.data import Dataset
from training.losses import make_loss
from training.protocol import TrainPrerequisite
from training.transfer.recipe import TransferSpec
from zoo.registry import ModelEntry, get_entry

__all__ = ["SOURCE_DIR", "Source", "initialise_backbone", "load_source", "split_head"]

SOURCE_DIR = "source"
# Largest relative difference between the source's features and those of the re-parametrized copy.
INITIALISATION_TOLERANCE = 1e-3


def split_head(model: nn.Module) -> tuple[nn.Sequential, nn.Linear]:
    """``(backbone, head)`` of a zoo architecture: an ``nn.Sequential`` whose last module is the
    linear classifier. Both share the model's modules (and the backbone keeps their names)."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise ValueError(
            "transfer needs an nn.Sequential ending with its nn.Linear classifier, "
            f"got {type(model).__name__}"
        )
    return model[:-1], model[-1]


@dataclass(frozen=True)
class Source:
    """A loaded source model.

    Attributes:
        model: the plain (folded) source network, in eval mode, with no parameter requiring grad.
        certificate_bound: its certified Lipschitz bound (re-checked by ``zoo.load``).
        logit_scale: the factor its logits were trained at (the tau of its tau-cross-entropy), or
            None when unknown.
        origin: where it came from, for messages.
    """

    model: nn.Module
    certificate_bound: float
    logit_scale: float | None
    origin: str

    @property
    def backbone(self) -> nn.Sequential:
        return split_head(self.model)[0]

    @property
    def head(self) -> nn.Linear:
        return split_head(self.model)[1]

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Source logits (N, S) of inputs (N, *input_shape)."""
        return torch.cat([self.model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def trained_scale(self) -> float:
        """``logit_scale``, required: the regularizers that read source probabilities need it."""
        if self.logit_scale is None:
            raise ValueError(
                f"the logit scale of source {self.origin} is unknown (it was not trained with "
                "tau_cross_entropy): set recipe.transfer.source_logit_scale"
            )
        return self.logit_scale

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``softmax(logit_scale * logits)`` (N, S): what the source was trained to predict."""
        return torch.softmax(self.trained_scale() * self.logits(x), dim=1)


def _logit_scale(entry: ModelEntry) -> float | None:
    """The tau of a tau-cross-entropy recipe (None for margin losses, whose logits have no scale)."""
    return getattr(make_loss(entry.recipe.loss.name, entry.recipe.loss.params), "tau", None)


def load_source(
    spec: TransferSpec,
    entry: ModelEntry,
    out_dir: Path,
    *,
    data: Dataset,
    device: torch.device,
    console: Console,
    train: TrainPrerequisite,
) -> Source:
    """Load ``spec.source``: a checkpoint path, or a models.yaml entry. An entry without shipped
    weights is trained first into ``out_dir/source`` by ``train``, which continues a run found
    there, or only re-certifies it when it is complete.

    Raises:
        ValueError: the source's classes do not match ``spec.source_classes``.
    """
    path = Path(spec.source)
    source_entry = None
    if path.is_file() or path.suffix == ".safetensors":
        certified = zoo.load(path)
    else:
        source_entry = get_entry(spec.source)
        if source_entry.has_weights:
            certified = zoo.load(source_entry.name)
        else:
            source_dir = out_dir / SOURCE_DIR
            console.print(
                f"{entry.name}: source {source_entry.name} has no shipped weights: "
                f"training it first into {source_dir}"
            )
            same_data = source_entry.recipe.dataset == entry.recipe.dataset
            result = train(source_entry, source_dir, data if same_data else None)
            certified = zoo.load(result.checkpoint)
    if certified.architecture["num_classes"] != len(spec.source_classes):
        raise ValueError(
            f"entry {entry.name}: field 'recipe.transfer.source_classes': {len(spec.source_classes)} classes "
            f"but the source has {certified.architecture['num_classes']} logits"
        )
    source_transfer = source_entry.recipe.transfer if source_entry is not None else None
    if source_transfer is not None and source_transfer.get("classes") != spec.source_classes:
        raise ValueError(
            f"entry {entry.name}: field 'recipe.transfer.source_classes': {spec.source_classes} but "
            f"{source_entry.name} was trained on classes {source_transfer.get('classes')}"
        )
    scale = spec.source_logit_scale or (_logit_scale(source_entry) if source_entry is not None else None)
    model = certified.model.to(device).eval().requires_grad_(False)
    return Source(model, certified.certificate.lipschitz_bound, scale, str(spec.source))


def _assign(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``owner.<name>`` compute ``value``.

    A parametrized tensor is assigned through its parametrizations' ``right_inverse`` when they all
    have one (torch calls it); otherwise ``value`` becomes the raw tensor, which is torch's own
    convention when a parametrization is registered without ``right_inverse``, and exact for the
    normalising families whose outputs are their own fixed points (spectral + Bjorck of an
    orthonormal matrix, Frobenius normalisation).
    """
    if not parametrize.is_parametrized(owner, name):
        getattr(owner, name).copy_(value)
    elif all(hasattr(p, "right_inverse") for p in owner.parametrizations[name]):
        setattr(owner, name, value)
    else:
        owner.parametrizations[name].original.copy_(value)


@torch.no_grad()
def initialise_backbone(model: nn.Module, source: nn.Module, probe: torch.Tensor) -> float:
    """Copy the backbone of the folded ``source`` into the parametrized ``model`` (same architecture
    up to the head, which is left as built), then check it on the inputs ``probe``.

    After the copy, every parametrized tensor is evaluated a few times in training mode, so that
    state kept by its parametrization (the power-iteration vector of spectral normalisation)
    settles on the new weights.

    Returns:
        The largest difference between the two backbones' features on ``probe``, relative to the
        largest source feature.

    Raises:
        ValueError: the architectures differ, or the copy does not compute the source's features
            (a parametrization whose outputs are not its own fixed points, e.g. AOL).
    """
    backbone, source_backbone = split_head(model)[0], split_head(source)[0]
    for name, value in source_backbone.state_dict().items():
        owner_name, _, tensor_name = name.rpartition(".")
        try:
            owner = backbone.get_submodule(owner_name)
            _assign(owner, tensor_name, value)
        except (AttributeError, RuntimeError, ValueError) as error:
            raise ValueError(
                f"the source's {name} {tuple(value.shape)} does not fit the model: {error}"
            ) from None
    backbone.train()
    for _ in range(3):
        for owner in backbone.modules():
            if parametrize.is_parametrized(owner):
                for tensor_name in owner.parametrizations:
                    getattr(owner, tensor_name)
    backbone.eval()
    expected = source_backbone(probe)
    deviation = float((backbone(probe) - expected).abs().max() / expected.abs().max().clamp(min=1e-12))
    if deviation > INITIALISATION_TOLERANCE:
        raise ValueError(
            f"the re-parametrized source backbone differs from the source by {deviation:.2g} (relative): "
            "its parametrizations do not reproduce folded weights"
        )
    return deviation
