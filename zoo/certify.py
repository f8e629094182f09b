"""Compute a network's certificate from its (folded) weights by propagating per-layer bounds.

The bound of a composition is the product of the bounds of its parts; each leaf module has a *rule*
that computes its own sound bound from its weights and its input size with ``zoo.bounds``, and each
residual module a *composite rule* that combines the bound of its branch with its own weights. A
module with no rule is an error, never skipped; a parametrized module must be folded first, so that the
certificate speaks for the weights that ship.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
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
    pooling,
)
from zoo.bounds import elementwise as slopes
from zoo.certificate import Certificate, LayerBound, weights_sha256
from zoo.fold import is_folded
from zoo.layers import (
    Abs,
    BatchCentering,
    BatchLipNorm,
    ConvexResidual,
    GlobalL2NormPool2d,
    GroupSort,
    HouseHolder,
    LayerCentering,
    MaxMin,
    Residual,
    ScaledAdaptiveAvgPool2d,
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


def _avg_pool_bound(module: nn.AvgPool1d | nn.AvgPool2d, input_shape: tuple[int, ...]) -> float:
    """:func:`~zoo.bounds.pooling.average_pool_gain` of the pool's windows, times the layer's scale
    (ScaledAvgPool2d's)."""
    if module.ceil_mode:
        raise UnsupportedModuleError(f"{type(module).__name__} is certified only with ceil_mode=False")
    windows = _windows(module, input_shape)
    divisor = getattr(module, "divisor_override", None)
    return pooling.average_pool_gain(windows, module.count_include_pad, divisor) * getattr(
        module, "scale", 1.0
    )


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


def _per_axis(value: int | Sequence[int] | None, rank: int) -> tuple[int, ...]:
    """A pooling argument per spatial axis (torch takes an int for all of them)."""
    return tuple(value) if isinstance(value, Sequence) else (value,) * rank


def _windows(module: nn.Module, input_shape: tuple[int, ...]) -> pooling.Windows:
    """The windows of a pooling module on one example of ``input_shape`` (LPPool has no padding;
    the output size is the module's own, ceil mode included)."""
    spatial = input_shape[1:]
    kernel = _per_axis(module.kernel_size, len(spatial))
    stride = _per_axis(module.stride, len(spatial)) if module.stride else kernel
    with torch.no_grad():
        out_size = module(torch.zeros(1, *input_shape)).shape[2:]
    return pooling.Windows(
        spatial,
        out_size,
        kernel,
        stride,
        _per_axis(getattr(module, "dilation", 1), len(spatial)),
        _per_axis(getattr(module, "padding", 0), len(spatial)),
    )


def _max_pool_bound(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """:func:`~zoo.bounds.pooling.max_pool_gain` for max pools and the L2-norm pool (proof in the
    ScaledL2NormPool2d docstring); :func:`~zoo.bounds.pooling.lp_pool_gain` for torch's LPPool,
    which is the p-norm of the window for an even p only (it raises values to the power p)."""
    windows = _windows(module, input_shape)
    if isinstance(module, nn.modules.pooling._LPPoolNd):
        p = float(module.norm_type)
        if not (p.is_integer() and p % 2 == 0):
            raise UnsupportedModuleError(f"{type(module).__name__} with norm_type {p} is not a p-norm pool")
        return pooling.lp_pool_gain(p, windows)
    return pooling.max_pool_gain(windows)


def _softmax_bound(module: nn.Softmax | nn.LogSoftmax, input_shape: tuple[int, ...]) -> float:
    """:func:`~zoo.bounds.pooling.softmax_gain` / :func:`~zoo.bounds.pooling.log_softmax_gain` of the
    group along ``dim`` (which must be given, and not the batch axis)."""
    if module.dim is None or module.dim % (len(input_shape) + 1) == 0:
        raise UnsupportedModuleError(f"{type(module).__name__} needs a dim other than the batch axis")
    if isinstance(module, nn.Softmax):
        return pooling.softmax_gain()
    return pooling.log_softmax_gain(input_shape[module.dim % (len(input_shape) + 1) - 1])


def _global_l2_norm_pool_bound(module: GlobalL2NormPool2d, input_shape: tuple[int, ...]) -> float:
    """The L2 norm of each channel: :func:`~zoo.bounds.pooling.reduction_gain` ('norm', 1)."""
    return pooling.reduction_gain("norm", math.prod(input_shape[1:]))


def _one(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Ops that are 1-Lipschitz in L2 by their definition, for every value of their parameters:
    permutations within groups (sorting, MaxMin, pixel (un)shuffle), reshapes, and centering (an
    orthogonal projection plus a translation; BatchCentering in eval mode is a translation)."""
    return 1.0


def _batch_lip_norm_bound(module: BatchLipNorm, input_shape: tuple[int, ...]) -> float:
    """In eval mode a translation and a division by the stored scale: ``1 / scale``."""
    return slopes.scaling(1.0 / float(module.running_scale))


def _batch_norm_bound(module: nn.modules.batchnorm._BatchNorm, input_shape: tuple[int, ...]) -> float:
    """Eval-mode batch normalisation with running statistics (:func:`~zoo.bounds.elementwise.batch_norm`)."""
    if module.running_var is None:
        raise UnsupportedModuleError(
            f"{type(module).__name__} without running statistics depends on the batch"
        )
    return slopes.batch_norm(module.weight, module.running_var, module.eps)


def _slope(name: str) -> Callable[[nn.Module, tuple[int, ...]], float]:
    """The rule of an activation without parameters: :data:`~zoo.bounds.elementwise.FIXED_SLOPES`."""
    return lambda module, input_shape: slopes.FIXED_SLOPES[name]


ACTIVATION_RULES: dict[type[nn.Module], Callable[[nn.Module, tuple[int, ...]], float]] = {
    nn.ReLU: _slope("relu"),
    Abs: _slope("abs"),
    nn.Tanh: _slope("tanh"),
    nn.Sigmoid: _slope("sigmoid"),
    nn.GELU: _slope("gelu"),  # both approximations (see GELU_LIPSCHITZ)
    nn.SiLU: _slope("silu"),
    nn.Mish: _slope("mish"),
    nn.Hardswish: _slope("hardswish"),
    nn.SELU: _slope("selu"),
    nn.Softsign: lambda module, input_shape: slopes.softsign(),
    nn.LeakyReLU: lambda module, input_shape: slopes.leaky_relu(module.negative_slope),
    nn.PReLU: lambda module, input_shape: slopes.prelu(module.weight),
    nn.ELU: lambda module, input_shape: slopes.elu(module.alpha),
    nn.CELU: lambda module, input_shape: slopes.celu(module.alpha),
    nn.Softplus: lambda module, input_shape: slopes.softplus(module.beta, module.threshold),
    nn.Hardsigmoid: _slope("hardsigmoid"),
    nn.Hardtanh: lambda module, input_shape: slopes.clamp(module.min_val, module.max_val),  # ReLU6 too
}
"""Elementwise activations -> their rule: a call of :mod:`zoo.bounds.elementwise` with the module's
parameters."""


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
    if not math.isfinite(alpha):
        raise UnsupportedModuleError(f"ConvexResidual's alpha is {alpha}")
    return abs(1.0 - alpha) + abs(alpha) * bound_of("branch")


LEAF_RULES: dict[type[nn.Module], Callable[[nn.Module, tuple[int, ...]], float]] = {
    **ACTIVATION_RULES,
    nn.Linear: _linear_bound,
    nn.Conv1d: _conv_bound,
    nn.Conv2d: _conv_bound,
    nn.ConvTranspose1d: _conv_transpose_bound,
    nn.ConvTranspose2d: _conv_transpose_bound,
    nn.AvgPool1d: _avg_pool_bound,
    nn.AvgPool2d: _avg_pool_bound,  # ScaledAvgPool2d too
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool_bound,
    nn.MaxPool1d: _max_pool_bound,
    nn.MaxPool2d: _max_pool_bound,
    nn.LPPool1d: _max_pool_bound,
    nn.LPPool2d: _max_pool_bound,
    ScaledL2NormPool2d: _max_pool_bound,
    GlobalL2NormPool2d: _global_l2_norm_pool_bound,
    nn.Softmax: _softmax_bound,
    nn.LogSoftmax: _softmax_bound,
    nn.BatchNorm1d: _batch_norm_bound,
    nn.BatchNorm2d: _batch_norm_bound,
    BatchLipNorm: _batch_lip_norm_bound,
    GroupSort: _one,  # GroupSort2, FullSort too
    MaxMin: _one,
    HouseHolder: _householder_bound,
    nn.Flatten: _one,
    nn.Identity: _one,
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
