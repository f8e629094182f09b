"""Compute a network's certificate from its (folded) weights by propagating per-layer bounds.

The bound of a composition is the product of the bounds of its parts; each leaf module has a *rule*
that computes its own sound bound from its weights and its input size with ``zoo.bounds``, and each
residual module a *composite rule* that combines the bound of its branch with its own weights. A
module with no rule is an error, never skipped; a parametrized module must be folded first, so that the
certificate speaks for the weights that ship.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

import zoo
from zoo.bounds import (
    RELATIVE_MARGIN,
    LinearMap,
    adaptive_average_pool_bound,
    adjoint_residual_bound,
    conv_bound,
    conv_transpose_bound,
    matrix_norm_bound,
)
from zoo.certificate import Certificate, LayerBound, weights_sha256
from zoo.fold import is_folded
from zoo.layers import (
    Abs,
    BatchCentering,
    BatchLipNorm,
    ConvexResidual,
    GlobalL2NormPool2d,
    GroupSort,
    GroupSort2,
    HouseHolder,
    LayerCentering,
    MaxMin,
    Residual,
    ScaledAdaptiveAvgPool2d,
    ScaledAvgPool2d,
    ScaledL2NormPool2d,
)

__all__ = ["COMPOSITE_RULES", "LEAF_RULES", "UnsupportedModuleError", "certify", "network_bound"]

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
            "AvgPool2d is certified only with ceil_mode=False, count_include_pad=True and no divisor_override"
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


def _conv_transpose_bound(
    module: nn.ConvTranspose1d | nn.ConvTranspose2d, input_shape: tuple[int, ...]
) -> float:
    """The adjoint of a convolution on the output size (:func:`zoo.bounds.conv_transpose_bound`)."""
    return conv_transpose_bound(
        module.weight,
        input_size=input_shape[1:],
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        output_padding=module.output_padding,
        groups=module.groups,
    )


def _adaptive_avg_pool_bound(module: nn.AdaptiveAvgPool2d, input_shape: tuple[int, ...]) -> float:
    """Exact for windows of any overlap (:func:`~zoo.bounds.adaptive_average_pool_bound`)."""
    height, width = input_shape[-2:]
    scale = module.scale(height, width) if isinstance(module, ScaledAdaptiveAvgPool2d) else 1.0
    return adaptive_average_pool_bound((height, width), nn.modules.utils._pair(module.output_size)) * scale


def _max_windows_per_pixel(size: int, kernel: int, stride: int, padding: int) -> int:
    """Largest number of pooling windows (zero padding, floor mode) that contain one input pixel."""
    counts = [0] * size
    for output in range((size + 2 * padding - kernel) // stride + 1):
        start = output * stride - padding
        for pixel in range(max(start, 0), min(start + kernel, size)):
            counts[pixel] += 1
    return max(counts)


def _l2_norm_pool_bound(module: ScaledL2NormPool2d, input_shape: tuple[int, ...]) -> float:
    """``sqrt(m)`` with ``m`` the largest number of windows containing one pixel (proof in the
    ScaledL2NormPool2d docstring); windows are products of row and column ranges, so ``m`` is the
    product of the per-axis counts."""
    geometry = zip(input_shape[-2:], module.kernel_size, module.stride, module.padding, strict=True)
    windows = math.prod(_max_windows_per_pixel(n, k, s, p) for n, k, s, p in geometry)
    return math.sqrt(windows)


def _one(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Ops that are 1-Lipschitz in L2 by their definition, for every value of their parameters:
    permutations within groups (sorting, MaxMin, pixel (un)shuffle), elementwise 1-Lipschitz maps
    (ReLU, Abs), reshapes, centering (an orthogonal projection plus a translation; BatchCentering in
    eval mode is a translation) and the global L2 norm pool (every pixel in one window, see
    ScaledL2NormPool2d)."""
    return 1.0


def _batch_lip_norm_bound(module: BatchLipNorm, input_shape: tuple[int, ...]) -> float:
    """In eval mode a translation and a division by the stored scale: ``1 / scale``."""
    return 1.0 / float(module.running_scale)


def _prelu_bound(module: nn.PReLU, input_shape: tuple[int, ...]) -> float:
    """Each output is ``x`` or ``a x`` for a stored slope ``a``: ``max(1, max |a|)``."""
    return max(1.0, float(module.weight.detach().abs().max()))


def _householder_bound(module: HouseHolder, input_shape: tuple[int, ...]) -> float:
    """The Householder activation computes ``x - 2 A^T relu(A x)`` (see its docstring): an adjoint
    residual block, bounded from ``A`` like a folded SLL block (about 1)."""
    inner, outer = module.linear_maps(len(input_shape) - 1)
    return adjoint_residual_bound(inner, outer, input_shape[1:])


def _adjoint_maps(branch: nn.Module) -> tuple[LinearMap, LinearMap] | None:
    """(inner, outer) maps when ``branch`` is ``Sequential(layer, ReLU, layer)``, else None."""
    if not (isinstance(branch, nn.Sequential) and len(branch) == 3 and type(branch[1]) is nn.ReLU):
        return None
    inner, outer = LinearMap.of(branch[0]), LinearMap.of(branch[2])
    return None if inner is None or outer is None else (inner, outer)


def _residual_bound(
    module: Residual, input_shape: tuple[int, ...], bound_of: Callable[[str], float]
) -> float:
    """``x + g(x)`` is ``1 + Lip(g)``-Lipschitz (triangle inequality). When the branch is a layer, a
    ReLU and the adjoint layer (a folded SLL block), :func:`zoo.bounds.adjoint_residual_bound` is
    also sound and much tighter; the smaller of the two is kept."""
    general = 1.0 + bound_of("branch")
    maps = _adjoint_maps(module.branch)
    adjoint = None if maps is None else adjoint_residual_bound(*maps, input_shape[1:])
    return general if adjoint is None else min(general, adjoint)


def _convex_residual_bound(
    module: ConvexResidual, input_shape: tuple[int, ...], bound_of: Callable[[str], float]
) -> float:
    """``(1 - alpha) x + alpha g(x)`` is ``|1 - alpha| + |alpha| Lip(g)``-Lipschitz, for the stored
    ``alpha`` whatever its value."""
    alpha = float(module.alpha.detach())
    return abs(1.0 - alpha) + abs(alpha) * bound_of("branch")


LEAF_RULES: dict[type[nn.Module], Callable[[nn.Module, tuple[int, ...]], float]] = {
    nn.Linear: _linear_bound,
    nn.Conv1d: _conv_bound,
    nn.Conv2d: _conv_bound,
    nn.AvgPool2d: _avg_pool_bound,
    ScaledAvgPool2d: _avg_pool_bound,
    GroupSort2: _one,
    MaxMin: _one,
    nn.ReLU: _one,
    nn.PReLU: _prelu_bound,
    BatchLipNorm: _batch_lip_norm_bound,
    nn.Flatten: _one,
    nn.Identity: _one,
    nn.ConvTranspose1d: _conv_transpose_bound,
    nn.ConvTranspose2d: _conv_transpose_bound,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool_bound,
    ScaledL2NormPool2d: _l2_norm_pool_bound,
    GlobalL2NormPool2d: _one,
    GroupSort: _one,
    Abs: _one,
    HouseHolder: _householder_bound,
    nn.PixelShuffle: _one,
    nn.PixelUnshuffle: _one,
    LayerCentering: _one,
    BatchCentering: _one,
}

# Modules made of children: the rule gets ``bound_of(child_name)``, the certified bound of that
# child (itself composed by these rules), and combines it with the module's own weights.
COMPOSITE_RULES: dict[
    type[nn.Module], Callable[[nn.Module, tuple[int, ...], Callable[[str], float]], float]
] = {
    Residual: _residual_bound,
    ConvexResidual: _convex_residual_bound,
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


def _rule(module: nn.Module, rules: dict[type[nn.Module], Callable] = LEAF_RULES) -> Callable | None:
    for cls in type(module).__mro__:
        if cls in rules:
            return rules[cls]
    return None


def network_bound(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, tuple[LayerBound, ...]]:
    """Sound upper bound of the L2 Lipschitz constant of a folded ``model`` on inputs of ``input_shape``.

    Args:
        model: a folded network (no parametrizations), built of ``nn.Sequential`` and modules that
            have a rule in :data:`LEAF_RULES`.
        input_shape: (C, H, W) of one example.

    Returns:
        (global bound, per-layer bounds in computation order).
    """
    if not is_folded(model):
        raise ValueError("the model still has parametrizations: fold it (zoo.fold) before certifying")
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        probe = torch.zeros(1, *input_shape, dtype=parameter.dtype if parameter is not None else None)
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
    rule, composite = _rule(module), _rule(module, COMPOSITE_RULES)
    if rule is None and composite is None:
        raise UnsupportedModuleError(
            f"no Lipschitz rule for module {name or '<root>'!r} of type {type(module).__name__}; "
            "it cannot be certified"
        )
    if module not in shapes:
        raise UnsupportedModuleError(f"module {name!r} is not called by the forward pass")
    if composite is not None:

        def bound_of(child: str) -> float:
            return _compose(getattr(module, child), f"{name}.{child}" if name else child, shapes, [])

        bound = float(composite(module, shapes[module], bound_of))
    else:
        bound = float(rule(module, shapes[module]))
    layers.append(LayerBound(name, type(module).__name__, bound, shapes[module]))
    return bound


def certify(model: nn.Module, input_shape: tuple[int, ...], preprocessing: dict | None = None) -> Certificate:
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
