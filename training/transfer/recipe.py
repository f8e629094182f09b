"""The ``recipe.transfer`` block of a models.yaml entry, validated when training starts.

A transfer recipe names a source model, the dataset classes the new model learns (its logits, in
order), how many of their training labels it may use, and one regularizer with its weights::

    transfer:
      source: lipconv_xs.digits_source04     # a models.yaml entry or a checkpoint path
      source_classes: [0, 1, 2, 3, 4]         # what the source's logits stand for
      classes: [5, 6, 7, 8, 9]                # what this model's logits stand for
      label_fraction: 0.1                     # per class, drawn with the run's seed
      regularizer: {name: l2sp, weight: 0.001, head_weight: 0.001}

Without ``source`` the block is only a class filter: the model is trained from scratch on
``classes`` (this is how the source models of the transfer experiments are made).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from zoo.registry import ModelEntry

__all__ = [
    "BSSSpec",
    "BiTuningSpec",
    "CoTuningSpec",
    "DeltaAttentionSpec",
    "DeltaSpec",
    "L2SPSpec",
    "L2Spec",
    "LwFSpec",
    "NoRegularizer",
    "RegularizerSpec",
    "TransferSpec",
    "WithHeadL2",
    "parse_transfer",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoRegularizer(_Strict):
    """Plain fine-tuning: the task loss alone."""

    name: Literal["none"] = "none"


class WithHeadL2(_Strict):
    """The weight-space regularizers also put an L2 penalty of ``head_weight`` on the new head."""

    head_weight: NonNegativeFloat = 0.01


class L2Spec(WithHeadL2):
    """``weight * L2(backbone) + head_weight * L2(head)``."""

    name: Literal["l2"]
    weight: NonNegativeFloat = 0.01


class L2SPSpec(WithHeadL2):
    """``weight * L2-SP(backbone, source backbone) + head_weight * L2(head)``."""

    name: Literal["l2sp"]
    weight: NonNegativeFloat = 0.01


class DeltaSpec(WithHeadL2):
    """DELTA behavioural regularization on the outputs of ``layers`` (default: every conv / linear
    layer of the backbone)."""

    name: Literal["delta"]
    weight: NonNegativeFloat = 0.01
    layers: list[str] | None = None


class DeltaAttentionSpec(WithHeadL2):
    """DELTA with channel attention; the attention is measured on a probe whose new head was trained
    for ``attention_epochs`` on the frozen source backbone, over ``attention_batches`` batches."""

    name: Literal["delta_attention"]
    weight: NonNegativeFloat = 0.01
    layers: list[str] | None = None
    attention_epochs: PositiveInt = 5
    attention_batches: PositiveInt = 4


class LwFSpec(_Strict):
    """Learning without Forgetting: ``weight * KL`` between recorded and current source logits."""

    name: Literal["lwf"]
    weight: NonNegativeFloat = 4.0
    temperature: PositiveFloat = 3.0


class CoTuningSpec(_Strict):
    """Co-Tuning with the ``direct`` or ``calibrated`` category relationship (``C``: inverse L2
    strength of the calibrated method's logistic regression)."""

    name: Literal["co_tuning"]
    weight: NonNegativeFloat = 2.3
    relationship: Literal["direct", "calibrated"] = "calibrated"
    C: PositiveFloat = 1.0


class BiTuningSpec(_Strict):
    """Bi-Tuning: ``weight * (projector term + classifier term)``."""

    name: Literal["bi_tuning"]
    weight: NonNegativeFloat = 1.0
    queue_size: PositiveInt = 40
    momentum: float = Field(default=0.999, ge=0.0, lt=1.0)
    temperature: PositiveFloat = 0.07
    projection_dim: PositiveInt = 128


class BSSSpec(_Strict):
    """Batch Spectral Shrinkage of the backbone features: ``weight * BSS_k``."""

    name: Literal["bss"]
    weight: NonNegativeFloat = 0.001
    k: PositiveInt = 1


RegularizerSpec = Annotated[
    NoRegularizer
    | L2Spec
    | L2SPSpec
    | DeltaSpec
    | DeltaAttentionSpec
    | LwFSpec
    | CoTuningSpec
    | BiTuningSpec
    | BSSSpec,
    Field(discriminator="name"),
]


class TransferSpec(_Strict):
    """The validated ``recipe.transfer`` block (see the module docstring)."""

    source: str | None = None
    source_classes: list[Annotated[int, Field(ge=0)]] | None = None
    classes: list[Annotated[int, Field(ge=0)]] = Field(min_length=2)
    label_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    # Factor that turns the source's 1-Lipschitz logits into the logits its softmax was trained on
    # (the tau of a tau_cross_entropy source); default: read from the source entry's recipe.
    source_logit_scale: PositiveFloat | None = None
    regularizer: RegularizerSpec = NoRegularizer()

    @model_validator(mode="after")
    def _consistent(self) -> TransferSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("'classes' lists a class twice")
        if self.source is None:
            if self.source_classes is not None or self.regularizer.name != "none":
                raise ValueError("'source_classes' and a regularizer need a 'source'")
        elif self.source_classes is None:
            raise ValueError(
                "a recipe with a 'source' must say which classes its logits are ('source_classes')"
            )
        return self


def parse_transfer(entry: ModelEntry) -> TransferSpec:
    """Validate ``entry.recipe.transfer``; errors name the entry and the field.

    Raises:
        ValueError: ``entry NAME: field 'recipe.transfer.X': message``.
    """
    if entry.recipe.transfer is None:
        raise ValueError(f"entry {entry.name}: the recipe has no 'transfer' block")
    try:
        spec = TransferSpec(**entry.recipe.transfer)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(["recipe", "transfer", *(str(part) for part in first["loc"])])
        raise ValueError(f"entry {entry.name}: field {field!r}: {first['msg']}") from None
    if len(spec.classes) != entry.architecture.num_classes:
        raise ValueError(
            f"entry {entry.name}: field 'recipe.transfer.classes': {len(spec.classes)} classes but "
            f"architecture.num_classes is {entry.architecture.num_classes}"
        )
    return spec
