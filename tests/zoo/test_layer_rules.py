"""What the layer table does not show: the building blocks of the parametrizations checked against
brute force, the certificate rules of the new modules on weights they were not designed for,
BatchReNorm2d, the folding hook, and the errors that keep a layer from being misused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from layer_checks import adjoint_residual, jacobian_matrix
from torch import nn
from torch.func import jacrev

from zoo.certify import network_bound
from zoo.fold import fold, is_folded
from zoo.layers import (
    AOLConv2d,
    BatchCentering,
    BatchLipNorm,
    BatchReNorm2d,
    ConvexResidual,
    FullSort,
    GroupSort,
    HouseHolder,
    InvertibleDownSampling,
    InvertibleUpSampling,
    LayerCentering,
    MaxMin,
    OrthogonalConv2d,
    Residual,
    ScaledAdaptiveAvgPool2d,
    SLLConv2d,
    SpectralConv2d,
    SpectralLinear,
    aol,
    fold_batchrenorm,
    orthogonal,
    spectral_bjorck,
)
from zoo.layers.aol import gram_abs_row_sums
from zoo.layers.orthogonal import compose_kernels
from zoo.layers.spectral import bjorck_orthonormalize


def jacobian_norm(module: nn.Module, shape: tuple[int, ...], points: int = 4) -> float:
    """Largest Jacobian spectral norm of a float64 copy of ``module`` at random points."""
    module = module.double().eval()
    norms = []
    for _ in range(points):
        norms.append(float(torch.linalg.matrix_norm(jacobian_matrix(module, shape), ord=2)))
    return max(norms)


# --- building blocks against brute force ---------------------------------------------------------


def test_gram_row_sums_of_a_dense_layer():
    weight = torch.randn(5, 7, dtype=torch.float64)
    q = torch.rand(7, dtype=torch.float64) + 0.5
    gram = (weight.T @ weight).abs()
    torch.testing.assert_close(gram_abs_row_sums(weight), gram.sum(1))
    torch.testing.assert_close(gram_abs_row_sums(weight, q=q), (gram * q).sum(1) / q)


def test_gram_row_sums_of_a_grouped_conv_are_those_of_its_dense_gram():
    """On a circular grid of 5 >= 2k - 1 pixels every relative shift of two 3x3 windows appears once, so
    row (channel i, pixel 0) of the dense Gram M^T M holds every |P_ij(shift)| exactly once."""
    torch.manual_seed(0)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64)

    def conv(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x.unsqueeze(0), (1, 1, 1, 1), mode="circular"), weight, groups=2).squeeze(0)

    matrix = jacrev(conv)(torch.zeros(4, 5, 5, dtype=torch.float64)).reshape(6 * 25, 4 * 25)
    gram = (matrix.T @ matrix).abs().view(4, 25, 4 * 25)
    torch.testing.assert_close(gram_abs_row_sums(weight, groups=2), gram[:, 0].sum(-1))


@pytest.mark.parametrize("stride", [1, 2])
def test_composed_kernel_computes_the_composition(stride):
    torch.manual_seed(1)
    first, second = torch.randn(5, 3, 2, 3), torch.randn(4, 5, 2, 2)
    x = torch.randn(2, 3, 9, 10)
    expected = F.conv2d(F.conv2d(x, first), second, stride=stride)
    torch.testing.assert_close(F.conv2d(x, compose_kernels(first, second), stride=stride), expected)
    first_1d, second_1d = torch.randn(5, 3, 2), torch.randn(4, 5, 3)
    expected_1d = F.conv1d(F.conv1d(x[..., 0], first_1d), second_1d, stride=stride)
    torch.testing.assert_close(
        F.conv1d(x[..., 0], compose_kernels(first_1d, second_1d), stride=stride), expected_1d
    )


def test_bjorck_tolerance_stops_early_at_an_orthonormal_matrix():
    torch.manual_seed(2)
    matrix = torch.randn(12, 7, dtype=torch.float64)
    matrix = matrix / torch.linalg.matrix_norm(matrix, ord=2)
    result = bjorck_orthonormalize(matrix, iters=100, tol=1e-8)
    used = next(n for n in range(1, 101) if torch.equal(bjorck_orthonormalize(matrix, n), result))
    assert used < 100
    torch.testing.assert_close(result.T @ result, torch.eye(7, dtype=torch.float64), atol=1e-7, rtol=0)


def test_spectral_stays_below_lip_when_folded_right_after_a_large_step():
    """The power-iteration vector lags the weights (and is frozen in eval mode, where folding
    happens); after a step that multiplies the norm, the Gram-iteration floor of ``sigma`` keeps
    Bjorck's input below 2, so the folded weight is finite and within ``lip``."""
    torch.manual_seed(9)
    layer = SpectralLinear(200, 30)
    with torch.no_grad():
        layer.parametrizations.weight.original.add_(torch.ones(30, 200))  # norm 77, the old one ~1
    singular = torch.linalg.svdvals(fold(layer).weight.detach().double())
    assert torch.isfinite(singular).all() and float(singular.max()) <= 1 + 1e-4


# --- certificate rules on weights they were not designed for -------------------------------------


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "conv2d-flipped"])
@pytest.mark.parametrize(("noise", "sign"), [(0.0, -1.0), (0.05, -1.0), (0.3, 1.0)])
def test_residual_rule_is_sound_for_any_weights(kind, noise, sign):
    torch.manual_seed(3)
    block, shape = adjoint_residual(kind, noise, sign)
    bound, _ = network_bound(block, shape)
    assert bound >= jacobian_norm(block, shape)


def test_residual_rule_is_tight_for_folded_sll_and_general_otherwise():
    torch.manual_seed(4)
    sll = fold(SLLConv2d(4, 8))
    assert network_bound(sll, (4, 6, 6))[0] <= 1 + 1e-4
    # a geometry that is not an adjoint pair (1x1 outer kernel) gets the triangle inequality
    other = Residual(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 4, 1)))
    branch, _ = network_bound(other.branch, (4, 6, 6))
    assert network_bound(other, (4, 6, 6))[0] == 1 + branch


def test_convex_residual_rule_uses_the_stored_alpha():
    block = fold(ConvexResidual(nn.Sequential(OrthogonalConv2d(4, 4, 3, padding=1), MaxMin())))
    with torch.no_grad():
        block.alpha.fill_(1.5)  # outside [0, 1]: no longer 1-Lipschitz, and the certificate says so
    bound, layers = network_bound(block, (4, 5, 5))
    assert bound == pytest.approx(0.5 + 1.5 * 1.0, rel=1e-5)
    assert [layer.op for layer in layers] == ["ConvexResidual"]
    assert bound >= jacobian_norm(block, (4, 5, 5))


def test_conv_transpose_rule_is_the_adjoint_conv_norm():
    torch.manual_seed(5)
    layer = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
    exact = jacobian_norm(layer, (4, 4, 4), points=1)
    bound, _ = network_bound(layer.float(), (4, 4, 4))
    assert exact <= bound <= exact * (1 + 1e-5)


def test_adaptive_pool_rule_is_exact():
    pool = ScaledAdaptiveAvgPool2d((3, 2))
    bound, _ = network_bound(pool, (2, 7, 5))
    assert bound == pytest.approx(jacobian_norm(pool, (2, 7, 5), points=1), rel=1e-5)


# --- BatchReNorm2d and the centering layers --------------------------------------------------------


def test_batch_lip_norm_divides_by_the_largest_channel_deviation_and_is_certified_by_it():
    torch.manual_seed(8)
    layer = BatchLipNorm(3, momentum=1.0)  # the running statistics become the last batch's
    x = torch.randn(16, 3, 4, 4) * torch.tensor([0.5, 2.0, 1.0]).view(1, 3, 1, 1) + 3.0
    y = layer(x)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    deviation = (x.var(dim=(0, 2, 3), unbiased=False) + layer.eps).sqrt().max()
    torch.testing.assert_close(y, (x - mean) / deviation)
    layer.eval()
    torch.testing.assert_close(layer(x), y)  # eval uses the running statistics, now the batch's
    bound, _ = network_bound(layer, (3, 4, 4))
    assert bound == pytest.approx(float(1 / deviation), rel=1e-6)
    assert bound == pytest.approx(jacobian_norm(layer, (3, 4, 4), points=1), rel=1e-6)


def test_batchrenorm_starts_as_batchnorm():
    torch.manual_seed(6)
    renorm, norm = BatchReNorm2d(3, momentum=0.1), nn.BatchNorm2d(3, momentum=0.1)
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    torch.testing.assert_close(renorm(x), norm(x))
    torch.testing.assert_close(renorm.running_mean, norm.running_mean)
    torch.testing.assert_close(renorm.running_var, norm.running_var)


def test_batchrenorm_without_clipping_uses_the_running_statistics():
    """With r and d unclipped, ``(x - mu_B) / sigma_B * r + d = (x - mu) / sigma``: training output
    equals the eval-mode output of the statistics before the step."""
    torch.manual_seed(7)
    renorm = BatchReNorm2d(3, r_max=100.0, d_max=100.0)
    with torch.no_grad():
        renorm.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        renorm.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
        renorm.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
    x = torch.randn(8, 3, 4, 4)
    expected = renorm.eval()(x)
    torch.testing.assert_close(renorm.train()(x), expected)


def test_batchrenorm_folds_to_a_depthwise_conv_and_into_the_previous_conv():
    torch.manual_seed(8)
    conv, renorm = nn.Conv2d(2, 3, 3, padding=1), BatchReNorm2d(3, r_max=3.0, d_max=5.0)
    optimizer = torch.optim.SGD([*conv.parameters(), *renorm.parameters()], lr=0.1)
    for _ in range(3):
        loss = renorm(conv(torch.randn(8, 2, 5, 5))).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    renorm.eval()
    x = torch.randn(4, 2, 5, 5)
    with torch.no_grad():
        expected = renorm(conv(x))
        merged = fold_batchrenorm(conv, renorm)
        torch.testing.assert_close(merged(x), expected)
        folded = fold(nn.Sequential(conv, renorm))
        torch.testing.assert_close(folded(x), expected)
    assert type(folded[1]) is nn.Conv2d and folded[1].groups == 3
    bound, _ = network_bound(folded[1], (3, 5, 5))
    assert bound == pytest.approx(renorm.lipschitz_factor, rel=1e-5)
    assert network_bound(merged, (2, 5, 5))[0] >= jacobian_norm(merged, (2, 5, 5), points=1)


def test_centering_layers():
    x = torch.randn(6, 3, 4, 4) + 3
    layer = LayerCentering(3)
    torch.testing.assert_close(layer(x).mean(dim=(2, 3)), torch.zeros(6, 3), atol=1e-6, rtol=0)
    batch = BatchCentering(3, momentum=1.0)
    torch.testing.assert_close(batch(x).mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.running_mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(batch.eval()(x), x - x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1))


# --- activations and resampling --------------------------------------------------------------------


def test_sorting_activations_and_householder_at_start():
    x = torch.randn(5, 8, 3)
    torch.testing.assert_close(GroupSort(4)(x), x.unflatten(1, (2, 4)).sort(dim=2).values.flatten(1, 2))
    torch.testing.assert_close(FullSort()(x), x.sort(dim=1).values)
    torch.testing.assert_close(HouseHolder(8)(x), MaxMin()(x))


def test_invertible_resampling_round_trip():
    x = torch.randn(2, 3, 4, 6)
    down = InvertibleDownSampling(2)(x)
    assert down.shape == (2, 12, 2, 3)
    torch.testing.assert_close(InvertibleUpSampling(2)(down), x)


def test_scaled_global_average_is_sum_over_sqrt_area():
    x = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(ScaledAdaptiveAvgPool2d(1)(x), x.sum(dim=(2, 3), keepdim=True) / 24**0.5)


# --- folding hook and misuse ------------------------------------------------------------------------


def test_fold_replaces_hooked_modules_and_certify_refuses_unfolded():
    model = nn.Sequential(SLLConv2d(2, 4), nn.Sequential(BatchReNorm2d(2)))
    assert not is_folded(model)
    with pytest.raises(ValueError, match="fold it"):
        network_bound(model, (2, 4, 4))
    folded = fold(model)
    assert is_folded(folded) and folded is model
    assert type(folded[0]) is Residual and type(folded[1][0]) is nn.Conv2d


@pytest.mark.parametrize(
    ("constrain", "layer", "error"),
    [
        (aol, nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), ValueError),
        (aol, nn.Conv3d(2, 2, 3), TypeError),
        (orthogonal, nn.Conv2d(2, 2, 3, dilation=2), ValueError),
        (orthogonal, nn.Conv2d(2, 4, (3, 1), stride=2), ValueError),
        (spectral_bjorck, nn.ConvTranspose2d(2, 2, 3, groups=2), ValueError),
        (spectral_bjorck, nn.Conv2d(2, 2, 3, padding=1, padding_mode="replicate"), ValueError),
    ],
)
def test_constraints_refuse_layers_they_are_not_sound_for(constrain, layer, error):
    with pytest.raises(error):
        constrain(layer)


def test_constructors_take_the_torch_arguments_and_options():
    conv = SpectralConv2d(3, 4, 3, stride=2, bias=False, lip=0.5, options={"bjorck_iters": 3})
    assert conv.stride == (2, 2) and conv.bias is None
    assert conv.parametrizations.weight[0].bjorck_iters == 3 and conv.parametrizations.weight[0].lip == 0.5
    assert AOLConv2d(3, 6, 3, groups=3).parametrizations.weight[0].groups == 3
    block = OrthogonalConv2d(3, 6, 3, stride=2, padding=1)
    assert {"parametrizations.weight.original0", "parametrizations.weight.original1"} <= set(
        block.state_dict()
    )
