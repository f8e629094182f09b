"""AR1 (Maltoni & Lomonaco 2019; with latent replay, Pellegrini et al. 2020): CWR* on the output
layer, latent replay at a chosen layer, batch renormalisation, and optionally Synaptic Intelligence.

The network is split at ``latent_layer`` (an index of the architecture's ``nn.Sequential``):
``lower = model[:latent_layer + 1]`` and ``upper = model[latent_layer + 1:]`` (ending with the output
layer). The whole network trains on the first experience; after it the lower part is frozen (its
parameters and, in eval mode, its BatchReNorm statistics), so the latent activations stored in the
:class:`~training.continual.latent_replay.LatentReplayMemory` stay exactly what the lower part
computes. In later experiences every minibatch is the current patterns' latent activations followed
by replayed ones, through the upper part, with the learning rate ``inc_lr``.

The output layer becomes an ``nn.Linear`` whose rows CWR* manages (its bias stays zero and is not
trained). By default its weight goes through ``ProjectedRows`` (centred active rows, spectral norm
at most 1, while training and after every consolidation) and the normalisation after each
convolution is ``BatchReCentering2d`` (scale at most 1), so every layer of the final network is
1-Lipschitz by construction and the certificate, computed from the folded weights, is at most 1.
AR1's original design (``BatchReNorm2d``, plain head: ``normalization: {name: batch_renorm}``,
``lipschitz_head: false``) stays available for comparison; its certified bound is well above 1.

Two defects of avalanche 0.6.0's AR1 are fixed here: each replayed activation is stored with its
own label (the reference collects activations in shuffled loader order but looks labels up by
dataset index), and activations are taken after the experience's last epoch, from the frozen lower
part (the reference stores those of the first epoch, computed by weights that then kept training).
On split digits the reference reaches 38.3 % class-IL accuracy as shipped, and matches this
implementation only with both fixes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from training.continual.cwr import CWRStar, project_rows
from training.continual.latent_replay import LatentReplayMemory, current_batch_size
from training.continual.recipe import AR1Spec, BatchRenormSpec, NormalizationSpec
from training.continual.renorm import RenormSchedule, add_batch_renorm
from training.continual.scenario import Experience
from training.continual.si import SynapticIntelligence
from training.continual.strategies.base import Settings, Strategy
from training.losses import make_loss
from zoo.layers import BatchReCentering2d, BatchReNorm2d

__all__ = ["AR1"]


def _cwr_head(model: nn.Sequential) -> nn.Linear:
    """Replace the output layer of ``model`` by a plain zero ``nn.Linear`` (same shapes and keys as
    the architecture's) whose bias, if it has one, stays zero: it is not trained."""
    old = model[-1]
    head = nn.Linear(old.in_features, old.out_features, bias=old.bias is not None).to(old.weight.device)
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
            head.bias.requires_grad_(False)
    model[-1] = head
    return head


def _normalize(model: nn.Module, spec: NormalizationSpec) -> RenormSchedule:
    """A normalisation after every convolution of ``model``, and the schedule of its limits."""
    if isinstance(spec, BatchRenormSpec):
        norms = add_batch_renorm(model, lambda channels: BatchReNorm2d(channels, momentum=spec.momentum))
        return RenormSchedule(norms, spec.inc_step, spec.max_r_max, spec.max_d_max)
    norms = add_batch_renorm(model, lambda channels: BatchReCentering2d(channels, momentum=spec.momentum))
    return RenormSchedule(norms, spec.inc_step, 1.0, spec.max_d_max)


class AR1(Strategy):
    """AR1 on ``model``, which it modifies in place: a normalisation after every convolution (if
    ``spec.normalization``) and a CWR* output layer (projected if ``spec.lipschitz_head``).

    Args:
        model: an ``nn.Sequential`` ending with an ``nn.Linear``.
        loss, settings, new_optimizer: as for :class:`~training.continual.strategies.base.Strategy`.
        spec: the AR1 options of the recipe.
    """

    def __init__(
        self,
        model: nn.Sequential,
        loss: nn.Module,
        settings: Settings,
        new_optimizer: Callable[[], torch.optim.Optimizer],
        spec: AR1Spec,
    ) -> None:
        self.renorm = None if spec.normalization is None else _normalize(model, spec.normalization)
        head = _cwr_head(model)
        if spec.lipschitz_head:
            project_rows(head)
        si = None
        if spec.synaptic_intelligence is not None:
            below_head = list(model[:-1].parameters())
            si = SynapticIntelligence(below_head, **spec.synaptic_intelligence.model_dump())
        super().__init__(model, loss, settings, new_optimizer, si)
        self.lower = model[: spec.latent_layer + 1]
        self.upper = model[spec.latent_layer + 1 :]
        self.cwr = CWRStar(head)
        self.memory = LatentReplayMemory(spec.replay_size)
        self.inc_lr = spec.inc_lr
        self.frozen = False
        self.counts = torch.zeros(head.out_features, dtype=torch.long)
        self.replay_per_step = 0
        self.replay_loss = loss if spec.replay_loss is None else make_loss(**spec.replay_loss.model_dump())

    def before_experience(self, experience: Experience, generator: torch.Generator) -> None:
        labels = experience.y_train
        if len(self.memory) > 0:
            labels = torch.cat([labels, self.memory.y.cpu()])
        self.counts = torch.bincount(labels, minlength=len(self.counts))
        self.cwr.reset_head(self.counts.nonzero().flatten().tolist())
        self.replay_per_step = self.settings.batch_size - self.current_batch_size(experience)

    def make_optimizer(self, experience: Experience) -> torch.optim.Optimizer:
        optimizer = super().make_optimizer(experience)
        if experience.index > 0:
            for group in optimizer.param_groups:
                group["lr"] = self.inc_lr
        return optimizer

    def current_batch_size(self, experience: Experience) -> int:
        if len(self.memory) == 0:
            return self.settings.batch_size
        return current_batch_size(len(experience.y_train), self.memory.capacity, self.settings.batch_size)

    def train_mode(self) -> None:
        self.model.train()
        if self.frozen:
            self.lower.eval()

    def batch_loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        replay = self.replay_per_step if len(self.memory) > 0 else 0
        if self.renorm is not None:
            self.renorm.step(len(y) + replay)
        with torch.set_grad_enabled(not self.frozen):
            latent = self.lower(x)
        labels = y
        if replay:
            replay_x, replay_y = self.memory.draw(replay, generator)
            latent, labels = torch.cat([latent, replay_x]), torch.cat([y, replay_y])
        logits = self.upper(latent)
        loss = self.replay_loss if self.frozen else self.loss
        return loss(logits, labels), logits[: len(y)]

    def _freeze_lower(self) -> None:
        for parameter in self.lower.parameters():
            parameter.requires_grad_(False)
        self.lower.eval()
        self.frozen = True

    def after_experience(self, experience: Experience, generator: torch.Generator) -> None:
        self.cwr.consolidate(self.counts)
        self.cwr.write_head()
        self._freeze_lower()
        # Activation and label of a pattern are taken together, from the same index.
        count = self.memory.quota(experience.index, len(experience.y_train))
        index = torch.randperm(len(experience.y_train), generator=generator)[:count]
        device = self.settings.device
        with torch.no_grad():
            latent = self.lower(experience.x_train[index].to(device))
        self.memory.insert(latent, experience.y_train[index].to(device), generator)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state |= {"cwr": self.cwr.state_dict(), "memory": self.memory.state_dict(), "frozen": self.frozen}
        if self.renorm is not None:
            state["renorm_samples"] = self.renorm.samples
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cwr.load_state_dict(state["cwr"])
        self.memory.load_state_dict(state["memory"], self.settings.device)
        if state["frozen"]:
            self._freeze_lower()
        if self.renorm is not None:
            self.renorm.samples = int(state["renorm_samples"])
