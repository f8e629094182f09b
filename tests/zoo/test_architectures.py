"""Every architecture, for digits (1x8x8), MNIST (1x28x28) and CIFAR (3x32x32) inputs: builds, trains
one step, folds to the plain architecture (same state-dict keys, same outputs), and its certificate
is at least an empirical lower estimate of its Lipschitz constant."""

from __future__ import annotations

import pytest
import torch
from architecture_cases import SHAPES, SMALL, VARIANTS
from torch.nn.utils import parametrize

from zoo.bounds import empirical_lipschitz
from zoo.certify import network_bound
from zoo.fold import fold
from zoo.models import ARCHITECTURES, build, check_options


def check_architecture(name: str, shape: tuple[int, ...], options: dict) -> None:
    torch.manual_seed(0)
    model = build(name, input_shape=shape, num_classes=10, **options)
    x, labels = torch.rand(8, *shape), torch.randint(0, 10, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(x), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    model.eval()
    with torch.no_grad():
        expected = model(x)
    folded = fold(model)
    plain = build(name, input_shape=shape, num_classes=10, parametrized=False, **options).eval()
    plain.load_state_dict(folded.state_dict(), strict=True)
    # the folded model is the plain network, module for module (so it costs what the plain one costs)
    assert [type(m) for m in folded.modules()] == [type(m) for m in plain.modules()]
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=0)
    bound, _ = network_bound(plain, shape)
    lower = empirical_lipschitz(plain, x[:1], steps=3)
    assert 0 < lower <= bound


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=["8x8", "28x28"])
def test_architecture_trains_folds_and_certifies(name, shape):
    check_architecture(name, shape, SMALL[name])


@pytest.mark.parametrize(("name", "variant", "options"), VARIANTS, ids=[f"{n}-{v}" for n, v, _ in VARIANTS])
def test_architecture_variant_trains_folds_and_certifies(name, variant, options):
    check_architecture(name, SHAPES[0], options)


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_on_cifar_shape(name):
    check_architecture(name, SHAPES[2], SMALL[name])


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES, ids=["8x8", "28x28", "32x32"])
def test_default_architecture_builds_in_both_modes_with_the_same_keys(name, shape):
    trained = build(name, input_shape=shape, num_classes=10)
    plain = build(name, input_shape=shape, num_classes=10, parametrized=False)
    assert set(fold(trained).state_dict()) == set(plain.state_dict())
    assert plain(torch.rand(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name", ["lipconv", "lipmlp"])
def test_orthogonal_init_makes_each_raw_weight_orthogonal_and_bjorck_options_reach_the_layers(name):
    torch.manual_seed(0)
    options = {**SMALL[name], "init": "orthogonal", "bjorck_iters": 7, "bjorck_tol": 1e-3}
    model = build(name, input_shape=(1, 8, 8), num_classes=10, **options)
    constrained = [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(constrained) == len(SMALL[name].get("widths", ())) + len(SMALL[name].get("dense", ())) + 1
    for module in constrained:
        raw = module.parametrizations.weight.original.detach().flatten(1).double()
        gram = raw @ raw.T if raw.shape[0] <= raw.shape[1] else raw.T @ raw
        torch.testing.assert_close(gram, torch.eye(len(gram), dtype=torch.float64), atol=1e-5, rtol=0)
        spectral = module.parametrizations.weight[0]
        assert (spectral.bjorck_iters, spectral.bjorck_tol) == (7, 1e-3)
    default = build(name, input_shape=(1, 8, 8), num_classes=10, **SMALL[name])
    raw = next(m for m in default.modules() if parametrize.is_parametrized(m, "weight"))
    raw = raw.parametrizations.weight.original.detach().flatten(1)
    assert not torch.allclose(raw @ raw.T, torch.eye(len(raw)), atol=1e-2)  # torch's init is not


def test_unknown_options_and_choices_are_errors():
    with pytest.raises(ValueError, match="no option 'depth'"):
        check_options("lipconv", {"depth": 3})
    with pytest.raises(ValueError, match="unknown family 'cayley'"):
        build("lipconv", input_shape=(1, 8, 8), num_classes=10, family="cayley")
    with pytest.raises(ValueError, match="unknown block"):
        build("lipresnet", input_shape=(1, 8, 8), num_classes=10, block="dense")
    with pytest.raises(ValueError, match="unknown init 'xavier'; known: torch, orthogonal"):
        build("lipmlp", input_shape=(1, 8, 8), num_classes=10, init="xavier")
