"""Convolution bounds: operator matrix vs torch, soundness on random configurations, tightness."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zoo.bounds import RELATIVE_MARGIN, conv_bound, conv_operator_matrix
from zoo.bounds.conv import PADDING_MODES, conv_geometry, prefers_exact


def _randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _true_norm(weight: torch.Tensor, input_size: tuple[int, ...], **conv) -> float:
    """Ground truth: largest singular value of the full dense operator (svd, float64)."""
    matrix = conv_operator_matrix(weight, input_size=input_size, **conv)
    return float(torch.linalg.svdvals(matrix)[0])


@st.composite
def conv_configs(draw) -> tuple[torch.Tensor, tuple[int, ...], dict]:
    """A valid random convolution: (weight, input size, torch conv keyword arguments)."""
    dims = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.sampled_from([1, 2, 3, 5])) for _ in range(dims))
    stride = tuple(draw(st.sampled_from([1, 2])) for _ in range(dims))
    dilation = tuple(draw(st.sampled_from([1, 2])) for _ in range(dims))
    groups = draw(st.sampled_from([1, 2, 4]))
    depthwise = draw(st.booleans())
    c_in_per_group = 1 if depthwise else draw(st.integers(1, 2))
    c_out_per_group = draw(st.integers(1, 2))
    paddings = [0, 1, 2, "valid"] + (["same"] if stride == (1,) * dims else [])
    conv = {
        "stride": stride,
        "dilation": dilation,
        "groups": groups,
        "padding": draw(st.sampled_from(paddings)),
        "padding_mode": draw(st.sampled_from(PADDING_MODES)),
    }
    input_size = tuple(draw(st.integers(5, 10)) for _ in range(dims))
    weight_shape = (groups * c_out_per_group, c_in_per_group, *kernel)
    try:
        conv_geometry(weight_shape, **conv).check_input_size(input_size)
    except ValueError:
        assume(False)
    weight = _randn(weight_shape, seed=draw(st.integers(0, 2**16)))
    return weight, input_size, conv


def _torch_conv(weight: torch.Tensor, **conv) -> torch.nn.Module:
    c_out, c_in_per_group, *kernel = weight.shape
    module_type = torch.nn.Conv1d if len(kernel) == 1 else torch.nn.Conv2d
    module = module_type(
        c_in_per_group * conv["groups"],
        c_out,
        tuple(kernel),
        bias=False,
        dtype=torch.float64,
        **conv,
    )
    with torch.no_grad():
        module.weight.copy_(weight)
    return module


def _examples(count: int) -> settings:
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@_examples(40)
@given(conv_configs())
def test_operator_matrix_is_torch_conv(config):
    weight, input_size, conv = config
    module = _torch_conv(weight, **conv)
    inputs = _randn((3, module.in_channels, *input_size), seed=0)
    matrix = conv_operator_matrix(weight, input_size=input_size, **conv)
    expected = module(inputs).flatten(1)
    torch.testing.assert_close(inputs.flatten(1) @ matrix.T, expected, rtol=1e-12, atol=1e-12)


def _check_every_method(config: tuple[torch.Tensor, tuple[int, ...], dict]) -> None:
    weight, input_size, conv = config
    truth = _true_norm(weight, input_size, **conv)
    exact = conv_bound(weight, input_size=input_size, method="exact", **conv)
    assert truth <= exact <= truth * (1 + RELATIVE_MARGIN) * (1 + 1e-10)
    assert conv_bound(weight, input_size=input_size, method="fft", **conv) >= truth
    assert conv_bound(weight, input_size=input_size, method="auto", **conv) >= truth


@_examples(150)
@given(conv_configs())
def test_every_method_is_sound(config):
    _check_every_method(config)


@pytest.mark.slow
@_examples(600)
@given(conv_configs())
def test_every_method_is_sound_thorough(config):
    _check_every_method(config)


@_examples(40)
@given(conv_configs())
def test_all_sizes_bound_is_sound_at_several_sizes(config):
    weight, _, conv = config
    bound = conv_bound(weight, input_size=None, **conv)
    geometry = conv_geometry(tuple(weight.shape), **conv)
    dims = len(geometry.kernel)
    smallest = tuple(geometry.min_input_size(d) for d in range(dims))
    for extra in (0, 1, 3, 6):
        input_size = tuple(n + extra for n in smallest)
        assert bound >= _true_norm(weight, input_size, **conv), input_size


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("padding", [0, 1, 2, 3])
def test_all_sizes_bound_covers_tiny_inputs(mode, padding):
    """Small inputs are where circular rows and reflected pixels repeat most."""
    weight = _randn((2, 2, 3), seed=padding)
    conv = {"padding": padding, "padding_mode": mode}
    bound = conv_bound(weight, input_size=None, **conv)
    geometry = conv_geometry(tuple(weight.shape), **conv)
    for n in range(geometry.min_input_size(0), 12):
        assert bound >= _true_norm(weight, (n,), **conv), n


CIRCULAR_TIGHT = [  # (kernel shape, input size, stride, groups)
    ((6, 6, 3, 3), (8, 8), 1, 1),
    ((4, 4, 3, 3), (12, 12), 2, 1),
    ((8, 2, 3, 3), (8, 8), 1, 4),
    ((8, 4, 5, 5), (12, 12), 2, 2),
    ((4, 4, 5), (32,), 2, 1),
]


@pytest.mark.parametrize(("shape", "input_size", "stride", "groups"), CIRCULAR_TIGHT)
def test_circular_fft_bound_is_tight(shape, input_size, stride, groups):
    weight = _randn(shape, seed=1)
    conv = {
        "stride": stride,
        "groups": groups,
        "padding": shape[-1] // 2,
        "padding_mode": "circular",
    }
    truth = _true_norm(weight, input_size, **conv)
    assert truth <= conv_bound(weight, input_size=input_size, method="fft", **conv) <= truth * 1.001


ZEROS_TIGHT = [  # (kernel shape, input size, stride, groups)
    ((3, 3, 3, 3), (24, 24), 1, 1),
    ((4, 4, 3, 3), (24, 24), 2, 1),
    ((4, 2, 3, 3), (24, 24), 2, 2),
    ((8, 2, 3), (64,), 1, 4),
    ((4, 4, 3), (64,), 2, 1),
    ((8, 4, 5), (64,), 2, 2),
]


@pytest.mark.parametrize(("shape", "input_size", "stride", "groups"), ZEROS_TIGHT)
def test_zero_padding_fft_bound_is_tight(shape, input_size, stride, groups):
    weight = _randn(shape, seed=1)
    conv = {"stride": stride, "groups": groups, "padding": shape[-1] // 2}
    exact = conv_bound(weight, input_size=input_size, method="exact", **conv)
    fft = conv_bound(weight, input_size=input_size, method="fft", **conv)
    assert exact <= fft <= exact * 1.01


def test_all_sizes_bound_is_close_to_the_infinite_input_norm():
    weight = _randn((6, 6, 3, 3), seed=2)
    everywhere = conv_bound(weight, input_size=None, padding=1)
    large = conv_bound(weight, input_size=(96, 96), padding=1, method="fft")
    assert large <= everywhere <= large * 1.005


def test_grouped_bound_is_the_max_over_groups_not_the_product():
    """orthogonium multiplies per-group bounds: 10 * 0.01 would certify ~0.1 for a norm ~30."""
    weight = torch.cat([10 * _randn((2, 2, 3, 3), seed=1), 0.01 * _randn((2, 2, 3, 3), seed=2)])
    conv = {"groups": 2, "padding": 1}
    per_group = [conv_bound(part, input_size=(8, 8), padding=1, method="fft") for part in weight.chunk(2)]
    truth = _true_norm(weight, (8, 8), **conv)
    bound = conv_bound(weight, input_size=(8, 8), method="fft", **conv)
    assert math.prod(per_group) < truth <= bound
    assert bound == pytest.approx(max(per_group), rel=1e-9)


def test_strides_are_not_ignored():
    """A stride-2 conv has a smaller norm than its stride-1 counterpart; the bound must see it."""
    weight = _randn((4, 4, 3, 3), seed=3)
    stride_two = conv_bound(weight, input_size=(32, 32), stride=2, padding=1, method="fft")
    stride_one = conv_bound(weight, input_size=(32, 32), stride=1, padding=1, method="fft")
    assert stride_two < 0.8 * stride_one


def test_auto_is_exact_for_small_inputs_and_fft_for_large():
    weight = _randn((4, 4, 3, 3), seed=4)
    for size, method in [((8, 8), "exact"), ((40, 40), "fft")]:
        auto = conv_bound(weight, input_size=size, padding=1)
        assert auto == conv_bound(weight, input_size=size, padding=1, method=method)


def test_auto_weighs_the_dense_work_of_all_groups():
    one_group = conv_geometry((4, 4, 3, 3), padding=1)
    depthwise = conv_geometry((64, 1, 3, 3), padding=1, groups=64)
    assert prefers_exact(one_group, (16, 16))  # one 1024 x 1024 matrix
    assert not prefers_exact(depthwise, (48, 48))  # 64 matrices of 2304 x 2304
    assert not prefers_exact(conv_geometry((1, 1, 3, 3)), (200, 200))  # 40000 columns


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_weights_are_converted_to_float64(dtype):
    weight = _randn((3, 2, 3, 3), seed=5).to(dtype)
    reference = conv_bound(weight.double(), input_size=(6, 6), padding=1)
    assert conv_bound(weight, input_size=(6, 6), padding=1) == reference


def test_module_weight_and_arguments_are_accepted_as_torch_stores_them():
    module = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid", dilation=(1, 2), groups=2)
    conv = {
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
        "padding_mode": module.padding_mode,
    }
    bound = conv_bound(module.weight, input_size=torch.Size([9, 9]), **conv)
    assert bound >= _true_norm(module.weight.detach().double(), (9, 9), **conv)


def test_exact_method_carries_the_margin():
    weight = _randn((3, 3, 3, 3), seed=6)
    truth = _true_norm(weight, (7, 7), padding=1)
    exact = conv_bound(weight, input_size=(7, 7), padding=1, method="exact")
    assert exact == pytest.approx(truth * (1 + RELATIVE_MARGIN), rel=1e-12)


@pytest.mark.parametrize(
    ("weight_shape", "kwargs", "message"),
    [
        ((2, 2), {"input_size": (5,)}, "1, 2 or 3 spatial dims"),
        ((2, 2, 3, 3, 3, 3), {"input_size": (5, 5, 5, 5)}, "1, 2 or 3 spatial dims"),
        ((3, 2, 3, 3), {"input_size": (8, 8), "groups": 2}, "groups"),
        ((2, 2, 3, 3), {"input_size": (8, 8), "padding_mode": "mirror"}, "padding_mode"),
        ((2, 2, 3, 3), {"input_size": (8, 8), "method": "svd"}, "method"),
        ((2, 2, 3, 3), {"input_size": (2, 2)}, "smaller than the dilated kernel"),
        ((2, 2, 3, 3), {"input_size": (4, 4), "dilation": 2}, "smaller than the dilated kernel"),
        ((2, 2, 3, 3), {"input_size": (8,)}, "spatial dims"),
        ((2, 2, 3, 3), {"input_size": (8, 8), "stride": 0}, "stride"),
        ((2, 2, 3, 3), {"input_size": (8, 8), "stride": 2, "padding": "same"}, "same"),
        ((2, 2, 3, 3), {"input_size": (8, 8), "padding": "full"}, "padding"),
        ((2, 2, 3, 3), {"input_size": (3, 3), "padding": 3, "padding_mode": "reflect"}, "reflect"),
        (
            (2, 2, 3, 3),
            {"input_size": (2, 2), "padding": 3, "padding_mode": "circular"},
            "circular",
        ),
        ((2, 2, 3, 3), {"input_size": None, "method": "exact"}, "input_size"),
    ],
)
def test_bad_arguments_raise(weight_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv_bound(torch.ones(weight_shape), **kwargs)


def test_non_finite_weight_raises():
    weight = torch.ones(2, 2, 3, 3)
    weight[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        conv_bound(weight, input_size=(8, 8))


@pytest.mark.parametrize("padding_mode", ["zeros", "circular", "reflect"])
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), ((1, 2, 1), 1), (1, (2, 1, 1))])
def test_3d_convolutions_are_bounded_by_every_method(padding_mode, stride, dilation):
    """Conv3d: the exact method is the norm of torch's operator, the FFT one bounds it."""
    torch.manual_seed(5)
    weight = torch.randn(3, 2, 3, 2, 3, dtype=torch.float64)
    arguments = {"input_size": (5, 4, 6), "stride": stride, "padding": 1, "dilation": dilation}
    arguments["padding_mode"] = padding_mode
    matrix = conv_operator_matrix(weight, **arguments)
    inputs = torch.randn(2, 2, 5, 4, 6, dtype=torch.float64)
    module = torch.nn.Conv3d(
        2, 3, (3, 2, 3), stride, 1, dilation, bias=False, padding_mode=padding_mode
    ).double()
    with torch.no_grad():
        module.weight.copy_(weight)
        torch.testing.assert_close((matrix @ inputs.flatten(1).T).T, module(inputs).flatten(1))
    exact = float(torch.linalg.matrix_norm(matrix, 2))
    assert conv_bound(weight, method="exact", **arguments) == pytest.approx(
        exact * (1 + RELATIVE_MARGIN), rel=1e-9
    )
    assert exact <= conv_bound(weight, method="fft", **arguments)
