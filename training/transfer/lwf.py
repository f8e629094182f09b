"""Learning without Forgetting (Li & Hoiem 2016): keep answering the source task.

The source model's logits on every training example are recorded once, before fine-tuning. During
fine-tuning the frozen source head reads the *current* backbone features, and the distillation
term keeps its softened answers close to the recorded ones.

1-Lipschitz logits are small (a margin of 1 needs inputs 1 / sqrt(2) apart), so a softmax of the
raw logits is nearly uniform and carries no knowledge to distill. Both sides are first multiplied by
``scale``, the factor the source was trained with (the tau of its tau-cross-entropy), which gives back
the probabilities the source model was trained to output; then the usual temperature applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.transfer.frozen import frozen_copy

__all__ = ["LwF"]


class LwF(nn.Module):
    """``mean_b KL(softmax(scale * r_b / T) || softmax(scale * h(f_b) / T))``.

    ``r_b`` are the recorded source logits of example b, ``h`` the frozen source head and ``f_b`` the
    current backbone features. The KL divergence is summed over the source classes and averaged
    over the batch ("batchmean"), so the weight does not depend on the batch size. As in the
    reference, it is not multiplied by ``T^2``.

    Args:
        source_head: the source model's last layer (a copy is kept, frozen).
        recorded_logits: (N, S) source logits of the N training examples (a buffer).
        scale: the source's logit scale (see the module docstring).
        temperature: T.

    Shape: ``forward(features (B, D), index (B,))`` -> scalar, where ``index`` are the examples'
    positions in the training set.
    """

    def __init__(
        self, source_head: nn.Module, recorded_logits: torch.Tensor, scale: float, temperature: float = 3.0
    ) -> None:
        super().__init__()
        if scale <= 0 or temperature <= 0:
            raise ValueError(f"scale and temperature must be positive, got {scale} and {temperature}")
        self.source_head = frozen_copy(source_head)
        self.register_buffer("recorded_logits", recorded_logits.detach().clone())
        self.scale = scale
        self.temperature = temperature

    def forward(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        factor = self.scale / self.temperature
        teacher = F.softmax(factor * self.recorded_logits[index], dim=1)
        student = F.log_softmax(factor * self.source_head(features), dim=1)
        return F.kl_div(student, teacher, reduction="batchmean")
