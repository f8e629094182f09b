"""The 1-Lipschitz layer library, one table of cases checked the same way:

* the largest singular value of the layer's Jacobian (autograd, float64, independent of the bound
  engine), before and after a few optimiser steps, is at most ``lip * (1 + 1e-4)``;
* orthogonal layers have all their singular values within 1e-3 of ``lip``;
* the folded layer computes the same outputs (atol 1e-6) and its state dict loads into the plain
  layer an architecture builds with ``parametrized=False``;
* the certificate of the folded layer is at least its exact Jacobian norm.
"""

from __future__ import annotations

import pytest
import torch
from layer_cases import CASES, build, train_a_few_steps
from layer_checks import jacobian_matrix
from torch import nn
from torch.nn.utils import parametrize

from zoo.certify import network_bound
from zoo.fold import fold, is_folded

TOL = 1e-4


def jacobian_norms(layer: nn.Module, shape: tuple[int, ...], points: int = 3) -> list[torch.Tensor]:
    """Singular values (descending) of the float64 Jacobian of ``layer`` at random points."""
    results = []
    with parametrize.cached():  # the weights do not depend on the input: compute them once
        for _ in range(points):
            results.append(torch.linalg.svdvals(jacobian_matrix(layer, shape)))
    return results


@pytest.mark.parametrize("name", CASES)
def test_lipschitz_before_and_after_training(name):
    case = CASES[name]
    layer = build(case).double().eval()
    for _ in range(2):
        for singular in jacobian_norms(layer, case.shape):
            assert float(singular[0]) <= case.lip * (1 + TOL)
            if case.orthogonal:  # all min(out, in) singular values
                torch.testing.assert_close(singular, torch.full_like(singular, case.lip), atol=1e-3, rtol=0)
        train_a_few_steps(layer, case.shape)


@pytest.mark.parametrize("name", CASES)
def test_fold_state_dict_and_certificate(name):
    case = CASES[name]
    layer = build(case)
    train_a_few_steps(layer, case.shape)
    x = torch.randn(16, *case.shape)
    with torch.no_grad():
        expected = layer(x)
        folded = fold(layer)
        assert is_folded(folded)
        torch.testing.assert_close(folded(x), expected, atol=1e-6, rtol=0)
        plain = case.plain().eval()
        plain.load_state_dict(folded.state_dict(), strict=True)
        torch.testing.assert_close(plain(x), expected, atol=1e-6, rtol=0)
    bound, _ = network_bound(folded, case.shape)
    exact = max(float(s[0]) for s in jacobian_norms(folded.double(), case.shape))
    assert bound >= exact * (1 - 1e-12)  # slack for the test's own float64 SVD (exact rules give 1.0)
