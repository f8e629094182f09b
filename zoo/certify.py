"""Compute a network's certificate from its (folded) weights by propagating per-layer bounds.

The bound of a composition is the product of the bounds of its parts; each leaf module has a *rule*
that computes its own sound bound from its weights and its input size with ``zoo.bounds``. A module
with no rule is an error, never skipped; a parametrized module must be folded first, so that the
certificate speaks for the weights that ship.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

import zoo
from zoo.bounds import RELATIVE_MARGIN, conv_bound, matrix_norm_bound
from zoo.certificate import Certificate, LayerBound, weights_sha256
from zoo.fold import is_folded
from zoo.layers import GroupSort2, MaxMin, ScaledAvgPool2d

__all__ = ["LEAF_RULES", "UnsupportedModuleError", "certify", "network_bound"]

METHOD = (
    "sequential composition (product) of per-layer sound upper bounds computed in float64 from the "
    "folded weights: exact SVD of the dense operator for small layers, per-frequency FFT bounds "
    "(circular embedding of zero padding) for large convolutions"
)


class UnsupportedModuleError(TypeError):
    """A module of the network has no Lipschitz rule, so no sound bound can be given."""


def _linear_bound(module: nn.Linear, input_shape: tuple[int, ...]) -> float:
    return matrix_norm_bound(module.weight)


def _conv_bound(module: nn.Conv1d | nn.Conv2d, input_shape: tuple[int, ...]) -> float:
    return conv_bound(
        module.weight,
        input_size=input_shape[1:],
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        padding_mode=module.padding_mode,
    )


def _avg_pool_bound(module: nn.AvgPool2d, input_shape: tuple[int, ...]) -> float:
    """An average pool is a depthwise convolution with a constant kernel 1 / (kh * kw): bound the
    single-channel convolution (every channel is the same block) and apply the layer's scale."""
    if module.ceil_mode or not module.count_include_pad or module.divisor_override is not None:
        raise UnsupportedModuleError(
            "AvgPool2d is certified only with ceil_mode=False, count_include_pad=True and no "
            "divisor_override"
        )
    kh, kw = nn.modules.utils._pair(module.kernel_size)
    kernel = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=torch.float64)
    bound = conv_bound(
        kernel,
        input_size=input_shape[1:],
        stride=module.stride,
        padding=module.padding,
    )
    return bound * getattr(module, "scale", 1.0)


def _one(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Parameter-free ops that are 1-Lipschitz in L2 by their definition (permutations within
    groups, elementwise 1-Lipschitz maps, reshapes)."""
    return 1.0


LEAF_RULES: dict[type[nn.Module], Callable[[nn.Module, tuple[int, ...]], float]] = {
    nn.Linear: _linear_bound,
    nn.Conv1d: _conv_bound,
    nn.Conv2d: _conv_bound,
    nn.AvgPool2d: _avg_pool_bound,
    ScaledAvgPool2d: _avg_pool_bound,
    GroupSort2: _one,
    MaxMin: _one,
    nn.ReLU: _one,
    nn.Flatten: _one,
    nn.Identity: _one,
}


@contextmanager
def _recorded_input_shapes(model: nn.Module) -> Iterator[dict[nn.Module, tuple[int, ...]]]:
    """Record the per-example input shape of every module during one forward pass."""
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        shapes[module] = tuple(args[0].shape[1:])

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        yield shapes
    finally:
        for handle in handles:
            handle.remove()


def _rule(module: nn.Module) -> Callable[[nn.Module, tuple[int, ...]], float] | None:
    for cls in type(module).__mro__:
        if cls in LEAF_RULES:
            return LEAF_RULES[cls]
    return None


def network_bound(
    model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[float, tuple[LayerBound, ...]]:
    """Sound upper bound of the L2 Lipschitz constant of a folded ``model`` on inputs of ``input_shape``.

    Args:
        model: a folded network (no parametrizations), built of ``nn.Sequential`` and modules that
            have a rule in :data:`LEAF_RULES`.
        input_shape: (C, H, W) of one example.

    Returns:
        (global bound, per-layer bounds in computation order).
    """
    if not is_folded(model):
        raise ValueError(
            "the model still has parametrizations: fold it (zoo.fold) before certifying"
        )
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        probe = torch.zeros(
            1, *input_shape, dtype=parameter.dtype if parameter is not None else None
        )
        with _recorded_input_shapes(model) as shapes, torch.no_grad():
            model(probe)
        layers: list[LayerBound] = []
        total = _compose(model, "", shapes, layers)
    finally:
        model.train(was_training)
    return total, tuple(layers)


def _compose(
    module: nn.Module,
    name: str,
    shapes: dict[nn.Module, tuple[int, ...]],
    layers: list[LayerBound],
) -> float:
    if isinstance(module, nn.Sequential):
        return math.prod(
            _compose(child, f"{name}.{key}" if name else key, shapes, layers)
            for key, child in module.named_children()
        )
    rule = _rule(module)
    if rule is None:
        raise UnsupportedModuleError(
            f"no Lipschitz rule for module {name or '<root>'!r} of type {type(module).__name__}; "
            "it cannot be certified"
        )
    if module not in shapes:
        raise UnsupportedModuleError(f"module {name!r} is not called by the forward pass")
    bound = float(rule(module, shapes[module]))
    layers.append(LayerBound(name, type(module).__name__, bound, shapes[module]))
    return bound


def certify(
    model: nn.Module, input_shape: tuple[int, ...], preprocessing: dict | None = None
) -> Certificate:
    """Compute the :class:`~zoo.certificate.Certificate` of a folded ``model``."""
    bound, layers = network_bound(model, input_shape)
    return Certificate(
        lipschitz_bound=bound,
        layers=layers,
        method=METHOD,
        relative_margin=RELATIVE_MARGIN,
        input_shape=tuple(input_shape),
        preprocessing=dict(preprocessing or {}),
        weights_sha256=weights_sha256(model.state_dict()),
        library_version=zoo.__version__,
    )
