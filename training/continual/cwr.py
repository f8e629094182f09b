"""CWR* (Lomonaco, Maltoni & Pellegrini 2020): consolidated rows of the output layer.

The output layer ``W`` (K classes x F features, no bias) is trained one experience at a time, but
each class keeps a *consolidated* row ``saved_c`` (zeros until the class is first trained):

- before training, the rows of the classes being trained (current and replayed) are reset to
  their consolidated values and every other row to zero;
- after training, with ``globavg`` the mean of *all entries* of the trained rows (one scalar, as in
  the reference implementations), each trained class ``c`` gets ``w' = W_c - globavg`` and
  ``saved_c = w'`` with ``past_c = n_c`` if it was never trained, else, with
  ``wpast = sqrt(past_c / n_c)``, ``saved_c = (saved_c * wpast + w') / (wpast + 1)`` and
  ``past_c += n_c``. ``n_c`` counts the patterns of ``c`` in the experience (current and replayed);
- the consolidated rows are then written into ``W`` (zeros for classes never trained).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["CWRStar"]


class CWRStar:
    """The consolidated rows of ``head``.

    Args:
        head: the output layer (K, F); its bias, if any, should stay zero and frozen.
    """

    def __init__(self, head: nn.Linear) -> None:
        self.head = head
        self.saved = torch.zeros_like(head.weight.detach())
        self.past = torch.zeros(head.out_features, dtype=torch.float64)

    @torch.no_grad()
    def reset_head(self, classes: list[int]) -> None:
        """Rows of ``classes`` <- their consolidated values; every other row <- 0."""
        self.head.weight.zero_()
        self.head.weight[classes] = self.saved[classes]

    @torch.no_grad()
    def consolidate(self, counts: torch.Tensor) -> None:
        """Merge the trained rows into the consolidated ones.

        Args:
            counts: (K,) number of patterns of each class trained on in this experience; the classes
                with a non-zero count are the trained ones.
        """
        classes = counts.nonzero().flatten().tolist()
        trained = self.head.weight[classes]
        centred = trained - trained.mean()
        for c, row in zip(classes, centred, strict=True):
            n = float(counts[c])
            if self.past[c] > 0:
                wpast = math.sqrt(float(self.past[c]) / n)
                self.saved[c] = (self.saved[c] * wpast + row) / (wpast + 1)
                self.past[c] += n
            else:
                self.saved[c] = row
                self.past[c] = n

    @torch.no_grad()
    def write_head(self) -> None:
        """The consolidated rows into the output layer (what is evaluated and shipped)."""
        self.head.weight.copy_(self.saved)

    def state_dict(self) -> dict[str, Any]:
        return {"saved": self.saved, "past": self.past}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state["saved"].to(self.head.weight.device)
        self.past = state["past"].clone()
