"""Sizes a file of unknown origin may declare before anything is allocated for it.

A 1.5 KB file can declare a 1x1x100000x100000 input, a layer 10000 wide or a tensor that inflates to
gigabytes: its own size says nothing about what reading it would cost. Every reader of untrusted files
(``zoo.load``, the verifiers of ``zoo verify``, ``zoo serve``) compares what the file declares with a
limit first, and with the file's own size wherever the data must be in the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_TIMEOUT",
    "SizeLimitError",
    "check_elements",
]

DEFAULT_MAX_ELEMENTS = 2**26
"""Most elements a shape declared without its data may have (one input example, an intermediate
tensor, a tensor a reader would create): 67,108,864, i.e. 256 MiB of float32, where a 3x224x224
image has 150,528. Data stored in the file (weights) is checked against the file's size instead."""

DEFAULT_TIMEOUT = 300.0
"""Seconds the verification of one file may take (``zoo verify --timeout``): the largest models
verified here take under a minute (VGG-11 at 3x224x224, 38 s on a busy 2-core machine)."""

DEFAULT_MAX_MEMORY = 8 * 2**30
"""Bytes of data the process verifying one file may allocate (``zoo verify --max-memory``): importing
torch takes about 1 GiB of it, verifying the zoo's models a few hundred MiB more."""


class SizeLimitError(ValueError):
    """A file declares a tensor larger than the limit it is read under."""


def check_elements(shape: Sequence[int], what: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """The number of elements of ``shape``; :class:`SizeLimitError` naming ``what`` when it is above
    ``max_elements``."""
    count = math.prod(shape)
    if count > max_elements:
        raise SizeLimitError(
            f"{what} has shape {tuple(shape)}: {count:,} elements, above the limit of {max_elements:,} "
            "(raise it with --max-elements if the file is meant to be this large)"
        )
    return count
