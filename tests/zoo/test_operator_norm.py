"""The operator-norm normalisation of spectral convolutions: its training-time estimate against the
exact norm of the dense operator (autograd Jacobian, independent of the bound engine), its eval-mode
weight certified at ``lip``, its gradient, its resumability, and its errors."""

from __future__ import annotations

import pytest
import torch
from layer_checks import jacobian_matrix
from torch import nn

from zoo.certify import certify
from zoo.fold import fold
from zoo.layers import ConvOperatorNorm, SpectralConv2d, spectral_bjorck
from zoo.layers.operator_norm import WARMUP_ITERATIONS
from zoo.models import build

GEOMETRIES = {
    "zeros": dict(padding=1),
    "stride2": dict(stride=2, padding=1),
    "circular": dict(padding=1, padding_mode="circular"),
    "groups": dict(padding=1, groups=2),
    "dilation-valid": dict(dilation=2),
}


def exact_norm(conv: nn.Module, weight: torch.Tensor, input_size: tuple[int, ...]) -> float:
    """Largest singular value of ``conv`` with ``weight`` (bias removed), from its float64 Jacobian."""
    plain = type(conv)(**{key: getattr(conv, key) for key in CONV_ARGUMENTS}, bias=False).double()
    with torch.no_grad():
        plain.weight.copy_(weight)
    return float(torch.linalg.matrix_norm(jacobian_matrix(plain, (conv.in_channels, *input_size)), ord=2))


CONV_ARGUMENTS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_training_estimate_approaches_the_exact_norm_from_below(geometry):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **GEOMETRIES[geometry])
    normalize = ConvOperatorNorm(conv, (7, 7)).train()
    weight = conv.weight.detach()
    exact = exact_norm(conv, weight, (7, 7))
    for _ in range(200):
        normalized = normalize(weight)
    estimate = float(weight.norm() / normalized.norm())
    assert estimate <= exact * (1 + 1e-6)
    assert estimate == pytest.approx(exact, rel=1e-3)  # random kernels: close top singular values


@pytest.mark.parametrize("lip", [1.0, 0.5])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_eval_mode_weight_is_certified_at_lip_and_exactly_that_tight(geometry, lip):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, **GEOMETRIES[geometry])
    normalize = ConvOperatorNorm(conv, (7, 7), lip=lip).eval()
    normalized = normalize(conv.weight.detach())
    # the bound engine's relative margin is 1e-6: the exact norm sits just below lip
    assert exact_norm(conv, normalized, (7, 7)) == pytest.approx(lip, rel=1e-5)
    assert exact_norm(conv, normalized, (7, 7)) <= lip


def test_operator_norm_makes_a_spectral_conv_larger_than_the_overlap_factor():
    """The point of the option: after Bjorck the matrix view is orthonormal; dividing by 3 leaves the
    conv well below 1, dividing by its operator norm puts it at 1."""
    torch.manual_seed(2)
    overlap = SpectralConv2d(8, 8, 3, padding=1).eval()
    torch.manual_seed(2)
    operator = SpectralConv2d(8, 8, 3, padding=1, options={"conv_norm": "operator", "input_size": (8, 8)})
    operator.eval()
    assert torch.equal(
        overlap.parametrizations.weight.original, operator.parametrizations.weight.original
    )  # the same raw weight
    assert exact_norm(overlap, overlap.weight, (8, 8)) < 0.7
    assert exact_norm(operator, operator.weight, (8, 8)) == pytest.approx(1.0, rel=1e-5)


def test_the_normalised_weight_is_scale_invariant_so_its_gradient_is_orthogonal_to_the_weight():
    """W / sigma(W) does not change when W is scaled, so the gradient of any loss of it is
    orthogonal to W: this holds only if sigma's own gradient flows (sigma(c W) = c sigma(W))."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    normalize = ConvOperatorNorm(conv, (6, 6)).train()
    weight = conv.weight.detach().clone().requires_grad_()
    loss = (normalize(weight) * torch.randn_like(weight)).sum()
    (grad,) = torch.autograd.grad(loss, weight)
    weight = weight.detach()
    assert abs(float((grad * weight).sum())) <= 1e-5 * float(grad.norm() * weight.norm())
    assert float(grad.norm()) > 0


def test_warmup_once_then_power_iters_per_step_and_a_resumed_state_repeats_the_steps():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    weight = conv.weight.detach()
    first = ConvOperatorNorm(conv, (6, 6), generator=torch.Generator().manual_seed(0)).train()
    assert not bool(first.warmed)
    first(weight)
    assert bool(first.warmed)
    saved = {key: value.clone() for key, value in first.state_dict().items()}
    after_one_more = first(weight)

    resumed = ConvOperatorNorm(conv, (6, 6), generator=torch.Generator().manual_seed(9)).train()
    resumed.load_state_dict(saved)
    assert torch.equal(resumed(weight), after_one_more)
    # a fresh module's first forward takes WARMUP_ITERATIONS steps, a warmed one power_iters (1)
    fresh = ConvOperatorNorm(conv, (6, 6), generator=torch.Generator().manual_seed(0)).train()
    stepwise = ConvOperatorNorm(conv, (6, 6), generator=torch.Generator().manual_seed(0)).train()
    stepwise.warmed.fill_(True)
    fresh(weight)
    for _ in range(WARMUP_ITERATIONS):
        stepwise(weight)
    assert torch.equal(fresh.v, stepwise.v)


def test_a_lipconv_with_operator_norm_certifies_at_1_where_the_overlap_factor_cannot():
    torch.manual_seed(5)
    options = dict(widths=(8, 16), dense=(32,), pool="l2", pool_from=0)
    operator = build("lipconv", input_shape=(1, 12, 12), num_classes=4, conv_norm="operator", **options)
    certificate = certify(fold(operator), (1, 12, 12))
    convs = [layer.bound for layer in certificate.layers if layer.op == "Conv2d"]
    assert convs == pytest.approx([1.0, 1.0], rel=2e-6)
    torch.manual_seed(5)
    overlap = build("lipconv", input_shape=(1, 12, 12), num_classes=4, **options)
    overlap_convs = [
        layer.bound for layer in certify(fold(overlap), (1, 12, 12)).layers if layer.op == "Conv2d"
    ]
    assert max(overlap_convs) <= 1 and overlap_convs[1] < 0.8  # the 8 -> 16 conv loses a quarter


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="needs the input_size"):
        spectral_bjorck(nn.Conv2d(2, 2, 3), conv_norm="operator")
    with pytest.raises(ValueError, match="not transposed convolutions"):
        spectral_bjorck(nn.ConvTranspose2d(2, 2, 3), conv_norm="operator", input_size=(5, 5))
    with pytest.raises(ValueError, match="unknown conv_norm 'exact'"):
        spectral_bjorck(nn.Conv2d(2, 2, 3), conv_norm="exact")
    with pytest.raises(ValueError, match=r"input_size must be 2 positive sizes for this conv, got \(5,\)"):
        ConvOperatorNorm(nn.Conv2d(2, 2, 3), (5,))
    with pytest.raises(ValueError, match="option of the 'spectral' family, not 'aol'"):
        build("lipconv", input_shape=(1, 8, 8), num_classes=2, family="aol", conv_norm="operator")
    with pytest.raises(ValueError, match="unknown pool 'max'"):
        build("lipconv", input_shape=(1, 8, 8), num_classes=2, pool="max")
