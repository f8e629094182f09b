"""Bi-Tuning (Zhong et al. 2020): two contrastive terms over per-class queues of momentum keys.

Each training example is seen twice: as a *query* through the network being trained and as a *key*
through a momentum copy of it (an exponential moving average, so keys change slowly and stay
comparable across batches). For every class the module keeps the last K keys in two queues:

* projector keys ``z``: the normalised output of a projection head (training only, not shipped);
* classifier keys ``h``: the normalised backbone features with a 1 appended (the bias input).

Projector term: the query's projection ``z_q`` must pick out its own key and the queued keys of its
class among all queued keys. Classifier term: the classifier prototype of the example's class, the
normalised head row ``[w_y, b_y]`` (detached, as in the reference), must pick out the example's own
feature ``h_q`` and the queued features of its class among all queued features. Each is a
cross-entropy at temperature T against the uniform distribution over the positives.

Both terms read one snapshot of the queues taken before the batch's keys are enqueued, so a
sample's own key is never among its queued positives (the reference enqueues inside its loop and
leaks batch keys into the classifier term). Queue slots not yet written are masked out rather than
filled with random vectors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.transfer.frozen import frozen_copy

__all__ = ["BiTuning", "MomentumEncoder"]


class MomentumEncoder(nn.Module):
    """A frozen copy of a module, moved towards it by ``update``:
    ``key <- momentum * key + (1 - momentum) * online`` for parameters, buffers copied.

    Shape: as the copied module; the forward pass runs without gradients.
    """

    def __init__(self, online: nn.Module, momentum: float) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.encoder = frozen_copy(online)
        self.momentum = momentum

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        for key, query in zip(self.encoder.parameters(), online.parameters(), strict=True):
            key.lerp_(query, 1 - self.momentum)
        for key, query in zip(self.encoder.buffers(), online.buffers(), strict=True):
            key.copy_(query)

    @torch.no_grad()
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(*inputs)


class BiTuning(nn.Module):
    """The Bi-Tuning contrastive terms (see the module docstring), summed.

    Each term is a mean over the batch of per-example cross-entropies, so the weight does not depend
    on the batch size.

    Args:
        backbone: the network being trained, up to the head (copied into the key encoder).
        feature_dim: D, the width of the backbone features.
        num_classes: C, the number of target classes.
        queue_size: K, keys kept per class and queue.
        momentum: of the key encoder.
        temperature: T of both contrastive terms.
        projection_dim: P, output width of the projection head.

    Shape: ``forward(features (B, D), key_inputs (B, *input), labels (B,), backbone, head)`` -> scalar.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        queue_size: int = 40,
        momentum: float = 0.999,
        temperature: float = 0.07,
        projection_dim: int = 128,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.queue_size = queue_size
        self.projector = nn.Linear(feature_dim, projection_dim)
        self.key_backbone = MomentumEncoder(backbone, momentum)
        self.key_projector = MomentumEncoder(self.projector, momentum)
        self.register_buffer("queue_h", torch.zeros(num_classes, queue_size, feature_dim + 1))
        self.register_buffer("queue_z", torch.zeros(num_classes, queue_size, projection_dim))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    @staticmethod
    def classifier_keys(features: torch.Tensor) -> torch.Tensor:
        """``normalize([f, 1])``: (B, D) -> (B, D + 1)."""
        return F.normalize(F.pad(features, (0, 1), value=1.0), dim=1)

    @torch.no_grad()
    def enqueue(self, h: torch.Tensor, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Write a batch of keys into their classes' queues (first in, first out), in one scatter.

        Within a class the batch's keys take the next slots in batch order; when a class has more
        than K keys in the batch only its last K are written, as K sequential writes would leave.

        Shape: h (B, D + 1), z (B, P), labels (B,).
        """
        one_hot = F.one_hot(labels, self.pointer.numel())  # (B, C)
        rank = (one_hot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)  # place within its class
        count = one_hot.sum(0)  # (C,)
        kept = rank >= count[labels] - self.queue_size
        slot = (self.pointer[labels] + rank) % self.queue_size
        self.queue_h[labels[kept], slot[kept]] = h[kept].to(self.queue_h.dtype)
        self.queue_z[labels[kept], slot[kept]] = z[kept].to(self.queue_z.dtype)
        self.pointer.copy_((self.pointer + count) % self.queue_size)
        self.filled.copy_((self.filled + count).clamp(max=self.queue_size))

    def _contrastive(
        self, own: torch.Tensor, queued: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of ``softmax([own, queued] / T)`` against the uniform distribution over the
        own key and the valid queued keys of the example's class.

        Shape: own (B,), queued (B, C, K), labels (B,), valid (C, K) bool -> scalar.
        """
        batch = own.shape[0]
        always = torch.ones(batch, 1, dtype=torch.bool, device=own.device)
        candidates = torch.cat([always, valid.flatten()[None].expand(batch, -1)], dim=1)  # (B, 1 + CK)
        same_class = F.one_hot(labels, valid.shape[0]).bool()[:, :, None] & valid[None]  # (B, C, K)
        positives = torch.cat([always, same_class.flatten(1)], dim=1).to(own.dtype)
        logits = torch.cat([own[:, None], queued.flatten(1)], dim=1) / self.temperature
        log_probabilities = F.log_softmax(logits.masked_fill(~candidates, float("-inf")), dim=1)
        target = positives / positives.sum(1, keepdim=True)
        return -(target * log_probabilities.masked_fill(~candidates, 0.0)).sum(1).mean()

    def contrastive_terms(
        self,
        z_query: torch.Tensor,
        z_key: torch.Tensor,
        h_query: torch.Tensor,
        prototypes: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The projector and classifier terms against the current queues (which are not changed).

        Shape: z_query, z_key (B, P) normalised; h_query (B, D + 1) normalised; prototypes (C, D + 1)
        normalised; labels (B,) -> two scalars.
        """
        queue_h, queue_z = self.queue_h.clone(), self.queue_z.clone()  # one snapshot for both terms
        valid = torch.arange(self.queue_size, device=labels.device)[None] < self.filled[:, None]  # (C, K)
        projector_term = self._contrastive(
            (z_query * z_key).sum(1), torch.einsum("bp,ckp->bck", z_query, queue_z), labels, valid
        )
        anchors = prototypes[labels]  # (B, D + 1): the prototype of each example's class
        classifier_term = self._contrastive(
            (h_query * anchors).sum(1), torch.einsum("bd,ckd->bck", anchors, queue_h), labels, valid
        )
        return projector_term, classifier_term

    def forward(
        self,
        features: torch.Tensor,
        key_inputs: torch.Tensor,
        labels: torch.Tensor,
        backbone: nn.Module,
        head: nn.Linear,
    ) -> torch.Tensor:
        self.key_backbone.update(backbone)
        self.key_projector.update(self.projector)
        key_features = self.key_backbone(key_inputs)
        z_key = F.normalize(self.key_projector(key_features), dim=1)
        h_key = self.classifier_keys(key_features)
        z_query = F.normalize(self.projector(features), dim=1)
        with torch.no_grad():
            prototypes = F.normalize(torch.cat([head.weight, head.bias[:, None]], dim=1), dim=1)
        terms = self.contrastive_terms(z_query, z_key, self.classifier_keys(features), prototypes, labels)
        self.enqueue(h_key, z_key, labels)
        return terms[0] + terms[1]
