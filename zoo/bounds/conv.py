"""Sound upper bounds of the L2 operator norm of 1-D, 2-D and 3-D convolutions (torch semantics).

A convolution layer, bias excluded, is a linear map from ``R^(c_in * prod(n))`` to
``R^(c_out * prod(out))`` for inputs of spatial size ``n``. Its L2 operator norm (largest singular
value) is the layer's Lipschitz constant. Two methods bound it:

``exact``
    The dense matrix of the operator, built column by column from the impulse response
    (:func:`conv_operator_matrix`), and its largest singular value in float64. A grouped convolution
    is block-diagonal, so its norm is the maximum over groups and each group is solved separately.

``fft``
    The operator is reduced, by exact rewritings, to a *stride-1 circular* convolution on some grid,
    whose norm is the maximum over the grid's DFT frequencies ``w`` of the spectral norm of the
    ``c_out x c_in`` matrix ``K(w) = sum_t W_t exp(-2 pi i <t, w>)`` (Sedghi et al. 2019):

    * *groups*: block-diagonal, the norm is the maximum over groups (never the product).
    * *stride* ``s``: if ``s`` divides the grid size, the stride-``s`` convolution is a stride-1
      convolution of the space-to-depth rearranged input (``c_in * s^D`` channels, grid ``N / s``);
      kernel tap ``t`` moves to tap ``t // s`` of channel block ``t % s`` (polyphase form).
    * *dilation* ``d``: tap ``j`` sits at position ``d * j``; the DFT handles the gaps exactly.
    * *circular padding* on size ``n``: output ``o`` reads the circular convolution on the grid
      ``n`` at row ``(o * s - pad_left) mod n``, so the operator is a row selection of that circular
      convolution; a row selected ``r`` times multiplies the bound by ``sqrt(r)`` (``r = 1``
      whenever ``pad_left + pad_right <= dilation * (k - 1)``, the usual case).
    * *zero padding* on size ``n``: the zero-padded input embeds isometrically into a circular grid
      ``N``; if ``N >= n + pad_left`` and ``N`` exceeds the last input position any output reads,
      no receptive field wraps onto the real input, so the operator is a row selection (each row
      once) of the circular convolution on ``N``, a sound bound that is tight in practice. ``N`` is
      rounded up to a multiple of the stride. For a 3x3 'same' conv this is ``N = n + 1``, one
      less than the textbook ``n + k - 1`` and a little tighter.
    * *reflect / replicate padding*: the layer is ``V P`` with ``P`` the padding map and ``V`` the
      unpadded (valid) convolution on the padded size ``n'``. We bound ``||V||`` as above (zero
      padding 0 on ``n'``) and multiply by ``||P|| = sqrt(m)``, where ``m`` is the largest number of
      padded positions that copy one input pixel (product over the spatial dims: reflect gives 2
      per padded dim, 3 on tiny inputs; replicate gives ``pad + 1``). Sound but loose (measured 1.4
      to 2.2 times the exact norm in 2-D): ``method='auto'`` uses the exact method on small inputs.

    Per frequency we form the Hermitian Gram matrix ``K(w)^H K(w)`` (of the smaller side) as the
    DFT of the kernel's spatial autocorrelation (cheap: one small product per pair of taps). Its
    largest eigenvalue, maximised over the frequencies, is found exactly in float64: power
    iteration ranks the frequencies, LAPACK solves the top few, and a Cholesky factorisation of
    ``mu I - G(w)`` with ``mu`` just above that value proves ``G(w) <= mu I`` at every other
    frequency (those where it fails are solved exactly), twice as fast as solving them all (Gram
    iteration replaces the eigensolver above 8192 channels). The result is the exact norm of the
    circular operator; it is a bound only through the restriction steps above.

``input_size=None``
    A bound valid for *every* input size. A zero-padded (stride ``s``) convolution on any size is a
    restriction of the convolution on the infinite grid ``l2(Z^D)``, whose norm is the supremum
    over *continuous* frequencies of ``||K(w)||_2`` for the polyphase kernel. We sample ``K`` on a
    grid of ``N_d`` points per dim and correct by Bernstein's inequality: with ``K_d`` the
    half-width of the (centred) kernel and ``tau = pi * sum_d K_d / N_d``,
    ``sup_w ||K(w)|| <= max_grid ||K(w)|| / (1 - tau^2 / 2)``. (At the maximiser ``w*`` with top
    singular vectors ``u, v``, ``g(x) = Re u^H K(x) v`` is an entire function of exponential type
    whose maximum ``M`` over the reals is attained at ``w*``, so ``g'(w*) = 0`` and, along the
    segment to the nearest grid point, ``|g''| <= tau^2 M``.) We pick ``N_d`` so that
    ``tau <= 0.05``: the factor is at most 1.00125. Circular padding uses the stride-1 symbol
    (strides need the size to be a multiple of the stride) and the worst row multiplicity over all
    sizes; reflect / replicate use the worst padding multiplicity over all sizes.

Every public function returns ``value * (1 + RELATIVE_MARGIN)``; all arithmetic is float64 (see
:mod:`zoo.bounds.dense` for why the margin dominates the rounding errors).
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from zoo.bounds.dense import (
    as_float64,
    batch_max_eigenvalue_bound,
    spectral_norm_bounds,
    with_margin,
)

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
METHODS = ("auto", "exact", "fft")
EXACT_MAX_NUMEL = 2048
"""Scale of the dense matrices ``method='auto'`` solves exactly: see :func:`prefers_exact`."""
ALL_SIZES_TAU = 0.05
"""Frequency sampling density of the ``input_size=None`` bound: relative overhead <= tau^2 / 2."""
_CHUNK_BYTES = 64 * 2**20
"""Memory budget of the per-frequency Gram matrices evaluated at once."""


@dataclass(frozen=True)
class ConvGeometry:
    """Normalised hyper-parameters of a convolution with ``D`` spatial dims (tuples of length D).

    Attributes:
        kernel: kernel size per dim.
        stride, dilation: per dim, >= 1.
        pads: (left, right) padding per dim, in pixels, as torch applies it.
        padding_mode: one of ``PADDING_MODES``.
        groups: number of groups; ``c_in`` and ``c_out`` are the full channel counts.
    """

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    padding_mode: str
    groups: int
    c_in: int
    c_out: int

    @property
    def extents(self) -> tuple[int, ...]:
        """Span of the dilated kernel per dim: ``dilation * (kernel - 1) + 1``."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))

    def output_size(self, input_size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output size for a spatial input size (torch's formula)."""
        return tuple(
            (n + pl + pr - e) // s + 1
            for n, (pl, pr), e, s in zip(input_size, self.pads, self.extents, self.stride, strict=True)
        )

    def input_size_problem(self, dim: int, n: int) -> str | None:
        """Why an input of size ``n`` along ``dim`` is invalid, or None if it is valid."""
        (pl, pr), e = self.pads[dim], self.extents[dim]
        if n < 1:
            return f"input size {n} must be >= 1"
        if n + pl + pr < e:
            return (
                f"padded input size {n + pl + pr} (input {n} + padding {pl} + {pr}) is smaller "
                f"than the dilated kernel size {e}"
            )
        if self.padding_mode == "reflect" and max(pl, pr) >= n:
            return f"reflect padding ({pl}, {pr}) must be smaller than the input size {n}"
        if self.padding_mode == "circular" and max(pl, pr) > n:
            return f"circular padding ({pl}, {pr}) must be at most the input size {n}"
        return None

    def check_input_size(self, input_size: tuple[int, ...]) -> None:
        """Raise ValueError if the convolution is undefined on inputs of this spatial size."""
        if len(input_size) != len(self.kernel):
            raise ValueError(
                f"input_size {input_size} must have {len(self.kernel)} spatial dims like the kernel"
            )
        for dim, n in enumerate(input_size):
            problem = self.input_size_problem(dim, n)
            if problem is not None:
                raise ValueError(f"{problem} (spatial dim {dim})")

    def min_input_size(self, dim: int) -> int:
        """Smallest valid input size along ``dim``."""
        return next(n for n in itertools.count(1) if self.input_size_problem(dim, n) is None)


def _ints(value: int | Iterable[int], dims: int, name: str, minimum: int) -> tuple[int, ...]:
    """An int or ``dims`` ints (numpy integers accepted), each ``>= minimum``, as a tuple."""
    try:
        if isinstance(value, Iterable):
            values = tuple(operator.index(v) for v in value)
        else:
            values = (operator.index(value),) * dims
    except TypeError:
        values = ()
    if len(values) != dims or min(values) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or {dims} of them, got {value!r}")
    return values


def conv_geometry(
    weight_shape: tuple[int, ...],
    *,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> ConvGeometry:
    """Check torch ``nn.ConvNd`` arguments and normalise them.

    Args:
        weight_shape: ``(c_out, c_in / groups, *kernel)`` with 1, 2 or 3 spatial dims.
        padding: int, per-dim tuple (symmetric), ``'valid'`` (0) or ``'same'`` (stride 1 only; total
            ``dilation * (k - 1)`` per dim, the extra pixel of an odd total on the right, as torch).

    Raises:
        ValueError: naming the offending argument.
    """
    if len(weight_shape) not in (3, 4, 5):
        raise ValueError(
            "weight must have shape (c_out, c_in / groups, *kernel) with 1, 2 or 3 spatial dims, "
            f"got shape {tuple(weight_shape)}"
        )
    c_out, c_in_per_group, *kernel = weight_shape
    dims = len(kernel)
    if min(weight_shape) < 1:
        raise ValueError(f"weight has an empty dimension: shape {tuple(weight_shape)}")
    (groups,) = _ints(groups, 1, "groups", 1)
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide c_out={c_out}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    strides = _ints(stride, dims, "stride", 1)
    dilations = _ints(dilation, dims, "dilation", 1)
    if padding == "valid":
        pads = ((0, 0),) * dims
    elif padding == "same":
        if any(s != 1 for s in strides):
            raise ValueError("padding='same' requires stride 1 (as in torch)")
        totals = [d * (k - 1) for k, d in zip(kernel, dilations, strict=True)]
        pads = tuple((t // 2, t - t // 2) for t in totals)
    elif isinstance(padding, str):
        raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    else:
        pads = tuple((p, p) for p in _ints(padding, dims, "padding", 0))
    return ConvGeometry(
        kernel=tuple(kernel),
        stride=strides,
        dilation=dilations,
        pads=pads,
        padding_mode=padding_mode,
        groups=groups,
        c_in=c_in_per_group * groups,
        c_out=c_out,
    )


def apply_conv(weight: torch.Tensor, inputs: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """The convolution (bias excluded) as torch computes it: pad with the mode, then a valid conv.

    Args:
        weight: ``(c_out, c_in / groups, *kernel)``.
        inputs: ``(batch, c_in, *n)`` with the same dtype as ``weight``.

    Returns:
        ``(batch, c_out, *out)``.
    """
    torch_pads = [p for pair in reversed(geometry.pads) for p in pair]  # last dim first
    mode = "constant" if geometry.padding_mode == "zeros" else geometry.padding_mode
    padded = F.pad(inputs, torch_pads, mode=mode)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(geometry.kernel) - 1]
    return conv(padded, weight, stride=geometry.stride, dilation=geometry.dilation, groups=geometry.groups)


def conv_operator_matrix(
    weight: torch.Tensor,
    *,
    input_size: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Dense float64 matrix of the convolution operator (bias excluded), from its impulse response.

    Column ``i`` is the flattened output for the ``i``-th one-hot input, so for any input ``x`` of
    shape ``(c_in, *input_size)``: ``matrix @ x.flatten() == conv(x).flatten()``. Arguments follow
    ``torch.nn.Conv1d`` / ``Conv2d`` (see :func:`conv_bound`).

    Returns:
        ``(c_out * prod(out_size), c_in * prod(input_size))`` float64 tensor.
    """
    geometry = conv_geometry(
        tuple(weight.shape),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
    )
    input_size = tuple(int(n) for n in input_size)
    geometry.check_input_size(input_size)
    return _operator_matrix(_real_float64(weight), geometry, input_size)


def _operator_matrix(
    weight: torch.Tensor, geometry: ConvGeometry, input_size: tuple[int, ...]
) -> torch.Tensor:
    """:func:`conv_operator_matrix` for a float64 weight and a checked geometry and input size."""
    in_numel = geometry.c_in * math.prod(input_size)
    batch = max(1, min(1024, 2**23 // in_numel))  # one-hot inputs per pass: at most 64 MB of them
    columns = []
    for start in range(0, in_numel, batch):
        stop = min(start + batch, in_numel)
        one_hot = torch.zeros(stop - start, in_numel, dtype=torch.float64)
        one_hot[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        response = apply_conv(weight, one_hot.view(-1, geometry.c_in, *input_size), geometry)
        columns.append(response.flatten(1))
    return torch.cat(columns).T


def _real_float64(weight: torch.Tensor) -> torch.Tensor:
    if weight.is_complex():
        raise ValueError("weight must be real, got a complex tensor")
    return as_float64(weight, "weight")


@dataclass(frozen=True)
class _Symbol:
    """Taps of a stride-1, ``groups``-batched multi-channel convolution kernel.

    Attributes:
        taps: (T, groups, a, b) float64 matrices, one per tap.
        positions: (T, D) int64 tap positions (pixels), in the convolution's own grid.
    """

    taps: torch.Tensor
    positions: torch.Tensor

    @property
    def half_widths(self) -> tuple[float, ...]:
        """Half the span of the tap positions per dim (the degree of the centred symbol)."""
        span = self.positions.max(dim=0).values - self.positions.min(dim=0).values
        return tuple(float(w) / 2 for w in span)


def _polyphase_symbol(
    weight: torch.Tensor, groups: int, dilation: tuple[int, ...], stride: tuple[int, ...]
) -> _Symbol:
    """The stride-1 kernel equivalent to a strided, dilated, grouped convolution (space-to-depth).

    Tap ``j`` of the kernel sits at position ``t = dilation * j``; with
    ``(q, r) = divmod(t, stride)`` it becomes tap ``q`` acting on the channel block ``r`` of the
    space-to-depth input. Positions that no kernel tap reaches (gaps of the dilation) are dropped.

    Args:
        weight: (c_out, c_in / groups, *kernel) float64.

    Returns:
        a symbol with taps (T, groups, c_out / groups, (c_in / groups) * prod(stride)).
    """
    c_out, c_in_g, *kernel = weight.shape
    per_group = weight.reshape(groups, c_out // groups, c_in_g, *kernel)
    spans = [(d * (k - 1)) // s + 1 for k, d, s in zip(kernel, dilation, stride, strict=True)]
    blocks = torch.zeros(*per_group.shape[:3], *stride, *spans, dtype=torch.float64)
    reached = torch.zeros(*spans, dtype=torch.bool)
    grids = torch.meshgrid(*[torch.arange(k) for k in kernel], indexing="ij")
    remainders, quotients = [], []
    for grid, d, s in zip(grids, dilation, stride, strict=True):
        remainders.append((d * grid) % s)
        quotients.append((d * grid) // s)
    blocks[(slice(None),) * 3 + tuple(remainders) + tuple(quotients)] = per_group
    reached[tuple(quotients)] = True
    dims = len(kernel)
    # (groups, a, c_in_g, *stride, *spans) -> (*spans, groups, a, c_in_g * prod(stride))
    order = [3 + dims + i for i in range(dims)] + [0, 1, 2] + [3 + i for i in range(dims)]
    taps = blocks.permute(order).reshape(*spans, groups, c_out // groups, -1)
    positions = reached.nonzero()
    return _Symbol(taps=taps[reached], positions=positions)


def _gram_symbol(symbol: _Symbol) -> _Symbol:
    """The symbol of ``K^H K`` (or ``K K^H`` if smaller): the kernel's spatial autocorrelation.

    ``K(w)^H K(w) = sum_{u, v} W_u^T W_v exp(-2 pi i <v - u, w>)``, so the Gram symbol has one tap
    per difference of positions ``t = v - u``, equal to ``sum_{v - u = t} W_u^T W_v``.
    """
    taps, positions = symbol.taps, symbol.positions
    if taps.shape[-2] < taps.shape[-1]:  # use K K^H: transposed taps at negated positions
        taps, positions = taps.mT, -positions
    differences = positions[None, :, :] - positions[:, None, :]  # [u, v] -> v - u
    unique, index = torch.unique(differences.reshape(-1, positions.shape[1]), dim=0, return_inverse=True)
    count = len(positions)
    gram = torch.zeros(len(unique), *taps.shape[1:2], taps.shape[-1], taps.shape[-1], dtype=torch.float64)
    for u in range(count):
        gram.index_add_(0, index[u * count : (u + 1) * count], taps[u].mT @ taps)
    return _Symbol(taps=gram, positions=unique)


def _max_norm_on_grid(symbol: _Symbol, grid: tuple[int, ...]) -> float:
    """``max_w ||K(w)||_2`` over the DFT frequencies ``w = j / grid`` (exact up to rounding).

    The symbol's kernel is real, so ``K(-w)`` is the conjugate of ``K(w)``: half the frequencies
    (last dim from 0 to ``grid[-1] // 2``) suffice.
    """
    gram = _gram_symbol(symbol)
    sizes = [torch.arange(n) for n in grid[:-1]] + [torch.arange(grid[-1] // 2 + 1)]
    frequencies = torch.cartesian_prod(*sizes).reshape(-1, len(grid))
    modulus = torch.tensor(grid)
    taps = gram.taps.reshape(len(gram.taps), -1)
    matrix_shape = gram.taps.shape[1:]
    per_frequency_bytes = 16 * max(taps.shape[1], gram.positions.numel())
    chunk = max(1, _CHUNK_BYTES // per_frequency_bytes)
    upper = lower = 0.0
    for start in range(0, len(frequencies), chunk):
        j = frequencies[start : start + chunk]
        # phase 2 pi <t, j / grid>, reduced modulo 1 with integers to keep float64 accuracy
        turns = ((gram.positions[None, :, :] * j[:, None, :]) % modulus).to(torch.float64)
        angle = 2 * math.pi * (turns / modulus).sum(-1)
        grams = torch.complex(torch.cos(angle) @ taps, -torch.sin(angle) @ taps)
        chunk_upper, lower = batch_max_eigenvalue_bound(
            grams.reshape(-1, *matrix_shape[1:]), known_lower=lower
        )
        upper = max(upper, chunk_upper)
    return math.sqrt(upper)


def _sup_norm(symbol: _Symbol) -> float:
    """Upper bound of ``sup_w ||K(w)||_2`` over continuous frequencies (Bernstein correction)."""
    half_widths = symbol.half_widths
    active = sum(1 for h in half_widths if h > 0)
    grid = tuple(max(1, math.ceil(math.pi * active * h / ALL_SIZES_TAU)) for h in half_widths)
    tau = math.pi * sum(h / n for h, n in zip(half_widths, grid, strict=True))
    return _max_norm_on_grid(symbol, grid) / (1 - tau**2 / 2)


def _row_multiplicity(n: int, out: int, stride: int, pad_left: int) -> int:
    """How often the most-read row ``(o * stride - pad_left) mod n`` of a circular conv is used."""
    rows = (torch.arange(out) * stride - pad_left) % n
    return int(torch.bincount(rows).max())


def _pad_multiplicity(n: int, pads: tuple[int, int], mode: str) -> int:
    """Largest number of padded positions that copy one input pixel (reflect or replicate)."""
    positions = torch.arange(-pads[0], n + pads[1])
    if mode == "reflect":
        source = positions.abs()
        source = torch.where(source > n - 1, 2 * (n - 1) - source, source)
    else:
        source = positions.clamp(0, n - 1)
    return int(torch.bincount(source).max())


def _zero_padding_grid(n: int, pads: tuple[int, int], extent: int, stride: int) -> int:
    """Smallest circular grid (a multiple of ``stride``) containing the zero-padded conv.

    Output ``o`` reads input positions ``o * stride - pad_left + [0, extent)``; none may wrap onto
    ``[0, n)``, and the ``out`` output rows must be distinct modulo the grid.
    """
    out = (n + pads[0] + pads[1] - extent) // stride + 1
    last_read = (out - 1) * stride - pads[0] + extent - 1
    size = max(n + pads[0], last_read + 1, (out - 1) * stride + 1)
    return -(-size // stride) * stride


def prefers_exact(geometry: ConvGeometry, input_size: tuple[int, ...]) -> bool:
    """Whether ``method='auto'`` builds the dense matrix: when each group's ``m x n`` matrix has
    ``max(m, n) <= 4 * EXACT_MAX_NUMEL`` and the eigensolver's work, ``groups * m * n * min(m, n)``,
    is at most that of one ``EXACT_MAX_NUMEL`` square matrix (about a second on 2 CPU cores)."""
    groups = geometry.groups
    rows = geometry.c_out // groups * math.prod(geometry.output_size(input_size))
    columns = geometry.c_in // groups * math.prod(input_size)
    work = groups * rows * columns * min(rows, columns)
    return max(rows, columns) <= 4 * EXACT_MAX_NUMEL and work <= EXACT_MAX_NUMEL**3


def _exact_norm(weight: torch.Tensor, geometry: ConvGeometry, input_size: tuple[int, ...]) -> float:
    """Largest singular value of the dense operator, maximised over the groups (block-diagonal)."""
    groups = geometry.groups
    one_group = replace(geometry, groups=1, c_in=geometry.c_in // groups, c_out=geometry.c_out // groups)
    matrices = torch.stack([_operator_matrix(part, one_group, input_size) for part in weight.chunk(groups)])
    return float(spectral_norm_bounds(matrices, exact_max_dim=min(matrices.shape[-2:])).max())


def _fft_norm(weight: torch.Tensor, geometry: ConvGeometry, input_size: tuple[int, ...]) -> float:
    """Per-frequency bound on the given input size (see the module docstring for each reduction)."""
    mode, pads = geometry.padding_mode, geometry.pads
    if mode == "circular":
        # polyphase only along dims the stride divides; elsewhere the rows are a subset of stride 1
        stride = tuple(s if n % s == 0 else 1 for n, s in zip(input_size, geometry.stride, strict=True))
        grid = tuple(n // s for n, s in zip(input_size, stride, strict=True))
        out_size = geometry.output_size(input_size)
        multiplicity = math.prod(
            _row_multiplicity(n, out, s, pl)
            for n, out, s, (pl, _) in zip(input_size, out_size, geometry.stride, pads, strict=True)
        )
        symbol = _polyphase_symbol(weight, geometry.groups, geometry.dilation, stride)
        return _max_norm_on_grid(symbol, grid) * math.sqrt(multiplicity)
    if mode == "zeros":
        multiplicity = 1
    else:  # reflect / replicate: ||valid conv on the padded size|| * ||padding map||
        multiplicity = math.prod(_pad_multiplicity(n, p, mode) for n, p in zip(input_size, pads, strict=True))
        input_size = tuple(n + pl + pr for n, (pl, pr) in zip(input_size, pads, strict=True))
        pads = ((0, 0),) * len(input_size)
    grid = tuple(
        _zero_padding_grid(n, p, e, s) // s
        for n, p, e, s in zip(input_size, pads, geometry.extents, geometry.stride, strict=True)
    )
    symbol = _polyphase_symbol(weight, geometry.groups, geometry.dilation, geometry.stride)
    return _max_norm_on_grid(symbol, grid) * math.sqrt(multiplicity)


def _worst_multiplicity(geometry: ConvGeometry, dim: int) -> int:
    """Largest row (circular) or padding (reflect, replicate) multiplicity over all input sizes."""
    (pl, pr), mode = geometry.pads[dim], geometry.padding_mode
    if mode == "zeros":
        return 1
    start = geometry.min_input_size(dim)
    # Past n = pl + pr + 1 the padding multiplicity is constant and circular rows repeat at most
    # twice.
    sizes = range(start, max(start, pl + pr + 2) + 1)
    if mode == "circular":
        stride, extent = geometry.stride[dim], geometry.extents[dim]
        worst = max(_row_multiplicity(n, (n + pl + pr - extent) // stride + 1, stride, pl) for n in sizes)
        return max(worst, 2 if pl + pr >= extent else 1)
    return max(_pad_multiplicity(n, (pl, pr), mode) for n in sizes)


def _all_sizes_norm(weight: torch.Tensor, geometry: ConvGeometry) -> float:
    """A bound valid for every input size: sup of the symbol over continuous frequencies."""
    dims = len(geometry.kernel)
    stride = (1,) * dims if geometry.padding_mode == "circular" else geometry.stride
    # sup_w ||K(d w)|| = sup_w ||K(w)||: the dilation only matters where it interacts with a stride
    dilation = tuple(1 if s == 1 else d for s, d in zip(stride, geometry.dilation, strict=True))
    multiplicity = math.prod(_worst_multiplicity(geometry, dim) for dim in range(dims))
    symbol = _polyphase_symbol(weight, geometry.groups, dilation, stride)
    return _sup_norm(symbol) * math.sqrt(multiplicity)


def conv_bound(
    weight: torch.Tensor,
    *,
    input_size: tuple[int, ...] | None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> float:
    """Sound upper bound of the L2 operator norm of torch's conv1d / conv2d / conv3d (bias excluded).

    Args:
        weight: ``(c_out, c_in / groups, *kernel)`` with 1, 2 or 3 spatial dims, any float dtype and
            device (converted to float64 on the CPU; a ``Parameter`` can be passed as is).
        input_size: spatial size of the inputs, e.g. ``(32, 32)``; ``None`` for a bound valid for
            every input size (see the module docstring: the supremum of the symbol over continuous
            frequencies, within a factor 1.00125; looser for circular padding with a stride and for
            small inputs).
        stride, padding, dilation, groups, padding_mode: as ``torch.nn.Conv1d`` / ``Conv2d``
            (padding: int, per-dim tuple, ``'same'`` or ``'valid'``; padding_mode: ``'zeros'``,
            ``'circular'``, ``'reflect'`` or ``'replicate'``).
        method: ``'exact'`` (dense operator, needs ``input_size``), ``'fft'`` (per-frequency norms
            after exact reductions), or ``'auto'``: exact when the dense matrix is small (about
            ``(c_in / groups) * prod(input_size) <= 2048``, see :func:`prefers_exact`), fft
            otherwise.

    Returns:
        The float64 bound times ``1 + RELATIVE_MARGIN``.

    Raises:
        ValueError: bad shapes or arguments, an input smaller than the dilated kernel, a padding
            too large for reflect / circular, an unknown padding_mode or method, groups not
            dividing the channels, or a non-finite weight.
    """
    geometry = conv_geometry(
        tuple(weight.shape),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
    )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    weight = _real_float64(weight)
    if input_size is None:
        if method == "exact":
            raise ValueError("method='exact' needs an input_size")
        return with_margin(_all_sizes_norm(weight, geometry))
    input_size = tuple(int(n) for n in input_size)
    geometry.check_input_size(input_size)
    if method == "auto":
        method = "exact" if prefers_exact(geometry, input_size) else "fft"
    if method == "exact":
        return with_margin(_exact_norm(weight, geometry, input_size))
    return with_margin(_fft_norm(weight, geometry, input_size))


def conv_transpose_bound(
    weight: torch.Tensor,
    *,
    input_size: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    output_padding: int | tuple[int, ...] = 0,
    groups: int = 1,
) -> float:
    """Sound upper bound of the L2 operator norm of torch's conv_transpose1d / conv_transpose2d.

    A transposed convolution is the adjoint of the convolution with the same weight and arguments
    on its *output* size, followed by keeping its first ``input_size`` outputs (there are exactly
    that many when ``output_padding < stride``); an operator and its adjoint have the same norm and
    keeping outputs does not increase it, so :func:`conv_bound` of that convolution is a bound.

    Args:
        weight: ``(c_in, c_out / groups, *kernel)`` (torch's ConvTranspose layout, which is the
            layout of the adjoint convolution's weight).
        input_size: spatial size of the transposed convolution's inputs.
        stride, padding, dilation, output_padding, groups: as ``torch.nn.ConvTranspose1d`` / ``2d``.
    """
    dims = weight.dim() - 2
    stride, padding, dilation, output_padding = (
        _ints(value, dims, name, minimum)
        for value, name, minimum in (
            (stride, "stride", 1),
            (padding, "padding", 0),
            (dilation, "dilation", 1),
            (output_padding, "output_padding", 0),
        )
    )
    output_size = tuple(
        (n - 1) * s - 2 * p + d * (k - 1) + extra + 1
        for n, s, p, d, k, extra in zip(
            input_size, stride, padding, dilation, weight.shape[2:], output_padding, strict=True
        )
    )
    return conv_bound(
        weight, input_size=output_size, stride=stride, padding=padding, dilation=dilation, groups=groups
    )
