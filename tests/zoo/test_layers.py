"""The first layers: each is as Lipschitz as designed, checked on its dense matrix (autograd
Jacobian, independent of the bound engine) before and after optimiser steps."""

from __future__ import annotations

import pytest
import torch
from layer_checks import jacobian_matrix
from torch import nn

from zoo.fold import fold, is_folded
from zoo.layers import GroupSort2, MaxMin, ScaledAvgPool2d, SpectralConv2d, SpectralLinear
from zoo.layers.spectral import bjorck_orthonormalize

TOL = 1e-4


def dense_matrix(layer: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Jacobian of ``layer`` at a random point, as a (out_numel, in_numel) float64 matrix."""
    return jacobian_matrix(layer.double(), input_shape)


def largest_singular_value(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix.detach(), ord=2))


def _train_a_few_steps(layer: nn.Module, input_shape: tuple[int, ...], steps: int = 5) -> None:
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(steps):
        loss = -layer(torch.randn(4, *input_shape)).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("lip", [1.0, 0.5, 2.0])
def test_spectral_linear_is_orthonormal_scaled_by_lip(lip):
    torch.manual_seed(0)
    layer = SpectralLinear(12, 7, lip=lip)
    for _ in range(2):
        singular = torch.linalg.svdvals(layer.weight.detach().double())
        assert float(singular.max()) <= lip * (1 + TOL)
        assert torch.allclose(singular, torch.full_like(singular, lip), atol=1e-3 * lip)
        _train_a_few_steps(layer, (12,))


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "kernel", "stride", "padding"),
    [(1, 8, 3, 1, 1), (4, 4, 3, 1, 1), (3, 6, 2, 2, 0), (4, 8, 5, 1, 2), (6, 4, 3, 2, 1)],
)
def test_spectral_conv_operator_norm_at_most_lip(in_ch, out_ch, kernel, stride, padding):
    torch.manual_seed(1)
    layer = SpectralConv2d(in_ch, out_ch, kernel, stride=stride, padding=padding)
    shape = (in_ch, 6, 6)
    for _ in range(2):
        layer.eval()
        norm = largest_singular_value(dense_matrix(fold_copy(layer), shape))
        assert norm <= 1 + TOL
        layer.train()
        _train_a_few_steps(layer, shape)


def fold_copy(layer: nn.Conv2d) -> nn.Conv2d:
    """A plain nn.Conv2d holding the weight the parametrized ``layer`` currently computes."""
    plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
    with torch.no_grad():
        plain.weight.copy_(layer.weight)
        plain.bias.copy_(layer.bias)
    return plain


def test_bjorck_converges_to_orthonormal():
    torch.manual_seed(2)
    matrix = torch.randn(20, 9, dtype=torch.float64)
    matrix = matrix / torch.linalg.matrix_norm(matrix, ord=2)
    result = bjorck_orthonormalize(matrix, iters=40)
    assert torch.allclose(result.T @ result, torch.eye(9, dtype=torch.float64), atol=1e-6)


def test_maxmin_and_groupsort2_are_sorting_permutations():
    x = torch.randn(5, 6, 3, 3)
    grouped = GroupSort2().eval()(x).unflatten(1, (3, 2))
    expected = x.unflatten(1, (3, 2)).sort(dim=2).values
    assert torch.equal(grouped, expected)
    a, b = x.chunk(2, dim=1)
    assert torch.equal(MaxMin().eval()(x), torch.cat((torch.maximum(a, b), torch.minimum(a, b)), 1))


@pytest.mark.parametrize("activation", [GroupSort2, MaxMin])
def test_training_mode_activations_compute_the_same_permutation(activation):
    """With minmax_through_relu, training mode computes min / max through a ReLU (a cheaper backward pass):
    the same values up to one rounding, and the gradient of the same permutation."""
    x = torch.randn(64, 8, 5, 5, requires_grad=True)
    x.data[:, 1] = x.data[:, 0]  # ties get one of the two equal values either way
    weights = torch.randn(64, 8, 5, 5)
    eval_out = activation().eval()(x)
    (eval_grad,) = torch.autograd.grad((weights * eval_out).sum(), x)
    through_relu = activation().train()
    through_relu.minmax_through_relu = True
    train_out = through_relu(x)
    (train_grad,) = torch.autograd.grad((weights * train_out).sum(), x)
    assert not torch.equal(train_out, eval_out)  # the ReLU path is taken: some pairs round
    # without minmax_through_relu (the default), training mode computes exactly what eval mode does
    assert torch.equal(activation().train()(x), eval_out)
    # b - (b - a) rounds at the scale of the larger of the pair (a unit in the last place), and so do
    # the gradients, sums of the two output gradients
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=2**-23 * float(x.detach().abs().max()))
    atol = 2**-22 * float(weights.abs().max())
    torch.testing.assert_close(train_grad[:, 2:], eval_grad[:, 2:], rtol=0, atol=atol)


@pytest.mark.parametrize("activation", [GroupSort2(), MaxMin()])
def test_activations_are_1_lipschitz_and_norm_preserving(activation):
    torch.manual_seed(3)
    x, y = torch.randn(100, 8), torch.randn(100, 8)
    assert torch.all((activation(x) - activation(y)).norm(dim=1) <= (x - y).norm(dim=1) + 1e-6)
    assert torch.allclose(activation(x).norm(dim=1), x.norm(dim=1))


def test_activations_reject_odd_channels():
    with pytest.raises(ValueError, match="divisible by 2"):
        GroupSort2()(torch.randn(2, 3))


@pytest.mark.parametrize(("kernel", "stride", "expected"), [(2, 2, 1.0), (4, 4, 1.0), (3, 1, None)])
def test_scaled_avg_pool_norm(kernel, stride, expected):
    pool = ScaledAvgPool2d(kernel, stride)
    norm = largest_singular_value(dense_matrix(pool, (2, 8, 8)))
    if expected is not None:
        assert norm == pytest.approx(expected, rel=1e-9)
    else:  # overlapping windows: larger than 1, which only a computed certificate reveals
        assert norm > 1.0


def test_fold_matches_parametrized_model_and_leaves_plain_modules():
    torch.manual_seed(4)
    model = nn.Sequential(
        SpectralConv2d(1, 8, 3, padding=1), GroupSort2(), nn.Flatten(), SpectralLinear(8 * 36, 10)
    )
    _train_a_few_steps(model, (1, 6, 6))
    x = torch.randn(16, 1, 6, 6)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        folded = fold(model)
        assert is_folded(folded)
        assert type(folded[0]) is nn.Conv2d and type(folded[3]) is nn.Linear
        torch.testing.assert_close(folded(x), expected, atol=1e-6, rtol=0)
    assert set(folded.state_dict()) == {"0.weight", "0.bias", "3.weight", "3.bias"}
