"""The ``recipe.continual`` block of a models.yaml entry, validated.

``zoo.registry`` keeps ``recipe.continual`` a free mapping (``zoo`` never imports ``training``); this
module gives it a schema. Example (YAML)::

    continual:
      experiences: 5                  # classes split into 5 experiences (digits: 5 pairs)
      class_order: [0, 1, 2, ...]     # optional; default: 0 .. num_classes - 1
      strategy:
        name: derpp                   # naive | er | derpp | si | ar1
        buffer_size: 200
        alpha: 0.1
        beta: 0.5
        lider: {alpha: 0.1, beta: 0.1, learn_budget: true}

An AR1 strategy (``name: ar1``) names its latent layer and, optionally, its normalisation
(``batch_recentering``, 1-Lipschitz, the default; ``batch_renorm``, AR1's original, uncertified),
its head (``lipschitz_head``) and the loss of its latent-replay phase (``replay_loss``).

Every error names the entry and the field: ``entry NAME: field 'recipe.continual.X': message``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)
from torch import nn

from training.losses import make_loss
from training.recipe import build_model
from zoo.registry import LossSpec, ModelEntry

__all__ = [
    "AR1Spec",
    "BatchRecenteringSpec",
    "BatchRenormSpec",
    "ContinualRecipe",
    "DERPPSpec",
    "ERSpec",
    "LiDERSpec",
    "NaiveSpec",
    "SIStrategySpec",
    "StrategySpec",
    "SynapticIntelligenceSpec",
    "parse_continual_recipe",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynapticIntelligenceSpec(_Strict):
    """Synaptic Intelligence: penalty ``(strength / 2) * sum importance * (theta - theta*)^2``."""

    strength: PositiveFloat = 1.0
    damping: PositiveFloat = 1e-7
    max_importance: PositiveFloat | None = None


class LiDERSpec(_Strict):
    """LiDER on buffer draws: ``alpha * mean estimate + beta * mean |estimate - relu(budget)|``."""

    alpha: NonNegativeFloat = 0.1
    beta: NonNegativeFloat = 0.1
    learn_budget: bool = True
    power_iterations: PositiveInt = 10


class NaiveSpec(_Strict):
    """Fine-tune on each experience in turn, nothing against forgetting."""

    name: Literal["naive"]


class ERSpec(_Strict):
    """Experience replay from a reservoir buffer (``replay_batch_size`` defaults to the batch size)."""

    name: Literal["er"]
    buffer_size: PositiveInt = 200
    replay_batch_size: PositiveInt | None = None
    lider: LiDERSpec | None = None


class DERPPSpec(ERSpec):
    """DER++: replay with ``alpha * MSE(logits, stored logits) + beta * loss(buffer x, buffer y)``."""

    name: Literal["derpp"]
    alpha: NonNegativeFloat = 0.1
    beta: NonNegativeFloat = 0.5


class SIStrategySpec(SynapticIntelligenceSpec):
    """Naive fine-tuning with the Synaptic Intelligence penalty on every parameter."""

    name: Literal["si"]


class BatchRenormSpec(_Strict):
    """BatchReNorm2d after every convolution (AR1's original): its eval-mode scale ``gamma / sigma`` is
    not bounded, so neither is the certified bound. ``r_max`` grows from 1 to ``max_r_max`` and
    ``d_max`` from 0 to ``max_d_max`` by ``inc_step`` per training sample."""

    name: Literal["batch_renorm"]
    momentum: float = Field(default=0.01, gt=0.0, le=1.0)
    max_r_max: float = Field(default=1.25, ge=1.0)
    max_d_max: NonNegativeFloat = 0.5
    inc_step: NonNegativeFloat = 4.1e-5


class BatchRecenteringSpec(_Strict):
    """BatchReCentering2d after every convolution: batch renormalisation's mean correction with a
    per-channel scale bounded by 1 (1-Lipschitz in both modes). ``d_max`` grows from 0 to
    ``max_d_max`` by ``inc_step`` per training sample."""

    name: Literal["batch_recentering"]
    momentum: float = Field(default=0.01, gt=0.0, le=1.0)
    max_d_max: NonNegativeFloat = 0.5
    inc_step: NonNegativeFloat = 4.1e-5


NormalizationSpec = Annotated[BatchRenormSpec | BatchRecenteringSpec, Field(discriminator="name")]


class AR1Spec(_Strict):
    """AR1: CWR* head, latent replay at ``latent_layer`` (an index of the architecture's layers), a
    normalisation after every convolution (None: none), optional Synaptic Intelligence.

    ``inc_lr`` is the learning rate after the first experience (the recipe's optimizer lr is used
    for the first). ``lipschitz_head`` trains and ships the CWR* head through
    ``training.continual.cwr.ProjectedRows`` (spectral norm at most 1); without it the head is a
    plain layer, as in AR1's original. ``replay_loss`` is the loss of the latent-replay phase (the
    experiences after the first; default: the recipe's loss)."""

    name: Literal["ar1"]
    latent_layer: NonNegativeInt
    replay_size: PositiveInt = 1500
    inc_lr: PositiveFloat = 5e-5
    normalization: NormalizationSpec | None = Field(
        default_factory=lambda: BatchRecenteringSpec(name="batch_recentering")
    )
    lipschitz_head: bool = True
    replay_loss: LossSpec | None = None
    synaptic_intelligence: SynapticIntelligenceSpec | None = None


StrategySpec = Annotated[
    NaiveSpec | ERSpec | DERPPSpec | SIStrategySpec | AR1Spec, Field(discriminator="name")
]
STRATEGY_NAMES = ("naive", "er", "derpp", "si", "ar1")


class ContinualRecipe(_Strict):
    """A class-incremental stream and the strategy that learns it."""

    experiences: PositiveInt = 5
    class_order: tuple[NonNegativeInt, ...] | None = None
    strategy: StrategySpec


class ContinualRecipeError(ValueError):
    """A continual recipe is invalid; the message names the entry and the field.

    Args:
        entry: the entry's name.
        field: dotted path below ``recipe.continual`` ('' for the block itself), or, for a field of
            the recipe outside it, a path starting with ``recipe.``.
        message: what is wrong.
    """

    def __init__(self, entry: str, field: str, message: str) -> None:
        path = field if field.startswith("recipe.") else "recipe.continual" + (f".{field}" if field else "")
        super().__init__(f"entry {entry}: field {path!r}: {message}")


NORMALIZATION_NAMES = ("batch_renorm", "batch_recentering")


def _field_path(location: tuple[int | str, ...]) -> str:
    """Dotted field path of a pydantic error location, without the tags pydantic inserts after a
    discriminated union (``strategy.er.buffer_size`` -> ``strategy.buffer_size``,
    ``strategy.ar1.normalization.batch_renorm.momentum`` -> ``strategy.normalization.momentum``)."""
    parts = [str(part) for part in location]
    if len(parts) > 1 and parts[0] == "strategy" and parts[1] in STRATEGY_NAMES:
        del parts[1]
    if len(parts) > 2 and parts[1] == "normalization" and parts[2] in NORMALIZATION_NAMES:
        del parts[2]
    return ".".join(parts)


def _check_against_architecture(entry: ModelEntry, recipe: ContinualRecipe) -> None:
    """Checks that need the architecture: classes to split, and the layers AR1 / LiDER address."""
    num_classes = entry.architecture.num_classes
    order = recipe.class_order if recipe.class_order is not None else tuple(range(num_classes))
    if sorted(order) != list(range(num_classes)):
        message = f"must list each of the {num_classes} classes 0..{num_classes - 1} once"
        raise ContinualRecipeError(entry.name, "class_order", message)
    if num_classes % recipe.experiences:
        raise ContinualRecipeError(
            entry.name, "experiences", f"{num_classes} classes do not split evenly into {recipe.experiences}"
        )
    strategy = recipe.strategy
    if isinstance(strategy, AR1Spec) and strategy.replay_loss is not None:
        try:
            make_loss(strategy.replay_loss.name, strategy.replay_loss.params)
        except (TypeError, ValueError) as error:
            raise ContinualRecipeError(entry.name, "strategy.replay_loss", str(error)) from None
    uses_lider = isinstance(strategy, ERSpec) and strategy.lider is not None
    if not (isinstance(strategy, AR1Spec) or uses_lider):
        return
    arch = entry.architecture
    model = build_model(entry, parametrized=False)
    field = "strategy.latent_layer" if isinstance(strategy, AR1Spec) else "strategy.lider"
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise ContinualRecipeError(
            entry.name, field, f"needs an nn.Sequential ending with nn.Linear; {arch.name!r} is not"
        )
    if isinstance(strategy, AR1Spec) and strategy.latent_layer > len(model) - 2:
        raise ContinualRecipeError(
            entry.name,
            field,
            f"{strategy.latent_layer} is not below the output layer ({arch.name!r} has layers "
            f"0..{len(model) - 1}; the latent layer must be at most {len(model) - 2})",
        )


def parse_continual_recipe(entry: ModelEntry) -> ContinualRecipe:
    """Validate ``entry.recipe.continual``; raises :class:`ContinualRecipeError` (a ValueError)."""
    if entry.recipe.lr_schedule != "constant":
        message = "a continual recipe trains every experience at the constant learning rate of its optimizer"
        raise ContinualRecipeError(entry.name, "recipe.lr_schedule", message)
    try:
        recipe = ContinualRecipe.model_validate(entry.recipe.continual or {})
    except ValidationError as error:
        first = error.errors()[0]
        raise ContinualRecipeError(entry.name, _field_path(first["loc"]), first["msg"]) from None
    _check_against_architecture(entry, recipe)
    return recipe
