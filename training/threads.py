"""The number of torch threads a run computes with: recorded, and applied again to reproduce it.

Float sums depend on how many threads share them, so a run gives the same weights bit for bit only
with the same thread count (one-process runs of a small lipconv with 1 and 2 threads differ by 1e-4
after 28 steps, and the gap grows over a run). torch offers no thread-count-independent CPU
kernels, so the count is recorded (``metrics.json``'s ``torch_threads``, and the training state) and
applied: ``--threads N`` if given, else the count of the run being resumed, else the count the
entry's shipped model was trained with (models.yaml ``metrics.torch_threads``), else torch's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from zoo.registry import ModelEntry

__all__ = ["chosen_thread_count", "torch_threads"]


def chosen_thread_count(
    requested: int | None, state: dict[str, Any] | None, entry: ModelEntry
) -> tuple[int | None, str]:
    """(the count to apply or None for torch's default, where it comes from): ``requested`` (the
    option), else the resumed ``state``'s, else ``entry``'s recorded one."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested, "--threads"
    if state is not None and "torch_threads" in state:
        return int(state["torch_threads"]), "the run being resumed"
    recorded = (entry.metrics or {}).get("torch_threads")
    if recorded is not None:
        return int(recorded), f"the shipped {entry.name}"
    return None, "torch's default"


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Compute with ``count`` intra-op threads inside the block (None: leave the count as it is)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
