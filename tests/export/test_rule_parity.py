"""One rule table: every Lipschitz constant of ``zoo.bounds.elementwise`` and ``zoo.bounds.pooling`` gives
the same bound whether it is reached from a module (``zoo.certify``), from the module's ONNX export
(``export.onnx_graph``) or from its TorchScript and .pt2 programs (``export.torch_graph``)."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from export.onnx_graph import graph_bound
from export.torch_graph import program_bound
from zoo.bounds import elementwise, pooling
from zoo.certify import LEAF_RULES, network_bound
from zoo.layers import Abs, GlobalL2NormPool2d, ScaledL2NormPool2d


class _Function(nn.Module):
    """A module computing ``function`` (for the maps torch has no module of)."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def _prelu() -> nn.PReLU:
    prelu = nn.PReLU(3)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.5, -2.5, 1.5]))
    return prelu


def _batch_norm() -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        norm.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
        norm.running_mean.copy_(torch.tensor([0.1, -0.3, 0.2]))
    return norm


@dataclass(frozen=True)
class Case:
    """A module exercising the rules ``rules`` (names in zoo.bounds), on examples of ``shape``."""

    make: Callable[[], nn.Module]
    rules: tuple[str, ...]
    shape: tuple[int, ...] = (3, 6, 6)


CASES = {
    "relu": Case(nn.ReLU, ("relu",)),
    "abs": Case(Abs, ("abs",)),
    "neg": Case(lambda: _Function(torch.neg), ("neg",)),
    "tanh": Case(nn.Tanh, ("tanh",)),
    "atan": Case(lambda: _Function(torch.atan), ("atan",)),
    "sin": Case(lambda: _Function(torch.sin), ("sin",)),
    "cos": Case(lambda: _Function(torch.cos), ("cos",)),
    "sigmoid": Case(nn.Sigmoid, ("sigmoid",)),
    "gelu": Case(nn.GELU, ("gelu",)),
    "gelu tanh": Case(lambda: nn.GELU(approximate="tanh"), ("gelu",)),
    "silu": Case(nn.SiLU, ("silu",)),
    "mish": Case(nn.Mish, ("mish",)),
    "erf": Case(lambda: _Function(torch.erf), ("erf",)),
    "hardswish": Case(nn.Hardswish, ("hardswish",)),
    "selu": Case(nn.SELU, ("selu",)),
    "softsign": Case(nn.Softsign, ("softsign",)),
    "leaky relu": Case(lambda: nn.LeakyReLU(-2.5), ("leaky_relu",)),
    "prelu": Case(_prelu, ("prelu",)),
    "elu": Case(lambda: nn.ELU(alpha=2.0), ("elu",)),
    "celu": Case(lambda: nn.CELU(alpha=0.5), ("celu",)),
    "softplus": Case(nn.Softplus, ("softplus",)),
    "softplus beta 2": Case(lambda: nn.Softplus(beta=2.0, threshold=30.0), ("softplus",)),
    "hardsigmoid": Case(nn.Hardsigmoid, ("hardsigmoid", "hard_sigmoid")),
    "hardtanh": Case(lambda: nn.Hardtanh(-2.0, 3.0), ("clamp",)),
    "relu6": Case(nn.ReLU6, ("clamp",)),
    "scaling": Case(lambda: _Function(lambda x: x * -3.0), ("scaling",)),
    "batch norm": Case(_batch_norm, ("batch_norm",)),
    "max pool": Case(lambda: nn.MaxPool2d(3, 2, padding=1), ("max_pool_gain",)),
    "max pool 1d, dilation": Case(lambda: nn.MaxPool1d(2, 1, dilation=2), ("max_pool_gain",), (3, 7)),
    "average pool": Case(lambda: nn.AvgPool2d(3, 2, padding=1), ("average_pool_gain",)),
    "average pool without padding in the divisor": Case(
        lambda: nn.AvgPool2d(3, 1, padding=1, count_include_pad=False), ("average_pool_gain",)
    ),
    "average pool 1d": Case(lambda: nn.AvgPool1d(3, 2), ("average_pool_gain",), (3, 7)),
    "lp pool": Case(lambda: nn.LPPool2d(2, 2), ("lp_pool_gain",)),
    "l2 norm pool": Case(lambda: ScaledL2NormPool2d(3, 1, padding=1), ("max_pool_gain", "window_spread")),
    "global l2 norm pool": Case(GlobalL2NormPool2d, ("reduction_gain",)),
    "sum": Case(lambda: _Function(lambda x: x.sum(dim=(2, 3))), ("reduction_gain",)),
    "mean": Case(lambda: _Function(lambda x: x.mean(dim=1)), ("reduction_gain",)),
    "amax": Case(lambda: _Function(lambda x: x.amax(dim=3)), ("reduction_gain",)),
    "amin": Case(lambda: _Function(lambda x: x.amin(dim=(1, 2))), ("reduction_gain",)),
    "logsumexp": Case(lambda: _Function(lambda x: x.logsumexp(dim=2)), ("reduction_gain",)),
    "softmax": Case(lambda: nn.Softmax(dim=1), ("softmax_gain",)),
    "log softmax": Case(lambda: nn.LogSoftmax(dim=3), ("log_softmax_gain",)),
    "l1 norm": Case(lambda: _Function(lambda x: torch.linalg.vector_norm(x, 1, dim=3)), ("norm_gain",)),
}


def _rules_of(module: object) -> set[str]:
    """The rules a bounds module offers: its public functions and FIXED_SLOPES' names."""
    functions = {
        name
        for name, value in vars(module).items()
        if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == module.__name__
    }
    return functions | set(getattr(module, "FIXED_SLOPES", {}))


# pooling's helpers that are not a Lipschitz constant of a map
HELPERS = {"window_coverage", "averaging_matrix"}


def test_every_rule_has_a_parity_case():
    rules = (_rules_of(elementwise) | _rules_of(pooling)) - HELPERS
    covered = {rule for case in CASES.values() for rule in case.rules}
    assert rules - covered == set()


def _bounds(module: nn.Module, shape: tuple[int, ...]) -> dict[str, float]:
    """The bound of ``module`` reached from each place: certifier (when it has a rule for the
    module), ONNX export, TorchScript trace and torch.export program."""
    module = module.eval()
    example = torch.randn(2, *shape)
    batch = ({0: torch.export.Dim("batch", min=1)},)
    bounds = {}
    if any(cls in LEAF_RULES for cls in type(module).__mro__):
        bounds["module"] = network_bound(nn.Sequential(module).eval(), shape)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=batch, verbose=False)
        traced = torch.jit.trace(module, example)
    bounds["onnx"] = graph_bound(onnx_program.model_proto).lipschitz_bound
    bounds["torchscript"] = program_bound(traced, shape, dtype=torch.float32).lipschitz_bound
    exported = torch.export.export(module, (example,), dynamic_shapes=batch).module()
    bounds["pt2"] = program_bound(exported, shape, dtype=torch.float32).lipschitz_bound
    return bounds


@pytest.mark.parametrize("name", CASES)
def test_a_rule_gives_one_bound_from_a_module_and_from_its_exports(name):
    case = CASES[name]
    bounds = _bounds(case.make(), case.shape)
    reference = bounds.get("module", bounds["torchscript"])
    # ONNX stores attributes in float32 (1/6 of hardsigmoid, SELU's constants): a few 1e-8 apart
    assert bounds == pytest.approx(dict.fromkeys(bounds, reference), rel=1e-6)
    # and the bound is no lower than the steepest difference quotient of the module itself
    module = case.make().eval().double()
    x = torch.randn(256, *case.shape, dtype=torch.float64) * 3
    y = x + 0.01 * torch.randn_like(x)
    with torch.no_grad():
        moves = (module(x) - module(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(moves.max()) <= reference * (1 + 1e-9)
    assert math.isfinite(reference)
