"""Continual-learning strategies, built from the recipe's ``strategy`` block by :func:`make_strategy`.

==========  =================================================================================
naive       fine-tune on each experience in turn (:class:`Naive`)
si          naive + the Synaptic Intelligence penalty on every parameter
er          experience replay from a reservoir buffer (:class:`ExperienceReplay`), LiDER optional
derpp       DER++: replay with stored logits (:class:`DERPlusPlus`), LiDER optional
ar1         CWR* + latent replay + BatchReNorm (+ SI optional) (:class:`AR1`)
==========  =================================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from training.continual.lider import LiDER, lipschitz_layer_count
from training.continual.recipe import AR1Spec, DERPPSpec, NaiveSpec, SIStrategySpec, StrategySpec
from training.continual.si import SynapticIntelligence
from training.continual.strategies.ar1 import AR1
from training.continual.strategies.base import Settings, Strategy
from training.continual.strategies.derpp import DERPlusPlus
from training.continual.strategies.er import ExperienceReplay
from training.continual.strategies.naive import Naive

__all__ = ["AR1", "DERPlusPlus", "ExperienceReplay", "Naive", "Settings", "Strategy", "make_strategy"]


def make_strategy(
    spec: StrategySpec,
    model: nn.Module,
    loss: nn.Module,
    settings: Settings,
    new_optimizer: Callable[[], torch.optim.Optimizer],
) -> Strategy:
    """The strategy ``spec`` describes, training ``model`` (which AR1 modifies in place: build the
    optimizer with ``new_optimizer`` only, as the strategy does, after this call)."""
    base = (model, loss, settings, new_optimizer)
    if isinstance(spec, NaiveSpec):
        return Naive(*base)
    if isinstance(spec, SIStrategySpec):
        si = SynapticIntelligence(list(model.parameters()), **spec.model_dump(exclude={"name"}))
        return Naive(*base, si=si)
    if isinstance(spec, AR1Spec):
        return AR1(*base, spec)
    lider = None
    if spec.lider is not None:
        options = spec.lider
        layers = lipschitz_layer_count(model)
        lider = LiDER(layers, options.alpha, options.beta, options.learn_budget, options.power_iterations)
        lider = lider.to(settings.device)
    replay = {
        "buffer_size": spec.buffer_size,
        "replay_batch_size": spec.replay_batch_size or settings.batch_size,
        "lider": lider,
    }
    if isinstance(spec, DERPPSpec):
        return DERPlusPlus(*base, alpha=spec.alpha, beta=spec.beta, **replay)
    return ExperienceReplay(*base, **replay)
