"""AR1's pieces: CWR* by hand, the projected CWR* head and its certified bound, the latent replay
memory, the normalisations (BatchReNorm2d, and BatchReCentering2d against its exact Jacobian), their
schedule and folding, and two-experience runs whose replay memory carries the right label with every
activation and whose latent-replay phase uses its own loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.continual.cwr import SLACK, CWRStar, project_rows
from training.continual.latent_replay import LatentReplayMemory, current_batch_size
from training.continual.recipe import AR1Spec, BatchRecenteringSpec, BatchRenormSpec
from training.continual.renorm import RenormalizedConv, RenormSchedule, add_batch_renorm
from training.continual.scenario import class_incremental
from training.continual.strategies import AR1, Settings, make_strategy
from training.losses import MulticlassHKR, make_loss
from zoo.bounds import matrix_norm_bound
from zoo.certify import network_bound
from zoo.fold import fold, is_folded
from zoo.layers import BatchReCentering2d, BatchReNorm2d, spectral_bjorck
from zoo.models import build

TINY = {"widths": [4, 8, 8], "dense": [16]}  # layers: conv 0, act, conv 2, act, pool 4, conv 5, ...


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cwr_star_consolidation_matches_a_hand_computation():
    head = nn.Linear(3, 4, bias=False)
    cwr = CWRStar(head)
    with torch.no_grad():  # "trained" rows of classes 0 (2 patterns) and 1 (3 patterns)
        head.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 7.0, 7.0], [9.0, 9.0, 9.0]]))
    cwr.consolidate(torch.tensor([2, 3, 0, 0]))
    cwr.write_head()
    # globavg = mean(1..6) = 3.5; new classes keep w - globavg; untrained rows are zero
    expected = torch.tensor([[-2.5, -1.5, -0.5], [0.5, 1.5, 2.5], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(head.weight.detach(), expected)
    assert cwr.past.tolist() == [2, 3, 0, 0]

    cwr.reset_head([1, 2])  # the next experience trains classes 1 (seen) and 2 (new)
    torch.testing.assert_close(
        head.weight.detach(), torch.tensor([[0.0] * 3, [0.5, 1.5, 2.5], [0.0] * 3, [0.0] * 3])
    )
    with torch.no_grad():
        head.weight[1] = torch.tensor([2.0, 2.0, 2.0])
        head.weight[2] = torch.tensor([0.0, 3.0, 3.0])
    cwr.consolidate(torch.tensor([0, 1, 4, 0]))
    cwr.write_head()
    # globavg = 2; class 1: w' = 0, wpast = sqrt(3 / 1): (saved * wpast + 0) / (wpast + 1)
    wpast = math.sqrt(3.0)
    expected[1] = torch.tensor([0.5, 1.5, 2.5]) * wpast / (wpast + 1)
    expected[2] = torch.tensor([-2.0, 1.0, 1.0])
    torch.testing.assert_close(head.weight.detach(), expected)
    assert cwr.past.tolist() == [2, 4, 4, 0]


def test_the_projected_head_is_certified_and_keeps_every_logit_difference_up_to_one_scale():
    torch.manual_seed(0)
    head = nn.Linear(6, 5, bias=False)
    projection = project_rows(head)
    cwr = CWRStar(head)
    cwr.saved = torch.randn(5, 6) * 4 + 1  # large rows sharing a common component
    cwr.past = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.0])  # class 4 never trained
    cwr.write_head()
    weight = head.weight.detach()
    assert projection.active.tolist() == [True, True, True, True, False]
    assert torch.count_nonzero(weight[4]) == 0
    torch.testing.assert_close(weight[:4].sum(0), torch.zeros(6), atol=1e-5, rtol=0)  # centred
    # The certificate's own bound of the shipped layer (float64, with its margin) is at most 1 ...
    bound = matrix_norm_bound(weight)
    assert 1 - 2 * SLACK < bound <= 1.0
    # ... and the layer computes the consolidated rows' logit differences, scaled by one factor.
    differences = cwr.saved[:4, None] - cwr.saved[None, :4]  # (4, 4, 6)
    projected = weight[:4, None] - weight[None, :4]
    scale = projected.norm() / differences.norm()
    torch.testing.assert_close(projected, scale * differences, atol=1e-5, rtol=1e-5)

    cwr.saved = cwr.saved * 1e-3  # already inside the budget: only centred, not scaled
    cwr.write_head()
    active = cwr.saved[:4]
    torch.testing.assert_close(head.weight.detach()[:4], active - active.mean(0), atol=1e-7, rtol=1e-6)


def test_the_projected_head_trains_its_active_rows_only():
    head = nn.Linear(3, 4, bias=False)
    project_rows(head)
    cwr = CWRStar(head)
    cwr.saved = torch.arange(12.0).view(4, 3)
    cwr.reset_head([1, 2])
    x = torch.randn(8, 3)
    head(x).square().sum().backward()
    raw = head.parametrizations.weight.original
    assert raw.grad[[0, 3]].abs().sum() == 0 and raw.grad[[1, 2]].abs().sum() > 0
    assert torch.count_nonzero(head.weight.detach()[[0, 3]]) == 0


def test_minibatch_composition():
    assert current_batch_size(270, 300, 32) == 270 // (570 // 32)  # 15 current, 17 replayed
    assert current_batch_size(3000, 1500, 128) == 3000 // (4500 // 128)
    assert current_batch_size(10, 1500, 128) == 1  # never zero


def test_latent_memory_quota_insertion_and_draws():
    memory = LatentReplayMemory(10)
    generator = torch.Generator().manual_seed(0)
    assert memory.quota(0, 25) == 10 and memory.quota(1, 25) == 5 and memory.quota(2, 2) == 2
    first = torch.arange(6)
    memory.insert(first.float().view(-1, 1), first, generator)
    assert len(memory) == 6
    second = torch.arange(100, 105)
    memory.insert(second.float().view(-1, 1), second, generator)  # 4 free slots, then 1 overwrite
    stored = set(memory.y.tolist())
    assert len(memory) == 10 and set(second.tolist()) <= stored and len(stored & set(first.tolist())) == 5
    torch.testing.assert_close(memory.x.flatten(), memory.y.float())  # pairs stay together
    drawn = torch.cat([memory.draw(3, generator)[1] for _ in range(10)])  # 30 draws = 3 passes
    assert all(drawn.tolist().count(label) == 3 for label in stored)
    assert len(memory.draw(0, generator)[1]) == 0


def test_renorm_schedule_grows_the_limits_per_sample():
    norms = [BatchReNorm2d(3), BatchReNorm2d(5)]
    schedule = RenormSchedule(norms, inc_step=0.01, max_r_max=1.25, max_d_max=0.5)
    schedule.step(10)  # the first batch is plain batch normalisation
    assert all((n.r_max, n.d_max) == (1.0, 0.0) for n in norms)
    schedule.step(10)
    assert norms[1].r_max == pytest.approx(1.1) and norms[1].d_max == pytest.approx(0.1)
    schedule.step(100)
    assert schedule.limits() == (1.25, 0.5)  # 120 samples: capped


def test_batch_renorm_training_forward_follows_the_formula():
    norm = BatchReNorm2d(3, r_max=1.25, d_max=0.5)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.5, -3.0, 0.0]))
        norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.01]))
        norm.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mu_run, sigma_run = norm.running_mean.clone(), (norm.running_var + norm.eps).sqrt()
    y = norm.train()(x)
    mu, sigma = x.mean((0, 2, 3)), (x.var((0, 2, 3), unbiased=False) + norm.eps).sqrt()
    r = (sigma / sigma_run).clamp(1 / 1.25, 1.25)
    d = ((mu - mu_run) / sigma_run).clamp(-0.5, 0.5)
    assert (r == 1.25).any() and (d.abs() == 0.5).any()  # the clamps are exercised

    def channels(v: torch.Tensor) -> torch.Tensor:
        return v.detach().view(1, -1, 1, 1)

    expected = channels(norm.weight) * ((x - channels(mu)) * channels(r / sigma) + channels(d)) + channels(
        norm.bias
    )
    torch.testing.assert_close(y, expected)
    assert {"running_mean", "running_var"} <= set(norm.state_dict())  # buffers: saved and restored


def _finite_difference_jacobian(function, x: torch.Tensor, step: float = 1e-6) -> torch.Tensor:
    """(out_numel, in_numel) central-difference Jacobian of ``function`` at ``x`` (float64): the
    exact Jacobian of a piecewise linear function away from its kinks, whatever autograd sees."""
    columns = []
    for i in range(x.numel()):
        delta = torch.zeros(x.numel(), dtype=x.dtype)
        delta[i] = step
        delta = delta.view_as(x)
        columns.append(((function(x + delta) - function(x - delta)) / (2 * step)).flatten())
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize(("weights", "expected"), [([0.6, -0.8], 0.8), ([3.0, 0.2], 1.0)])
@pytest.mark.parametrize("d_max", [0.0, 0.3, 100.0])
def test_batch_recentering_is_lipschitz_by_its_bounded_scale_in_both_modes(weights, expected, d_max):
    """Training mode maps a whole batch to a batch (its mean couples the examples): the Jacobian of
    that map, exact by finite differences (d included) and as autograd trains with it (d held
    fixed), has spectral norm ``min(1, max |weight|)``, as has the eval-mode map."""
    torch.manual_seed(1)
    norm = BatchReCentering2d(2, momentum=0.0, d_max=d_max).double()  # momentum 0: a fixed function
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(weights, dtype=torch.float64))
        norm.bias.copy_(torch.tensor([0.5, -0.25]))
        norm.running_mean.copy_(torch.tensor([0.2, -0.1]))
        norm.running_var.copy_(torch.tensor([0.5, 2.0]))
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    for mode in (norm.train(), norm.eval()):
        with torch.no_grad():
            exact = _finite_difference_jacobian(mode, x)
        assert float(torch.linalg.matrix_norm(exact, ord=2)) == pytest.approx(expected, rel=1e-6)
        autograd = torch.autograd.functional.jacobian(mode, x).reshape(x.numel(), x.numel()).detach()
        assert float(torch.linalg.matrix_norm(autograd, ord=2)) == pytest.approx(expected, rel=1e-9)
    assert norm.lipschitz_factor == pytest.approx(expected)


def test_batch_recentering_follows_the_running_mean_as_the_correction_opens():
    torch.manual_seed(2)
    norm = BatchReCentering2d(3, momentum=0.0)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        norm.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
    x = torch.randn(8, 3, 4, 4)
    scale = torch.tensor([0.25, -1.0, 0.5]).view(1, 3, 1, 1)  # divided by the largest |weight|
    centred = norm.train()(x)  # d_max = 0: batch centering
    torch.testing.assert_close(centred, (x - x.mean((0, 2, 3), keepdim=True)) * scale)
    norm.d_max = 100.0  # d unclipped: the running mean, as in eval mode
    torch.testing.assert_close(norm(x), norm.eval()(x))
    torch.testing.assert_close(norm(x), (x - norm.running_mean.view(1, 3, 1, 1)) * scale)


def test_recentered_conv_folds_into_one_plain_conv_certified_at_its_exact_norm():
    """The certificate of the folded convolution is the exact Lipschitz constant of what trained:
    the spectral norm of the eval-mode ``norm(conv(x))``'s Jacobian."""
    torch.manual_seed(3)
    conv = spectral_bjorck(nn.Conv2d(2, 3, 3, padding=1))
    module = RenormalizedConv(conv, BatchReCentering2d(3, momentum=0.5, d_max=0.5))
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(5):  # move the scale, bias and running statistics
        loss = -module.train()(torch.randn(8, 2, 5, 5) * 3 + 1).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert module.norm.weight.abs().max() > 1  # the normalisation of the scale is exercised
    x = torch.randn(4, 2, 5, 5)
    with torch.no_grad():
        expected = module.eval()(x)
        exact = torch.autograd.functional.jacobian(lambda v: module(v.unsqueeze(0)).squeeze(0), x[0])
    exact_norm = float(torch.linalg.matrix_norm(exact.reshape(3 * 25, 2 * 25), ord=2))
    folded = fold(nn.Sequential(module))
    assert type(folded[0]) is nn.Conv2d and is_folded(folded)
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-6)
    bound, _ = network_bound(folded, (2, 5, 5))
    assert bound == pytest.approx(exact_norm, rel=1e-5) and bound <= 1.0 + 1e-5


def test_renormalized_conv_folds_into_one_conv():
    torch.manual_seed(0)
    conv = spectral_bjorck(nn.Conv2d(2, 3, 3, padding=1))
    module = RenormalizedConv(conv, BatchReNorm2d(3, momentum=0.5))
    for _ in range(3):  # move the running statistics away from (0, 1)
        module.train()(torch.randn(8, 2, 5, 5) * 3 + 1)
    with torch.no_grad():
        module.norm.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        module.norm.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    x = torch.randn(4, 2, 5, 5)
    expected = module.eval()(x)
    folded = fold(nn.Sequential(module))
    assert type(folded[0]) is nn.Conv2d
    torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-6)


def _ar1(model: nn.Module, spec: AR1Spec) -> AR1:
    settings = Settings(epochs=1, batch_size=32, augmentation="none", device=torch.device("cpu"))
    loss = make_loss("tau_cross_entropy", {"tau": 10.0})
    return make_strategy(spec, model, loss, settings, lambda: torch.optim.Adam(model.parameters(), lr=0.003))


def test_ar1_replays_every_activation_with_its_own_label(digits):
    torch.manual_seed(0)
    model = build("lipconv", input_shape=(1, 8, 8), num_classes=10, **TINY)
    spec = AR1Spec(
        name="ar1",
        latent_layer=4,
        replay_size=120,
        inc_lr=0.001,
        normalization=BatchRenormSpec(name="batch_renorm", momentum=0.1),
        lipschitz_head=False,
    )
    strategy = _ar1(model, spec)
    stream = class_incremental(digits, 5)
    lower_state = None
    for experience in stream[:2]:
        strategy.train_experience(
            experience, torch.Generator().manual_seed(experience.index), lambda **_: None
        )
        if experience.index == 0:
            lower_state = {k: v.clone() for k, v in strategy.lower.state_dict().items()}
    # The lower part was frozen after the first experience: parameters and statistics unchanged.
    assert all(not p.requires_grad for p in strategy.lower.parameters())
    assert all(torch.equal(v, lower_state[k]) for k, v in strategy.lower.state_dict().items())
    assert torch.count_nonzero(model[-1].bias) == 0 and not model[-1].bias.requires_grad

    x = torch.cat([e.x_train for e in stream[:2]])
    y = torch.cat([e.y_train for e in stream[:2]])
    with torch.no_grad():
        latent = strategy.lower.eval()(x).flatten(1)
    memory_x, memory_y = strategy.memory.x.flatten(1), strategy.memory.y
    assert len(memory_y) == 120 and set(memory_y.tolist()) == {0, 1, 2, 3}
    distances = torch.cdist(memory_x, latent, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.argmin(1)
    assert float(distances.min(1).values.max()) < 1e-4  # every stored activation is a real pattern's
    assert torch.equal(y[nearest], memory_y)


@pytest.mark.parametrize(
    ("normalization", "lipschitz_head"),
    [
        (BatchRenormSpec(name="batch_renorm", momentum=0.2), False),
        (BatchRecenteringSpec(name="batch_recentering"), True),
    ],
)
def test_a_folded_ar1_network_has_the_plain_architecture(digits, normalization, lipschitz_head):
    torch.manual_seed(0)
    model = build("lipconv", input_shape=(1, 8, 8), num_classes=10, **TINY)
    spec = AR1Spec(
        name="ar1", latent_layer=4, replay_size=50, normalization=normalization, lipschitz_head=lipschitz_head
    )
    strategy = _ar1(model, spec)
    assert sum(isinstance(m, RenormalizedConv) for m in model) == 3
    strategy.train_experience(
        class_incremental(digits, 5)[0], torch.Generator().manual_seed(0), lambda **_: None
    )
    x = digits.x_test[:64]
    expected = model.eval()(x)
    folded = fold(model)
    torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
    plain = build("lipconv", input_shape=(1, 8, 8), num_classes=10, parametrized=False, **TINY)
    assert folded.state_dict().keys() == plain.state_dict().keys()
    if lipschitz_head:  # the certified design; the original one has no bound by construction
        assert network_bound(folded, (1, 8, 8))[0] <= 1.0


def test_the_latent_replay_phase_trains_with_its_own_loss(digits):
    torch.manual_seed(0)
    model = build("lipconv", input_shape=(1, 8, 8), num_classes=10, **TINY)
    hkr = {"name": "hkr", "params": {"alpha": 50.0, "margin": 0.2}}
    strategy = _ar1(model, AR1Spec(name="ar1", latent_layer=4, replay_size=40, replay_loss=hkr))
    assert isinstance(strategy.replay_loss, MulticlassHKR) and strategy.replay_loss.alpha == 50.0
    calls = {"task": [], "replay": []}

    def recording(loss: nn.Module, name: str):
        def call(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            calls[name].append(set(labels.tolist()))
            return loss(logits, labels)

        return call

    strategy.loss, strategy.replay_loss = (
        recording(strategy.loss, "task"),
        recording(strategy.replay_loss, "replay"),
    )
    for experience in class_incremental(digits, 5)[:2]:
        strategy.train_experience(experience, torch.Generator().manual_seed(0), lambda **_: None)
    assert calls["task"] and set().union(*calls["task"]) == {0, 1}
    assert calls["replay"] and set().union(*calls["replay"]) == {0, 1, 2, 3}  # current and replayed


def test_add_batch_renorm_reaches_nested_convolutions():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(2, 4, 3)))
    norms = add_batch_renorm(model, BatchReCentering2d)
    assert [n.weight.numel() for n in norms] == [2, 4] and all(
        isinstance(n, BatchReCentering2d) for n in norms
    )
    assert isinstance(model[0], RenormalizedConv) and isinstance(model[1][1], RenormalizedConv)
