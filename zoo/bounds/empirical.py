"""Empirical Lipschitz constant: a *lower* bound found by attack, never a certificate.

It tells how tight a certificate is: ``empirical <= true Lipschitz constant <= certified bound``.
Gradient ascent and power iteration only ever find values that the model really attains, so they
approach the true constant from below and can miss it by any amount.
"""

from __future__ import annotations

import copy

import torch

_POWER_ITERATIONS = 20
_START_DISTANCE = 1e-2
"""Initial distance of each pair, relative to the root-mean-square value of the inputs."""


def empirical_lipschitz(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    *,
    steps: int = 100,
    lr: float = 0.01,
    seed: int = 0,
) -> float:
    """Lower bound of the model's L2 Lipschitz constant (never a certificate).

    The maximum of two searches, both run on a float64 copy of the model in eval mode (the model
    itself is left untouched, and float64 keeps the ratios of nearby points accurate):

    (a) gradient ascent (Adam, ``steps`` steps, learning rate ``lr`` in input units) of
        ``||f(x) - f(y)|| / ||x - y||`` over pairs started at ``x = inputs`` and
        ``y = x + small noise``; every ratio seen counts;
    (b) the largest Jacobian spectral norm at the starting inputs and at the final pairs, by power
        iteration on ``J^T J`` (reverse-mode autodiff and double backward).

    Args:
        model: maps a batch ``(batch, *shape)`` to ``(batch, *out_shape)``, sample by sample.
        inputs: ``(batch, *shape)`` starting points.
        seed: seeds the noise and the power-iteration start vectors.

    Returns:
        The largest ratio / Jacobian norm found, as a Python float.
    """
    if inputs.dim() < 1 or len(inputs) == 0:
        raise ValueError(f"inputs must be a non-empty batch, got shape {tuple(inputs.shape)}")
    probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    for parameter in probe.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    start = inputs.detach().to(device="cpu", dtype=torch.float64)
    if not probe(start.clone().requires_grad_(True)).requires_grad:
        return 0.0  # the output does not depend on the input: a constant map
    best_ratio, x, y = _ascend_ratio(probe, start, steps=steps, lr=lr, generator=generator)
    points = torch.cat([start, x, y])
    best_jacobian = _max_jacobian_norm(probe, points, generator=generator)
    return max(best_ratio, best_jacobian)


def _ascend_ratio(
    model: torch.nn.Module,
    start: torch.Tensor,
    *,
    steps: int,
    lr: float,
    generator: torch.Generator,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Gradient ascent of the per-pair ratio; returns (best ratio seen, final x, final y)."""
    scale = start.pow(2).mean().sqrt().clamp_min(1e-3)
    noise = torch.randn(start.shape, generator=generator, dtype=torch.float64)
    x = start.clone().requires_grad_(True)
    y = (start + _START_DISTANCE * scale * noise).requires_grad_(True)
    optimizer = torch.optim.Adam([x, y], lr=lr)
    best = 0.0
    for step in range(steps + 1):
        distance = (x - y).flatten(1).norm(dim=1)
        gap = (model(x) - model(y)).flatten(1).norm(dim=1)
        ratio = torch.where(distance > 0, gap / distance.clamp_min(1e-300), torch.zeros_like(gap))
        best = max(best, float(ratio.detach().max()))
        if step == steps:
            break
        optimizer.zero_grad()
        (-ratio.sum()).backward()
        optimizer.step()
    return best, x.detach(), y.detach()


def _max_jacobian_norm(model: torch.nn.Module, points: torch.Tensor, *, generator: torch.Generator) -> float:
    """Largest ``||J(x)||_2`` over the points, by batched power iteration (lower estimates).

    Reverse mode gives ``J^T u``; since it is linear in ``u``, differentiating it with respect to
    ``u`` gives ``J v`` (double backward). Samples are independent (eval mode), so one batched pass
    serves every point.
    """
    points = points.clone().requires_grad_(True)
    outputs = model(points)
    probe = torch.zeros_like(outputs, requires_grad=True)
    (pullback,) = _grad(outputs, points, probe, create_graph=True)  # J^T probe
    vector = torch.randn(points.shape, generator=generator, dtype=torch.float64)
    best = 0.0
    for _ in range(_POWER_ITERATIONS):
        norms = vector.flatten(1).norm(dim=1).clamp_min(1e-300)
        vector = vector / norms.view(-1, *[1] * (points.dim() - 1))
        (image,) = _grad(pullback, probe, vector)  # J v
        best = max(best, float(image.flatten(1).norm(dim=1).max()))
        (vector,) = _grad(outputs, points, image)  # J^T J v
    return best


def _grad(
    outputs: torch.Tensor,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    *,
    create_graph: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Vector-Jacobian product ``weights^T d outputs / d inputs``, keeping the graph."""
    return torch.autograd.grad(
        outputs,
        inputs,
        grad_outputs=weights,
        retain_graph=True,
        create_graph=create_graph,
    )
