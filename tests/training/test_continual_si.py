"""Synaptic Intelligence: the path integral by hand, and non-zero importance on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.continual.si import SynapticIntelligence


def _sgd_steps(si: SynapticIntelligence, theta: nn.Parameter, target: float, steps: int, lr: float) -> None:
    optimizer = torch.optim.SGD([theta], lr=lr)
    for _ in range(steps):
        si.optimize(0.5 * (theta - target).square().sum(), optimizer)


def test_importance_matches_a_hand_computation():
    """loss = (theta - 3)^2 / 2 from theta = 0, SGD lr 0.1: g0 = -3, theta1 = 0.3; g1 = -2.7,
    theta2 = 0.57. omega = sum -g * dtheta = 0.1 * (9 + 7.29) = 1.629;
    importance = 1.629 / (0.57^2 + 1e-7)."""
    theta = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    si = SynapticIntelligence([theta], strength=1.0, damping=1e-7)
    si.begin_experience()
    _sgd_steps(si, theta, 3.0, steps=2, lr=0.1)
    si.end_experience()
    assert float(theta.detach()) == pytest.approx(0.57)
    assert float(si.importance[0]) == pytest.approx(1.629 / (0.57**2 + 1e-7))
    assert float(si.anchor[0]) == pytest.approx(0.57)


def test_the_path_integral_uses_the_task_gradient_only():
    """Second experience (strength 2, importance w, anchor a), two SGD steps towards -1: the steps
    follow task + penalty gradients, but omega accumulates -g_task * dtheta only."""
    theta = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    si = SynapticIntelligence([theta], strength=2.0)
    si.begin_experience()
    _sgd_steps(si, theta, 3.0, steps=2, lr=0.1)
    si.end_experience()
    w, a = float(si.importance[0]), float(si.anchor[0])
    si.begin_experience()
    _sgd_steps(si, theta, -1.0, steps=2, lr=0.1)
    omega, value = 0.0, a
    for _ in range(2):
        g_task, g_penalty = value + 1.0, 2.0 * w * (value - a)
        step = -0.1 * (g_task + g_penalty)
        omega, value = omega - g_task * step, value + step
    assert float(theta.detach()) == pytest.approx(value)
    assert float(si.omega[0]) == pytest.approx(omega)
    assert float(si.penalty().detach()) == pytest.approx(0.5 * 2.0 * w * (value - a) ** 2)


def test_importance_is_not_zero_on_the_cpu():
    """The snapshots are clones: with views of the live parameters (``.detach().cpu()`` on the CPU)
    theta_end - theta_start and the path integral would both vanish."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    si = SynapticIntelligence(list(model.parameters()), strength=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    si.begin_experience()
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        si.optimize(nn.functional.cross_entropy(model(x), y), optimizer)
    si.end_experience()
    for snapshot, before, anchor, parameter in zip(
        si.start, start, si.anchor, model.parameters(), strict=True
    ):
        assert torch.equal(snapshot, before) and not torch.equal(snapshot, parameter)  # a copy, not a view
        assert torch.equal(anchor, parameter) and anchor.data_ptr() != parameter.data_ptr()
    assert all(float(w.abs().sum()) > 0 for w in si.importance)
