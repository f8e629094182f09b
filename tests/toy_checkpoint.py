"""A small plain lipconv with random weights (nothing trained), certified and saved as a checkpoint:
the model of the prediction and server tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoo.certificate import Certificate
from zoo.certify import certify
from zoo.checkpoint import write_checkpoint
from zoo.models import build

INPUT_SHAPE = (1, 8, 8)
ARCHITECTURE = {
    "name": "lipconv",
    "input_shape": list(INPUT_SHAPE),
    "num_classes": 10,
    "options": {"widths": [8, 16], "dense": [16]},
}


def write_toy_checkpoint(path: Path, preprocessing: dict[str, Any]) -> tuple[torch.nn.Module, Certificate]:
    """Build the toy with seed 0, certify it for ``preprocessing``, write it at ``path``."""
    torch.manual_seed(0)
    model = build(
        ARCHITECTURE["name"],
        input_shape=INPUT_SHAPE,
        num_classes=ARCHITECTURE["num_classes"],
        parametrized=False,
        **ARCHITECTURE["options"],
    ).eval()
    certificate = certify(model, INPUT_SHAPE, preprocessing)
    write_checkpoint(path, model.state_dict(), ARCHITECTURE, certificate)
    return model, certificate
