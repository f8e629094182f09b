"""Read intermediate feature maps with forward hooks, without changing the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["IntermediateLayerGetter"]


class IntermediateLayerGetter:
    """Run ``model`` and also return the outputs of its submodules ``names``.

    The hooks live only for the duration of one call, so the model is left exactly as it was (and
    the same getter works on the parametrized network and on its folded copy, whose submodules
    have the same names).

    Args:
        model: any module.
        names: dotted submodule names, as in ``model.named_modules()`` (e.g. ``"0"``, ``"4"``).

    Shape: ``getter(*inputs)`` -> (``{name: output}``, the model's output).
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        unknown = [name for name in names if name not in modules]
        if unknown:
            raise ValueError(
                f"no submodule named {', '.join(unknown)} (known: {', '.join(list(modules)[1:])})"
            )
        self.model = model
        self.layers = {name: modules[name] for name in names}

    def __call__(self, *inputs: Any) -> tuple[dict[str, torch.Tensor], Any]:
        outputs: dict[str, torch.Tensor] = {}

        def recorder(name: str):
            def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
                outputs[name] = output

            return record

        handles = [layer.register_forward_hook(recorder(name)) for name, layer in self.layers.items()]
        try:
            result = self.model(*inputs)
        finally:
            for handle in handles:
                handle.remove()
        return outputs, result
