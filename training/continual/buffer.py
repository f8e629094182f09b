"""A fixed-size rehearsal buffer filled by reservoir sampling.

Reservoir rule for a buffer of ``M`` slots: the ``k``-th example of the stream (0-based) goes to slot
``k`` while ``k < M``; after that draw ``r`` uniform in ``[0, k]`` and overwrite slot ``r`` if ``r < M``
(otherwise the example is not stored). After ``n >= M`` examples every one of them is in the buffer
with probability ``M / n``, whatever the order of the stream.

The buffer stores what it is given (strategies give *un-augmented* inputs and augment them when
they draw them), as named fields that share their first dimension: ``x``, ``y``, and for DER++
``logits``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ReservoirBuffer"]


class ReservoirBuffer:
    """Reservoir buffer of ``capacity`` examples.

    Args:
        capacity: number of slots ``M``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self.fields: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        """Number of filled slots: ``min(seen, capacity)``."""
        return min(self.seen, self.capacity)

    def _slots(self, count: int, generator: torch.Generator) -> list[int]:
        """Slot of each of the next ``count`` stream examples (-1 when it is not stored)."""
        k = torch.arange(self.seen, self.seen + count, dtype=torch.float64)
        r = (torch.rand(count, generator=generator, dtype=torch.float64) * (k + 1)).floor()
        slots = torch.where(k < self.capacity, k, torch.where(r < self.capacity, r, -1.0))
        self.seen += count
        return slots.long().tolist()

    def add(self, generator: torch.Generator, **examples: torch.Tensor) -> None:
        """Offer a batch to the buffer, in order.

        Args:
            generator: source of the reservoir draws.
            examples: named tensors of the same length N, e.g. ``x=(N, C, H, W), y=(N,)``; the names
                must be the same at every call.
        """
        if not self.fields:
            self.fields = {
                name: torch.zeros((self.capacity, *value.shape[1:]), dtype=value.dtype, device=value.device)
                for name, value in examples.items()
            }
        elif examples.keys() != self.fields.keys():
            raise ValueError(f"the buffer stores {sorted(self.fields)}, got {sorted(examples)}")
        count = len(next(iter(examples.values())))
        # One example at a time, in stream order: a later example overwrites an earlier one of the
        # same batch that drew the same slot, exactly as the sequential rule does.
        for i, slot in enumerate(self._slots(count, generator)):
            if slot >= 0:
                for name, value in examples.items():
                    self.fields[name][slot] = value[i].detach()

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``min(count, len(self))`` distinct stored examples drawn uniformly, as named tensors."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty buffer")
        index = torch.randperm(len(self), generator=generator)[:count]
        return {name: value[index.to(value.device)] for name, value in self.fields.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "fields": dict(self.fields)}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.seen = int(state["seen"])
        self.fields = {name: value.to(device) for name, value in state["fields"].items()}
