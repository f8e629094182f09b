"""What the weight parametrizations share: the layers they accept, the overlap factor of a
convolution, and the helper that turns a parametrization function into layer constructors.

Every family (``spectral``, ``frobenius``, ``aol``, ``orthogonal``) follows the style of
``torch.nn.utils.parametrizations``: a small ``nn.Module`` whose ``forward`` maps the trained tensor(s)
to the effective weight, registered in place on a plain ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d``
with ``torch.nn.utils.parametrize``. Folding (``zoo.fold``) replaces each parametrized weight by its
current value, leaving the plain layer whose state dict loads into the architecture built without
parametrizations.

These layers are *designed* to be ``lip``-Lipschitz; nothing here is a certificate. The certificate is
computed afterwards from the folded weights by ``zoo.certify``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

__all__ = ["LAYER_TYPES", "TRANSPOSED_TYPES", "check_layer", "conv_overlap_factor", "layer_constructor"]

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d)

# Zero padding restricts the circular convolution of a larger grid and circular padding is that
# convolution, so both keep a convolution's norm at most its circular norm; reflect / replicate
# padding duplicate pixels and can raise it.
SUPPORTED_PADDING_MODES = ("zeros", "circular")


def check_layer(module: nn.Module, family: str, *, dilation: bool = True, transposed: bool = False) -> None:
    """Raise unless ``module`` is a layer the parametrization ``family`` is sound for.

    Raises:
        TypeError: not an ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (or, when the family takes
            ``transposed`` convolutions, an ``nn.ConvTranspose1d`` / ``2d``).
        ValueError: a padding mode other than zeros / circular, a dilation the family does not
            support, or a grouped transposed convolution.
    """
    accepted = LAYER_TYPES + (TRANSPOSED_TYPES if transposed else ())
    if not isinstance(module, accepted):
        names = "nn.Linear, nn.Conv1d/2d" + (" or nn.ConvTranspose1d/2d" if transposed else "")
        raise TypeError(f"{family} expects {names}, got {type(module).__name__}")
    if isinstance(module, nn.Linear):
        return
    if module.padding_mode not in SUPPORTED_PADDING_MODES:
        raise ValueError(f"{family} supports padding_mode 'zeros' or 'circular', got {module.padding_mode!r}")
    if isinstance(module, TRANSPOSED_TYPES) and module.groups != 1:
        raise ValueError(f"{family} supports groups=1 transposed convolutions only")
    if not dilation and any(d != 1 for d in module.dilation):
        raise ValueError(f"{family} supports dilation=1 convolutions only")


def conv_overlap_factor(
    kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int] | None = None
) -> int:
    """Largest number of output positions that read one input pixel.

    Per spatial axis, the taps ``d * j`` (``j < k``) hitting one pixel from outputs spaced by ``s`` are
    those with ``d * j`` in one residue class modulo ``s``: at most ``ceil(k * gcd(d, s) / s)`` of them.

    A convolution whose reshaped kernel matrix (c_out, c_in * prod(k)) has spectral norm ``sigma`` has
    an operator norm of at most ``sigma * sqrt(this factor)``: the output at each position is the matrix
    applied to the stacked window, and every pixel lies in at most this many windows. Dividing the
    weight by its square root keeps the convolution 1-Lipschitz (sound, usually loose: the
    certificate measures the real norm).
    """
    dilation = dilation or (1,) * len(kernel_size)
    return math.prod(
        math.ceil(k * math.gcd(d, s) / s) for k, s, d in zip(kernel_size, stride, dilation, strict=True)
    )


def layer_constructor(
    layer: type[nn.Module], constrain: Callable[..., nn.Module], name: str
) -> Callable[..., nn.Module]:
    """A constructor ``name(*args, lip=1.0, options=None, **kwargs)`` that builds ``layer(*args, **kwargs)``
    (the torch layer's own arguments) and applies ``constrain(layer, lip=lip, **options)`` in place."""

    def build(
        *args: Any, lip: float = 1.0, options: dict[str, Any] | None = None, **kwargs: Any
    ) -> nn.Module:
        return constrain(layer(*args, **kwargs), lip=lip, **(options or {}))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"``nn.{layer.__name__}(*args, **kwargs)`` made ``lip``-Lipschitz by :func:`{constrain.__name__}`, "
        "which receives ``options``."
    )
    return build
