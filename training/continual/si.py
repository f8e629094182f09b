"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017): a quadratic penalty that anchors the
parameters that mattered for earlier experiences.

During an experience, every optimizer step adds to the path integral
``omega += -g * (theta_new - theta_old)``, with ``g`` the gradient of the *task* loss (not of the
penalty). At the end of the experience
``importance += omega / ((theta_end - theta_start)^2 + damping)`` (optionally clamped to
``max_importance``, as the AR1 reference does) and the anchor ``theta* = theta_end``. The penalty is
``(strength / 2) * sum importance * (theta - theta*)^2``.

Every snapshot is a *clone*: ``p.detach()`` (and ``.cpu()`` of a CPU tensor) is a view of the live
parameter, so a snapshot taken that way would follow the training and give zero importance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["SynapticIntelligence"]


def _snapshot(parameters: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


class SynapticIntelligence:
    """The SI penalty over ``parameters``.

    Args:
        parameters: the parameters to protect (each keeps its own importance tensor of its shape).
        strength: lambda of the penalty.
        damping: xi, keeps the importance finite for parameters that did not move.
        max_importance: clamp of the accumulated importance (None: no clamp).
    """

    def __init__(
        self,
        parameters: Sequence[nn.Parameter],
        strength: float,
        damping: float = 1e-7,
        max_importance: float | None = None,
    ) -> None:
        self.parameters = list(parameters)
        self.strength = strength
        self.damping = damping
        self.max_importance = max_importance
        self.importance = [torch.zeros_like(p) for p in self.parameters]
        self.anchor = _snapshot(self.parameters)
        self.start = _snapshot(self.parameters)
        self.omega = [torch.zeros_like(p) for p in self.parameters]

    def begin_experience(self) -> None:
        """Start a new path integral from the current parameters."""
        self.start = _snapshot(self.parameters)
        self.omega = [torch.zeros_like(p) for p in self.parameters]

    def penalty(self) -> torch.Tensor:
        """``(strength / 2) * sum importance * (theta - theta*)^2`` (a scalar)."""
        pairs = zip(self.importance, self.parameters, self.anchor, strict=True)
        terms = [(w * (p - a).square()).sum() for w, p, a in pairs]
        return 0.5 * self.strength * torch.stack(terms).sum()

    def optimize(self, task_loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer step on ``task_loss + penalty``, accumulating the path integral with the
        gradient of ``task_loss`` alone."""
        optimizer.zero_grad(set_to_none=True)
        task_loss.backward()
        gradients = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in self.parameters]
        penalty = self.penalty()
        if penalty.requires_grad:  # False once every protected parameter is frozen
            penalty.backward()
        before = _snapshot(self.parameters)
        optimizer.step()
        with torch.no_grad():
            for omega, g, p, old in zip(self.omega, gradients, self.parameters, before, strict=True):
                omega.sub_(g * (p - old))

    @torch.no_grad()
    def end_experience(self) -> None:
        """Turn the path integral into importance and move the anchor to the current parameters."""
        for importance, omega, p, start in zip(
            self.importance, self.omega, self.parameters, self.start, strict=True
        ):
            importance.add_(omega / ((p - start).square() + self.damping))
            if self.max_importance is not None:
                importance.clamp_(max=self.max_importance)
        self.anchor = _snapshot(self.parameters)

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance = [t.to(p.device) for t, p in zip(state["importance"], self.parameters, strict=True)]
        self.anchor = [t.to(p.device) for t, p in zip(state["anchor"], self.parameters, strict=True)]
