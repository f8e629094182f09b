"""``CertifiedModel.predict`` and ``zoo.prediction``: classes, margins and radii against an independent
computation, the radius as a guarantee, the input range (refused or clamped), bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from toy_checkpoint import ARCHITECTURE, INPUT_SHAPE, write_toy_checkpoint

import zoo
from zoo.certify import certify
from zoo.prediction import InputRangeError, check_inputs, input_range, predictions_from_logits

UNIT_RANGE = {"transform": "pixel / 16", "input_range": [0.0, 1.0]}


def save_certified(path, preprocessing) -> zoo.CertifiedModel:
    """The toy certified for ``preprocessing``, saved and loaded back."""
    write_toy_checkpoint(path, preprocessing)
    return zoo.load(path)


@pytest.fixture(scope="module")
def certified(tmp_path_factory) -> zoo.CertifiedModel:
    return save_certified(tmp_path_factory.mktemp("predict") / "toy.safetensors", UNIT_RANGE)


def examples(n: int, seed: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(low, high, (n, *INPUT_SHAPE))).float()


def test_predict_gives_argmax_margin_and_radius_of_the_models_logits(certified):
    x = examples(20, seed=1)
    predictions = certified.predict(x)
    with torch.no_grad():
        logits = certified.model(x).numpy().astype(np.float64)
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    np.testing.assert_array_equal(predictions.predicted_class.numpy(), logits.argmax(axis=1))
    np.testing.assert_allclose(predictions.margin.numpy(), margin, rtol=1e-12)
    radius = margin / (math.sqrt(2) * certified.certificate.lipschitz_bound)
    np.testing.assert_allclose(predictions.certified_radius.numpy(), radius, rtol=1e-12)
    assert predictions.certified_radius.dtype == torch.float64 and len(predictions) == 20
    assert not predictions.clamped.any()
    # Splitting into batches changes nothing but the memory used.
    small_batches = certified.predict(x, batch_size=3)
    np.testing.assert_array_equal(small_batches.predicted_class, predictions.predicted_class)
    np.testing.assert_allclose(small_batches.certified_radius, predictions.certified_radius, rtol=1e-5)


def test_the_radius_is_exact_for_an_orthogonal_linear_classifier():
    """f(x) = Wx with orthonormal rows: logits i and j move apart at rate |w_i - w_j| = sqrt(2) = sqrt(2) L,
    so the prediction survives any step of 0.999 radius and a step of 1.001 radius towards the
    runner-up flips it."""
    torch.manual_seed(3)
    linear = torch.nn.Linear(64, 10, bias=False)
    torch.nn.init.orthogonal_(linear.weight)
    model = torch.nn.Sequential(torch.nn.Flatten(), linear).eval()
    certificate = certify(model, INPUT_SHAPE, UNIT_RANGE)
    assert 1 <= certificate.lipschitz_bound < 1 + 1e-5
    certified = zoo.CertifiedModel(model, certificate, ARCHITECTURE)
    x = examples(32, seed=2, low=0.3, high=0.7)  # the steps stay inside [0, 1]
    predictions = certified.predict(x)
    runner_up = predictions.logits.scatter(1, predictions.predicted_class.view(-1, 1), -math.inf).argmax(1)
    weight = linear.weight.detach()
    towards = (weight[runner_up] - weight[predictions.predicted_class]).view(-1, *INPUT_SHAPE)
    unit = towards / towards.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    radius = predictions.certified_radius.view(-1, 1, 1, 1)
    with torch.no_grad():
        inside = model((x.double() + 0.999 * radius * unit).float()).argmax(1)
        outside = model((x.double() + 1.001 * radius * unit).float()).argmax(1)
    np.testing.assert_array_equal(inside, predictions.predicted_class)
    np.testing.assert_array_equal(outside, runner_up)


def test_values_outside_the_input_range_are_refused_or_clamped_and_said(certified):
    x = examples(4, seed=3)
    x[1, 0, 0, 0] = 255.0  # a 255-scale pixel in a [0, 1] certificate
    x[3, 0, 2, 2] = -0.5
    with pytest.raises(InputRangeError, match=r"2 of 4 examples have values outside .* range \[0, 1\]"):
        certified.predict(x)
    clamped = certified.predict(x, clamp=True)
    assert clamped.clamped.tolist() == [False, True, False, True]
    expected = certified.predict(x.clamp(0, 1))
    np.testing.assert_array_equal(clamped.certified_radius, expected.certified_radius)
    assert x[1, 0, 0, 0] == 255.0, "the caller's tensor was modified"
    edges = torch.cat([torch.zeros(1, *INPUT_SHAPE), torch.ones(1, *INPUT_SHAPE)])
    assert not certified.predict(edges).clamped.any()  # the range is closed


def test_a_certificate_without_a_range_checks_finiteness_only(tmp_path):
    unranged = save_certified(tmp_path / "unranged.safetensors", {})
    assert len(unranged.predict(examples(2, seed=4, low=-300, high=300))) == 2
    with pytest.raises(ValueError, match="NaN or infinite"):
        unranged.predict(torch.full((1, *INPUT_SHAPE), math.nan))


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(8, 8), r"batch of shape \(N, 1, 8, 8\), got \(8, 8\)"),
        (torch.zeros(1, 8, 8), r"one example x: pass x.unsqueeze\(0\)"),
        (np.zeros((1, 1, 8, 8)), "got ndarray"),
        (torch.full((2, *INPUT_SHAPE), math.inf), "NaN or infinite"),
    ],
)
def test_bad_inputs_are_a_clear_error(certified, bad, message):
    with pytest.raises(ValueError, match=message):
        certified.predict(bad)


@pytest.mark.parametrize("record", ["0..1", [0, 1, 2], [1, 0], [0, math.nan], [False, True], None])
def test_a_malformed_input_range_is_an_error_not_ignored(record):
    with pytest.raises(ValueError, match=r"input_range .* is malformed"):
        input_range({"input_range": record})
    assert input_range({"input_range": [0, 255]}) == (0.0, 255.0) and input_range({}) is None


def test_check_inputs_leaves_good_inputs_untouched_and_predictions_match_robustness():
    x = torch.rand(3, 5)
    same, clamped = check_inputs(x, (0.0, 1.0))
    assert same is x and clamped.tolist() == [False] * 3
    logits = torch.tensor([[3.0, 1.0, 0.5], [2.0, 2.0, 1.0]])
    predictions = predictions_from_logits(logits, lipschitz_bound=2.0)
    assert predictions.margin.tolist() == [2.0, 0.0]  # a tie has margin 0, so radius 0
    np.testing.assert_allclose(predictions.certified_radius, [2.0 / (math.sqrt(2) * 2.0), 0.0])
