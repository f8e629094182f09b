"""Lipschitz constants of elementwise maps: activations, clamps and scalings by constants.

An elementwise map applies a scalar function ``f_k`` to each entry ``k`` of a tensor, so
``||f(x) - f(y)||^2 = sum_k |f_k(x_k) - f_k(y_k)|^2 <= (sup_k Lip(f_k))^2 ||x - y||^2``: its L2 Lipschitz
constant is the largest slope of its scalar functions, ``sup |f'|`` for a continuous, piecewise
differentiable ``f``. This module holds that number, once, for every scalar map the certifier
(``zoo.certify``, from modules) and the artifact verifiers (``export``, from ONNX nodes and aten ops)
bound; they only translate their op's arguments into a call here.

Each constant is proven in its docstring (or its comment in :data:`FIXED_SLOPES`) and checked against
autograd derivatives on a fine grid (``tests/zoo/test_bounds_elementwise.py``). Smooth activations
whose supremum has no closed form are rounded up. A parameter outside the domain of the proof (NaN,
infinity, a CELU alpha <= 0, an ELU with a negative input scale...) raises :class:`OutOfDomainError`
naming it, never a guess.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "ERF_LIPSCHITZ",
    "FIXED_SLOPES",
    "GELU_LIPSCHITZ",
    "HARDSWISH_LIPSCHITZ",
    "MISH_LIPSCHITZ",
    "SELU_ALPHA",
    "SELU_SCALE",
    "SIGMOID_LIPSCHITZ",
    "SILU_LIPSCHITZ",
    "OutOfDomainError",
    "batch_norm",
    "celu",
    "clamp",
    "elu",
    "hard_sigmoid",
    "leaky_relu",
    "prelu",
    "scaling",
    "softplus",
    "softsign",
]


class OutOfDomainError(ValueError):
    """A parameter of a map lies outside the domain where its Lipschitz constant is proven."""


GELU_LIPSCHITZ = 1.1291
"""``t Phi(t)``: 1.128904 at ``t = sqrt(2)``; its tanh approximation: 1.128993 at ``t = 1.418``."""
SILU_LIPSCHITZ = 1.0999
"""``t sigmoid(t)`` (SiLU, swish): 1.099839 at ``t = 2.3994``."""
MISH_LIPSCHITZ = 1.0886
"""``t tanh(softplus(t))``: 1.088498 at ``t = 1.4906``."""
ERF_LIPSCHITZ = 1.12838
"""``erf``: its derivative ``2 exp(-t^2) / sqrt(pi)`` peaks at ``2 / sqrt(pi) = 1.1283792`` at 0."""
HARDSWISH_LIPSCHITZ = 1.5
"""``t relu6(t + 3) / 6``: slope ``(2 t + 3) / 6`` on ``(-3, 3)``, 0 below, 1 above: 1.5 at ``t = 3``."""
SIGMOID_LIPSCHITZ = 0.25
"""``sigmoid``: its derivative ``s (1 - s)`` with ``s`` in (0, 1) peaks at 1/4 (``t = 0``)."""
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
"""SELU is ``elu(t, alpha=SELU_ALPHA, scale=SELU_SCALE)`` (Klambauer et al. 2017, torch's constants)."""


FIXED_SLOPES: dict[str, float] = {
    "relu": 1.0,  # max(0, t): slopes 0 and 1
    "abs": 1.0,  # slopes -1 and 1
    "neg": 1.0,  # slope -1
    "tanh": 1.0,  # 1 - tanh(t)^2, in (0, 1]
    "atan": 1.0,  # 1 / (1 + t^2), in (0, 1]
    "sin": 1.0,  # cos(t)
    "cos": 1.0,  # -sin(t)
    "sigmoid": SIGMOID_LIPSCHITZ,
    "gelu": GELU_LIPSCHITZ,
    "silu": SILU_LIPSCHITZ,
    "mish": MISH_LIPSCHITZ,
    "erf": ERF_LIPSCHITZ,
    "hardswish": HARDSWISH_LIPSCHITZ,
    # torch's hardsigmoid is relu6(t + 3) times the float32 constant 1/6 (also in float64), so its slope
    # is float32(1/6) = 0.16666667163..., a little above 1/6 (hard_sigmoid)
    "hardsigmoid": float(np.float32(1 / 6)),
    "selu": SELU_SCALE * SELU_ALPHA,  # elu(alpha=SELU_ALPHA, scale=SELU_SCALE), see elu
}
"""Scalar maps without parameters -> the supremum of ``|f'|`` (the proof of each in its comment or in
the constant's docstring)."""


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise OutOfDomainError(f"{name} is {value}, not a finite number")
    return value


def _float64(values: np.ndarray | torch.Tensor | float) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _largest_abs(values: np.ndarray | torch.Tensor | float, name: str) -> float:
    """``max |values|`` in float64, refusing NaN and infinities."""
    array = _float64(values)
    if not np.all(np.isfinite(array)):
        raise OutOfDomainError(f"{name} holds NaN or infinite values")
    return float(np.max(np.abs(array), initial=0.0))


def leaky_relu(negative_slope: float) -> float:
    """``t`` (t >= 0), ``a t`` (t < 0): slopes 1 and ``a``, so ``max(1, |a|)`` for any finite ``a``."""
    return max(1.0, abs(_finite(negative_slope, "the negative slope")))


def prelu(slopes: np.ndarray | torch.Tensor) -> float:
    """:func:`leaky_relu` with one learned slope per channel (or one for all): ``max(1, max |a|)``."""
    return max(1.0, _largest_abs(slopes, "the PReLU slope"))


def elu(alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> float:
    """``s t`` (t > 0), ``s a (exp(i t) - 1)`` (t <= 0), for ``a = alpha``, ``s = scale``, ``i =
    input_scale`` (aten's elu; ONNX Elu has ``s = i = 1``, ONNX Selu ``s = gamma``, ``i = 1``).

    Continuous at 0 (both pieces vanish). Slopes: ``s`` for t > 0, ``s a i exp(i t)`` for t < 0, whose
    modulus is at most ``|s a i|`` when ``i >= 0`` (then ``exp(i t) <= 1``): the constant is
    ``|s| max(1, |a i|)``. With ``i < 0`` the slope grows without bound as t -> -inf, unless ``a = 0``.
    """
    alpha, scale = _finite(alpha, "alpha"), _finite(scale, "scale")
    input_scale = _finite(input_scale, "input_scale")
    if input_scale < 0 and alpha != 0:
        raise OutOfDomainError(f"input_scale {input_scale} < 0: the slope exp(input_scale t) is unbounded")
    return abs(scale) * max(1.0, abs(alpha * input_scale))


def celu(alpha: float) -> float:
    """``max(0, t) + min(0, a (exp(t / a) - 1))``: for ``a > 0`` the second term is ``a (exp(t / a) -
    1) <= 0`` on t <= 0, of slope ``exp(t / a) <= 1``, and 0 on t > 0: the constant is 1. With ``a < 0``
    its slope ``exp(t / a)`` is unbounded as t -> -inf; ``a = 0`` divides by zero."""
    if not _finite(alpha, "alpha") > 0:
        raise OutOfDomainError(f"alpha {alpha} <= 0: CELU is Lipschitz only for alpha > 0")
    return 1.0


def softplus(beta: float = 1.0, threshold: float = math.inf) -> float:
    """``log(1 + exp(b t)) / b``, and ``t`` where ``b t > threshold`` (torch's switch to the identity).

    Slope ``sigmoid(b t)``, in (0, 1) for ``b > 0``; the identity has slope 1: the constant is 1. At the
    switch ``t0 = threshold / b`` the two pieces differ by ``log(1 + exp(-threshold)) / b``: the map is
    continuous only up to that jump, which must be below half a float32 unit in the last place of
    ``t0`` (then the runtime's float32 outputs of both pieces round to the same value there; torch's
    default threshold 20 gives 2e-9 at ``t0 = 20``, where half an ulp is 1e-6). ONNX Softplus has
    ``b = 1`` and no switch.
    """
    beta = _finite(beta, "beta")
    if not beta > 0:
        raise OutOfDomainError(f"beta {beta} <= 0 is not supported")
    if threshold != math.inf:
        threshold = _finite(threshold, "threshold")
        switch = threshold / beta
        jump = math.log1p(math.exp(-threshold)) / beta if threshold > -700 else -switch
        half_ulp = float(np.spacing(np.float32(abs(switch)))) / 2
        if not jump <= half_ulp:
            raise OutOfDomainError(
                f"threshold {threshold}: softplus jumps by {jump:.3g} where it switches to the identity"
            )
    return 1.0


def softsign(offset: float = 1.0) -> float:
    """``t / (c + |t|)`` for ``c > 0`` (softsign is ``c = 1``): slope ``c / (c + |t|)^2 <= 1 / c``,
    attained at 0. With ``c <= 0`` the denominator vanishes."""
    offset = _finite(offset, "the offset")
    if not offset > 0:
        raise OutOfDomainError(f"t / ({offset} + |t|) divides by zero")
    return 1.0 / offset


def hard_sigmoid(alpha: float, beta: float = 0.5) -> float:
    """``max(0, min(1, a t + b))``: a clamp (1-Lipschitz) of an affine map of slope ``a``: ``|a|``
    (ONNX HardSigmoid; aten's hardsigmoid is in FIXED_SLOPES)."""
    _finite(beta, "beta")
    return abs(_finite(alpha, "alpha"))


def clamp(
    low: float | np.ndarray | torch.Tensor | None, high: float | np.ndarray | torch.Tensor | None
) -> float:
    """``min(max(t, low), high)`` (ONNX Clip, aten clamp / hardtanh, ReLU6...): slopes 0 and 1, so 1,
    for bounds that are numbers or +-inf (either may be absent); a NaN bound makes every output NaN."""
    for name, bound in (("the lower bound", low), ("the upper bound", high)):
        if bound is not None and np.any(np.isnan(_float64(bound))):
            raise OutOfDomainError(f"{name} of a clamp is NaN")
    return 1.0


def scaling(factors: np.ndarray | torch.Tensor | float) -> float:
    """``c_k t``, entry ``k`` multiplied by the constant ``c_k``: ``max |c|`` (finite constants)."""
    return _largest_abs(factors, "a scaling factor")


def batch_norm(
    weight: np.ndarray | torch.Tensor | None, variance: np.ndarray | torch.Tensor, eps: float
) -> float:
    """Inference batch normalisation ``w (t - mean) / sqrt(var + eps) + b`` per channel: a scaling by
    ``w / sqrt(var + eps)``, so ``max |w| / sqrt(var + eps)`` (``w = 1`` when absent); ``var + eps``
    must be positive and finite."""
    denominator = _float64(variance) + _finite(eps, "epsilon")
    if not np.all(np.isfinite(denominator)) or not np.all(denominator > 0):
        raise OutOfDomainError("a running variance plus epsilon is not a positive number")
    factors = (1.0 if weight is None else _float64(weight)) / np.sqrt(denominator)
    return scaling(factors)
