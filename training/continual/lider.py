"""LiDER: Lipschitz-driven rehearsal (Bonicelli et al. 2022, arXiv 2210.06443).

A rehearsal method's backbone is regularised on buffer samples by a data-dependent estimate of the
Lipschitz constant of each layer (the method of arXiv 2108.12905): for consecutive feature maps
``a`` (C_a channels) and ``b`` of one sample,

1. ``b`` is average-pooled over channels down to ``C_a`` channels;
2. each spatial position's channel vector of both maps is normalised to unit L2 norm (float64);
3. the spatially larger map is adaptive-average-pooled to the size of the other;
4. the transmitting matrix ``TM = A B^T / (H W)`` (``A``, ``B``: the maps as (C_a, H W) matrices);
5. the estimate is the largest singular value of ``TM``, i.e. ``sqrt(top eigenvalue of TM TM^T)``,
   by power iteration from a uniform random start. Only the last iteration carries gradient.

The loss on a buffer batch is ``alpha * mean(estimates) + beta * mean |estimate_l - relu(budget_l)|``
(means over samples and layer pairs). The per-layer budget is initialised, before the first
experience, to the mean estimate over that experience's data (model in eval mode). Unlike the
reference implementation, where the budget is never optimised, here it is a real ``nn.Parameter``
trained with the network unless ``learn_budget=False`` freezes it at its initial value.

The zoo networks are 1-Lipschitz by construction, layer by layer; LiDER still has work to do: the
estimate measures how much of that worst-case gain a layer *uses* on the data, which it shrinks.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LiDER",
    "feature_maps",
    "layer_lipschitz_estimates",
    "lipschitz_layer_count",
    "top_singular_value",
    "transmitting_matrix",
]

_LAYERS = (nn.Conv2d, nn.Linear)


def lipschitz_layer_count(model: nn.Sequential) -> int:
    """Number of layer pairs LiDER estimates: the conv / linear layers below the output layer."""
    return sum(isinstance(layer, _LAYERS) for layer in model[:-1])


def feature_maps(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """``[x, f_1, ..., f_L]``: the input and the output of every conv / linear layer below the output
    layer (pre-activation), each as (N, C, H, W) (a dense output (N, C) becomes (N, C, 1, 1))."""
    features = [x]
    for layer in model[:-1]:
        x = layer(x)
        if isinstance(layer, _LAYERS):
            features.append(x if x.dim() == 4 else x.view(*x.shape, 1, 1))
    return features


def _averaging(size: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """(out, size) matrix of adaptive average pooling from ``size`` to ``out`` positions. Pooling as a
    product keeps the backward pass deterministic on CUDA (adaptive pooling's is not)."""
    one_hot = torch.eye(size, dtype=like.dtype, device=like.device).unsqueeze(0)
    return F.adaptive_avg_pool1d(one_hot, out)[0].T


def transmitting_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The transmitting matrix from feature map ``a`` (N, C_a, H_a, W_a) to the next one ``b``
    (N, C_b, H_b, W_b), per sample: (N, C_a, C_a), float64."""
    a, b = a.double(), b.double()
    b = torch.einsum("nchw,dc->ndhw", b, _averaging(b.shape[1], a.shape[1], b))
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    height, width = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])

    def pooled(x: torch.Tensor) -> torch.Tensor:
        rows, columns = _averaging(x.shape[2], height, x), _averaging(x.shape[3], width, x)
        return torch.einsum("nchw,ih,jw->ncij", x, rows, columns)

    return pooled(a).flatten(2) @ pooled(b).flatten(2).transpose(1, 2) / (height * width)


def top_singular_value(matrix: torch.Tensor, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Largest singular value of each (C, C) matrix of ``matrix`` (N, C, C) by ``iterations`` power
    iterations on ``K = M M^T`` from a uniform random start; the gradient flows through the last
    iteration only. Returns (N,)."""
    k = matrix @ matrix.transpose(1, 2)
    v = torch.rand(k.shape[0], k.shape[1], 1, generator=generator, dtype=k.dtype).to(k.device)
    v = F.normalize(v, dim=1)
    with torch.no_grad():
        for _ in range(iterations - 1):
            v = F.normalize(k @ v, dim=1)
    # ||K v|| for a unit v estimates the top eigenvalue of K, whose square root is the top singular
    # value of M: (sum (K v)^2)^(1/4), clamped away from 0 where the root has no derivative.
    return (k @ v).square().sum((1, 2)).clamp_min(torch.finfo(k.dtype).tiny) ** 0.25


def layer_lipschitz_estimates(
    features: list[torch.Tensor], iterations: int, generator: torch.Generator
) -> torch.Tensor:
    """(N, L) estimates for the L consecutive pairs of ``features`` (from :func:`feature_maps`)."""
    return torch.stack(
        [top_singular_value(transmitting_matrix(a, b), iterations, generator) for a, b in pairwise(features)],
        dim=1,
    )


class LiDER(nn.Module):
    """The LiDER regulariser of a backbone with ``layers`` layer pairs.

    Args:
        layers: number of layer pairs (:func:`lipschitz_layer_count` of the model).
        alpha: weight of the minimisation loss (``alpha_lip``).
        beta: weight of the budget loss (``beta_lip``).
        learn_budget: train the budget (a parameter) or keep it at its initial value.
        iterations: power iterations per estimate.
    """

    def __init__(
        self, layers: int, alpha: float, beta: float, learn_budget: bool = True, iterations: int = 10
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.iterations = iterations
        self.budget = nn.Parameter(torch.zeros(layers, dtype=torch.float64), requires_grad=learn_budget)

    def estimates(self, model: nn.Sequential, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, L) layer estimates of ``model`` on ``x``."""
        return layer_lipschitz_estimates(feature_maps(model, x), self.iterations, generator)

    @torch.no_grad()
    def initialize_budget(
        self, model: nn.Sequential, x: torch.Tensor, generator: torch.Generator, batch_size: int = 256
    ) -> None:
        """Budget of each layer = mean estimate over ``x`` with ``model`` in eval mode."""
        was_training = model.training
        model.eval()
        device = self.budget.device
        batches = [x[i : i + batch_size].to(device) for i in range(0, len(x), batch_size)]
        estimates = torch.cat([self.estimates(model, batch, generator) for batch in batches])
        self.budget.copy_(estimates.mean(0))
        model.train(was_training)

    def loss(self, model: nn.Sequential, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``alpha * mean(estimates) + beta * mean |estimates - relu(budget)|`` on the batch ``x``."""
        estimates = self.estimates(model, x, generator)
        budget_gap = (estimates - F.relu(self.budget)).abs().mean()
        return (self.alpha * estimates.mean() + self.beta * budget_gap).float()
