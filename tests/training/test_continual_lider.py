"""LiDER: the transmitting matrix and layer estimate against numpy, and a budget that learns."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import numpy as np
import pytest
import torch

from training.continual.lider import (
    LiDER,
    feature_maps,
    lipschitz_layer_count,
    top_singular_value,
    transmitting_matrix,
)
from training.continual.recipe import ERSpec, LiDERSpec
from training.continual.scenario import class_incremental
from training.continual.strategies import Settings, make_strategy
from training.losses import make_loss
from zoo.models import build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _numpy_transmitting_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The recipe step by step for one sample: a (Ca, Ha, Wa), b (Cb, Hb, Wb) with Cb a multiple
    of Ca and Ha, Wa multiples of Hb, Wb."""
    channels, height, width = a.shape[0], b.shape[1], b.shape[2]
    b = b.reshape(channels, -1, height, width).mean(1)  # channel pooling to Ca
    a = a / np.maximum(np.linalg.norm(a, axis=0, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=0, keepdims=True), 1e-12)
    fh, fw = a.shape[1] // height, a.shape[2] // width
    a = a.reshape(channels, height, fh, width, fw).mean((2, 4))  # spatial pooling to b's size
    return a.reshape(channels, -1) @ b.reshape(channels, -1).T / (height * width)


def _as_maps(feature: torch.Tensor) -> np.ndarray:
    return feature.detach().double().numpy()


def test_transmitting_matrix_matches_numpy():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, 4, 4, generator=generator)
    b = torch.randn(3, 6, 2, 2, generator=generator)
    tm = transmitting_matrix(a, b)
    assert tm.shape == (3, 3, 3) and tm.dtype == torch.float64
    for i in range(3):
        np.testing.assert_allclose(
            tm[i].numpy(), _numpy_transmitting_matrix(_as_maps(a[i]), _as_maps(b[i])), atol=1e-12
        )


def test_the_estimate_converges_to_the_top_singular_value():
    generator = torch.Generator().manual_seed(1)
    matrices = torch.randn(5, 6, 6, generator=generator, dtype=torch.float64)
    estimate = top_singular_value(matrices, iterations=500, generator=generator)
    exact = np.linalg.svd(matrices.numpy(), compute_uv=False)[:, 0]
    np.testing.assert_allclose(estimate.numpy(), exact, rtol=1e-8)


def test_layer_estimates_of_a_network_match_the_svd_of_its_transmitting_matrices():
    torch.manual_seed(0)
    model = build("lipconv", input_shape=(1, 8, 8), num_classes=10, widths=[4, 8], dense=[16]).eval()
    x = torch.rand(4, 1, 8, 8)
    lider = LiDER(lipschitz_layer_count(model), alpha=0.1, beta=0.1, iterations=500)
    with torch.no_grad():
        estimates = lider.estimates(model, x, torch.Generator().manual_seed(0))
        features = [_as_maps(f) for f in feature_maps(model, x)]
    assert estimates.shape == (4, 3)  # (input, conv 1), (conv 1, conv 2), (conv 2, dense)
    for layer, (a, b) in enumerate(pairwise(features)):
        for sample in range(4):
            exact = np.linalg.svd(_numpy_transmitting_matrix(a[sample], b[sample]), compute_uv=False)[0]
            assert float(estimates[sample, layer]) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("learn_budget", [True, False])
def test_the_budget_is_a_parameter_that_moves_unless_frozen(digits, monkeypatch, learn_budget):
    initial = {}
    original = LiDER.initialize_budget

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        initial["budget"] = self.budget.detach().clone()

    monkeypatch.setattr(LiDER, "initialize_budget", recording)
    torch.manual_seed(0)
    model = build("lipconv", input_shape=(1, 8, 8), num_classes=10, widths=[4, 8], dense=[16])
    spec = ERSpec(name="er", buffer_size=32, lider=LiDERSpec(alpha=0.5, beta=0.5, learn_budget=learn_budget))
    settings = Settings(epochs=1, batch_size=16, augmentation="none", device=torch.device("cpu"))
    strategy = make_strategy(
        spec, model, make_loss("hinge", {}), settings, lambda: torch.optim.Adam(model.parameters(), lr=0.01)
    )
    lider = strategy.lider
    assert isinstance(lider.budget, torch.nn.Parameter) and lider.budget.requires_grad is learn_budget
    first = class_incremental(digits, 5)[0]
    experience = replace(first, x_train=first.x_train[:64], y_train=first.y_train[:64])
    strategy.train_experience(experience, torch.Generator().manual_seed(0), lambda **_: None)
    assert (initial["budget"] > 0).all()
    moved = not torch.equal(lider.budget.detach(), initial["budget"])
    assert moved is learn_budget
