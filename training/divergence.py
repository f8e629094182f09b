"""Stop a run whose loss diverged, with an error that says so, instead of finishing a useless model.

A loss has diverged when it is not finite, or when its magnitude exceeds ``EXPLOSION_FACTOR`` times
that of the first loss this process saw (at least 1). The losses of this project cannot legitimately
grow that much: tau-cross-entropy starts near log(K), the hinge part of HKR near alpha x margin, and
the Kantorovich-Rubinstein part is bounded by the diameter of the input space for a 1-Lipschitz
network (8 for 8x8 images in [0, 1], 55 for 3x32x32). Only unconstrained parameters (biases) driven
by a far too large learning rate get there: lr 1e30 makes the digits loss 1e32 after one step.
"""

from __future__ import annotations

import math

__all__ = ["EXPLOSION_FACTOR", "DivergenceGuard", "TrainingDivergedError"]

EXPLOSION_FACTOR = 1e3


class TrainingDivergedError(RuntimeError):
    """The training loss became non-finite or exploded."""


class DivergenceGuard:
    """Checks the running loss of a run after every optimizer step.

    Args:
        name: the model's name, for the message.
        lr: the recipe's learning rate, for the message.
    """

    def __init__(self, name: str, lr: float) -> None:
        self.name, self.lr = name, lr
        self.first: float | None = None

    def check(self, loss: float, where: str) -> None:
        """Raise :class:`TrainingDivergedError` if ``loss`` (the running loss at ``where``, e.g.
        'epoch 3') diverged; the first loss checked is the reference."""
        if self.first is None and math.isfinite(loss):
            self.first = loss
        limit = EXPLOSION_FACTOR * max(abs(self.first or 0.0), 1.0)
        if math.isfinite(loss) and abs(loss) <= limit:
            return
        start = f"started at {self.first:.4g}" if self.first is not None else "was never finite"
        raise TrainingDivergedError(
            f"{self.name}: training diverged in {where}: loss {loss:.4g} (it {start}; the limit is "
            f"{EXPLOSION_FACTOR:g} times that); lower the learning rate (the recipe's is {self.lr:g})"
        )
