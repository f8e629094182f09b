"""Empirical Lipschitz constant: a lower bound that reaches the truth on simple maps."""

from __future__ import annotations

import torch

from zoo.bounds import conv_bound, empirical_lipschitz, matrix_norm_bound


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_linear_map_reaches_its_norm_and_never_exceeds_it():
    layer = torch.nn.Linear(12, 7)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(7, 12, generator=_generator(0)))
    norm = float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    found = empirical_lipschitz(layer, torch.randn(6, 12, generator=_generator(1)), steps=20)
    assert 0.99 * norm <= found <= norm * (1 + 1e-9)


def test_orthogonal_map_gives_its_norm_up_to_rounding():
    q, _ = torch.linalg.qr(torch.randn(9, 9, generator=_generator(2), dtype=torch.float64))
    layer = torch.nn.Linear(9, 9, bias=False)
    with torch.no_grad():
        layer.weight.copy_(q)  # float32 rounding: the norm is 1 only to about 1e-7
    norm = float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    found = empirical_lipschitz(layer, torch.randn(4, 9, generator=_generator(3)), steps=10)
    assert abs(norm - 1) < 1e-6
    assert norm * (1 - 1e-9) <= found <= norm * (1 + 1e-9)


class _MaxMin(torch.nn.Module):
    """Sorts channel pairs: 1-Lipschitz (a permutation on each linear region)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def _one_lipschitz_net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        _MaxMin(),
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1),
        _MaxMin(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 5),
    )
    sizes = {0: (6, 6), 2: (6, 6)}
    with torch.no_grad():
        for index, module in enumerate(net):
            if isinstance(module, torch.nn.Conv2d):
                bound = conv_bound(
                    module.weight,
                    input_size=sizes[index],
                    stride=module.stride,
                    padding=module.padding,
                )
                module.weight /= bound
            elif isinstance(module, torch.nn.Linear):
                module.weight /= matrix_norm_bound(module.weight)
    return net


def test_certified_one_lipschitz_net_stays_below_one():
    net = _one_lipschitz_net()
    found = empirical_lipschitz(net, torch.randn(8, 2, 6, 6, generator=_generator(4)), steps=30)
    assert 0 < found <= 1.0


def test_model_is_left_untouched_and_result_is_reproducible():
    net = _one_lipschitz_net().train()
    before = {name: value.clone() for name, value in net.state_dict().items()}
    inputs = torch.randn(4, 2, 6, 6, generator=_generator(5))
    first = empirical_lipschitz(net, inputs, steps=5, seed=7)
    assert empirical_lipschitz(net, inputs, steps=5, seed=7) == first
    assert net.training
    assert all(p.dtype == torch.float32 for p in net.parameters())
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
