"""``zoo.bounds.elementwise``: every constant is the supremum of its map's slope (autograd on a fine
grid), and parameters outside the domain of a proof are refused with the reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.bounds import elementwise
from zoo.bounds.elementwise import FIXED_SLOPES, OutOfDomainError

GRID = torch.linspace(-30, 30, 600_001, dtype=torch.float64)


def steepest(function) -> float:
    """``max |f'|`` on GRID (autograd), a lower bound of the map's Lipschitz constant."""
    x = GRID.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad(function(x).sum(), x)
    return float(slope.abs().max())


FIXED_MAPS = {
    "relu": F.relu,
    "abs": torch.abs,
    "neg": torch.neg,
    "tanh": torch.tanh,
    "atan": torch.atan,
    "sin": torch.sin,
    "cos": torch.cos,
    "sigmoid": torch.sigmoid,
    "gelu": F.gelu,
    "silu": F.silu,
    "mish": F.mish,
    "erf": torch.erf,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "selu": F.selu,
}


def test_every_fixed_slope_is_checked():
    assert set(FIXED_MAPS) == set(FIXED_SLOPES)


@pytest.mark.parametrize("name", FIXED_MAPS)
def test_a_fixed_slope_is_the_supremum_of_the_derivative(name):
    found = steepest(FIXED_MAPS[name])
    assert found <= FIXED_SLOPES[name] <= found * (1 + 2e-4)


def test_both_gelu_approximations_are_below_the_gelu_constant():
    found = steepest(lambda x: F.gelu(x, approximate="tanh"))
    assert found <= elementwise.GELU_LIPSCHITZ <= found * (1 + 2e-4)


# (constant, the map it bounds): each parametrized rule on parameters of several signs and sizes
PARAMETRIZED = {
    "leaky relu 0.2": (elementwise.leaky_relu(0.2), lambda x: F.leaky_relu(x, 0.2)),
    "leaky relu -2.5": (elementwise.leaky_relu(-2.5), lambda x: F.leaky_relu(x, -2.5)),
    "prelu": (elementwise.prelu(torch.tensor([0.5, -3.0])), lambda x: torch.where(x > 0, x, -3.0 * x)),
    "elu 2": (elementwise.elu(2.0), lambda x: F.elu(x, 2.0)),
    "elu -3": (elementwise.elu(-3.0), lambda x: F.elu(x, -3.0)),
    "aten elu scale, input scale": (
        elementwise.elu(1.5, scale=-2.0, input_scale=3.0),
        lambda x: torch.ops.aten.elu(x, 1.5, -2.0, 3.0),
    ),
    "celu 0.5": (elementwise.celu(0.5), lambda x: F.celu(x, 0.5)),
    "softplus": (elementwise.softplus(), F.softplus),
    "softplus beta 3": (elementwise.softplus(3.0, 20.0), lambda x: F.softplus(x, 3.0, 20.0)),
    "softsign": (elementwise.softsign(), F.softsign),
    "x / (0.25 + |x|)": (elementwise.softsign(0.25), lambda x: x / (0.25 + x.abs())),
    "hard sigmoid -2": (elementwise.hard_sigmoid(-2.0, 0.1), lambda x: (-2.0 * x + 0.1).clamp(0, 1)),
    "clamp": (elementwise.clamp(-1.0, math.inf), lambda x: x.clamp(min=-1.0)),
    "scaling": (elementwise.scaling(np.array([0.5, -4.0])), lambda x: -4.0 * x),
    "batch norm": (
        elementwise.batch_norm(torch.tensor([2.0, -1.0]), torch.tensor([0.25, 4.0]), 1e-5),
        lambda x: 2.0 * x / math.sqrt(0.25 + 1e-5),
    ),
}


@pytest.mark.parametrize("name", PARAMETRIZED)
def test_a_parametrized_constant_is_the_supremum_of_the_derivative(name):
    constant, function = PARAMETRIZED[name]
    found = steepest(function)
    assert found <= constant <= found * (1 + 1e-4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: elementwise.leaky_relu(math.nan), "negative slope is nan"),
        (lambda: elementwise.prelu(torch.tensor([0.5, math.nan])), "PReLU slope holds NaN"),
        (lambda: elementwise.celu(-0.5), "CELU is Lipschitz only for alpha > 0"),
        (lambda: elementwise.celu(0.0), "CELU is Lipschitz only for alpha > 0"),
        (lambda: elementwise.elu(1.0, input_scale=-2.0), "slope exp"),
        (lambda: elementwise.elu(math.inf), "alpha is inf"),
        (lambda: elementwise.softplus(-1.0), "beta -1.0 <= 0"),
        (lambda: elementwise.softplus(1.0, 5.0), "jumps by 0.00672"),
        (lambda: elementwise.softsign(0.0), "divides by zero"),
        (lambda: elementwise.clamp(math.nan, 1.0), "lower bound of a clamp is NaN"),
        (lambda: elementwise.scaling(np.array([1.0, math.inf])), "scaling factor holds NaN or infinite"),
        (lambda: elementwise.batch_norm(None, np.array([-1.0]), 1e-5), "not a positive number"),
    ],
)
def test_parameters_outside_the_domain_of_a_proof_are_refused(call, message):
    with pytest.raises(OutOfDomainError, match=message):
        call()


def test_the_refused_domains_really_have_no_bound():
    """Why the refusals above: the slopes grow without bound (a negative CELU alpha, a negative ELU
    input scale) or the map jumps (softplus switching to the identity at a low threshold)."""
    assert steepest(lambda x: F.celu(x, -0.5)) > 1e20
    assert steepest(lambda x: torch.ops.aten.elu(x, 1.0, 1.0, -2.0)) > 1e20
    x = torch.tensor([5.0 - 1e-9, 5.0 + 1e-9], dtype=torch.float64)
    jump = F.softplus(x, 1.0, 5.0)
    assert float((jump[1] - jump[0]) / (x[1] - x[0])) < -1e6
