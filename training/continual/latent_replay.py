"""AR1's latent replay memory: activations of past patterns at the latent layer, with their labels.

After experience ``i`` (0-based) the memory takes ``h = min(capacity // (i + 1), N_i)`` random
patterns of that experience (``N_i`` patterns): the first time they are the whole memory; later they
fill the free slots and overwrite random old slots for the rest (the reference overwrites ``h``
random slots of a memory it assumes full, which is the same thing once the memory is full).

Each activation is stored together with its own label (a reference implementation labels them by
dataset index while it collected them in shuffled order, so about half its replay labels are wrong).

Minibatches after the first experience mix ``current`` current patterns with ``batch - current``
replayed ones, ``current = N // ((N + capacity) // batch)``: the proportion of the current experience
in the union of it and a full memory.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LatentReplayMemory", "current_batch_size"]


def current_batch_size(patterns: int, capacity: int, batch_size: int) -> int:
    """Current patterns per minibatch of ``batch_size`` when replaying from a memory of ``capacity``
    (at least 1)."""
    return max(1, patterns // max(1, (patterns + capacity) // batch_size))


class LatentReplayMemory:
    """Up to ``capacity`` (activation, label) pairs.

    Args:
        capacity: the replay memory size (``rm_sz``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self._order = torch.zeros(0, dtype=torch.long)
        self._next = 0

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    def quota(self, experience_index: int, patterns: int) -> int:
        """``h``: how many patterns of experience ``experience_index`` (of ``patterns``) to store."""
        return min(self.capacity // (experience_index + 1), patterns)

    def insert(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """Store activations ``x`` (h, ...) with labels ``y`` (h,): free slots first, then random
        old slots."""
        if self.x is None or self.y is None:
            self.x, self.y = x.detach().clone(), y.clone()
        else:
            free = min(self.capacity - len(self), len(y))
            self.x = torch.cat([self.x, x[:free].detach()])
            self.y = torch.cat([self.y, y[:free]])
            rest = len(y) - free
            old = torch.randperm(len(self) - free, generator=generator)[:rest].to(self.y.device)
            self.x[old] = x[free:].detach()
            self.y[old] = y[free:]
        self._order, self._next = torch.zeros(0, dtype=torch.long), 0

    def draw(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` stored pairs, taking the memory in a random order and starting a new random
        order when it is used up (so every pattern is replayed equally often)."""
        if self.x is None or self.y is None:
            raise ValueError("the latent replay memory is empty")
        parts = [torch.zeros(0, dtype=torch.long)]
        while count > 0:
            if self._next == len(self._order):
                self._order, self._next = torch.randperm(len(self), generator=generator), 0
            part = self._order[self._next : self._next + count]
            self._next += len(part)
            count -= len(part)
            parts.append(part)
        index = torch.cat(parts).to(self.y.device)
        return self.x[index], self.y[index]

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.x = None if state["x"] is None else state["x"].to(device)
        self.y = None if state["y"] is None else state["y"].to(device)
        self._order, self._next = torch.zeros(0, dtype=torch.long), 0
