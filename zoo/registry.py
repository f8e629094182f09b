"""models.yaml: the registry of every model, validated on load.

Each entry is named ``arch.tag`` (as timm names models) and holds the architecture, the training
recipe, and once trained and shipped, the checkpoint file, its sha256, a certificate summary and
the measured metrics. A wrong field is an error that names the entry and the field.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from zoo.models import check_options

__all__ = [
    "ArchitectureSpec",
    "ModelEntry",
    "Recipe",
    "RegistryError",
    "get_entry",
    "load_registry",
    "registry_path",
]

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9][a-z0-9_]*$")


class RegistryError(ValueError):
    """models.yaml is missing, malformed, or does not name the requested model."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchitectureSpec(_Strict):
    """Which network to build: a name from ``zoo.models.ARCHITECTURES`` and its options."""

    name: str
    input_shape: tuple[PositiveInt, PositiveInt, PositiveInt]
    num_classes: int = Field(ge=2)
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_architecture_and_options(self) -> ArchitectureSpec:
        check_options(self.name, self.options)
        return self


class LossSpec(_Strict):
    name: Literal["hkr", "kr", "hinge", "tau_cross_entropy"]
    params: dict[str, float] = Field(default_factory=dict)


class OptimizerSpec(_Strict):
    name: Literal["adam", "sgd"]
    lr: PositiveFloat
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)


class Recipe(_Strict):
    """How to train the model with ``zoo train``."""

    dataset: Literal["digits", "mnist", "fashion_mnist", "cifar10"]
    loss: LossSpec
    optimizer: OptimizerSpec
    epochs: PositiveInt
    batch_size: PositiveInt
    seed: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    augmentation: Literal["none", "crop", "crop_flip"] = "none"
    # GroupSort2 / MaxMin compute min / max through one ReLU while training: a cheaper backward, the
    # same values up to one rounding, so a recipe trained one way reproduces bit for bit only that way.
    minmax_through_relu: bool = False
    # Transfer (fine-tune a source model) and continual-learning recipes: their fields are checked
    # by training.transfer / training.continual when training starts (zoo does not import training).
    transfer: dict[str, Any] | None = None
    continual: dict[str, Any] | None = None


class ModelEntry(_Strict):
    """One model of the zoo."""

    name: str
    description: str
    architecture: ArchitectureSpec
    recipe: Recipe
    checkpoint: str | None = None
    url: str | None = Field(default=None, pattern=r"^(https|file)://")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    certificate: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _weights_have_a_hash(self) -> ModelEntry:
        if (self.checkpoint or self.url) and not self.sha256:
            raise ValueError("an entry with a checkpoint or url needs its sha256")
        return self

    @property
    def has_weights(self) -> bool:
        return self.checkpoint is not None or self.url is not None


def registry_path() -> Path:
    """models.yaml to read: ``$ZOO_MODELS_YAML``, else the copy inside the installed package, else
    the one at the root of a source checkout."""
    override = os.environ.get("ZOO_MODELS_YAML")
    if override:
        return Path(override)
    packaged = Path(__file__).with_name("models.yaml")
    return packaged if packaged.is_file() else Path(__file__).parent.parent / "models.yaml"


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "<entry>"
    return f"field {field!r}: {first['msg']}"


@cache
def _load(path: Path, mtime_ns: int) -> dict[str, ModelEntry]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RegistryError(f"{path}: cannot read the registry ({error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise RegistryError(f"{path}: expected a top-level mapping 'models: {{name: entry}}'")
    entries: dict[str, ModelEntry] = {}
    for name, fields in document["models"].items():
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise RegistryError(f"{path}: entry {name!r}: a name must look like 'arch.tag'")
        if not isinstance(fields, dict):
            raise RegistryError(f"{path}: entry {name!r}: expected a mapping of fields")
        try:
            entries[name] = ModelEntry(name=name, **fields)
        except ValidationError as error:
            raise RegistryError(f"{path}: entry {name!r}: {_describe(error)}") from None
    return entries


def load_registry(path: str | os.PathLike | None = None) -> dict[str, ModelEntry]:
    """Read and validate models.yaml; returns ``{name: entry}`` in file order."""
    path = Path(path) if path is not None else registry_path()
    if not path.is_file():
        raise RegistryError(f"{path}: registry file not found")
    return _load(path.resolve(), path.stat().st_mtime_ns)


def get_entry(name: str, path: str | os.PathLike | None = None) -> ModelEntry:
    """The entry called ``name``; the error lists close names when it does not exist."""
    entries = load_registry(path)
    if name not in entries:
        raise RegistryError(f"no model named {name!r} in models.yaml; known: {', '.join(entries)}")
    return entries[name]
