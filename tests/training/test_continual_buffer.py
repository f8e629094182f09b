"""The reservoir buffer: the exact rule, and each example kept with probability M / k."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from training.continual.buffer import ReservoirBuffer


def _stream(buffer: ReservoirBuffer, length: int, batch: int, generator: torch.Generator) -> None:
    """Offer examples 0 .. length - 1 (x = y = the example's id) in batches of ``batch``."""
    for start in range(0, length, batch):
        ids = torch.arange(start, min(start + batch, length))
        buffer.add(generator, x=ids.float().view(-1, 1), y=ids)


def test_the_first_m_examples_fill_the_slots_in_order():
    buffer = ReservoirBuffer(10)
    _stream(buffer, 6, 4, torch.Generator().manual_seed(0))
    assert len(buffer) == 6 and buffer.seen == 6
    assert buffer.fields["y"][:6].tolist() == list(range(6))


def test_the_rule_is_the_sequential_reservoir_rule():
    """Replay the generator's uniform draws through a plain-Python reservoir: same slots."""
    capacity, length, seed = 5, 40, 3
    buffer = ReservoirBuffer(capacity)
    _stream(buffer, length, 7, torch.Generator().manual_seed(seed))

    draws = torch.Generator().manual_seed(seed)
    expected: list[int | None] = [None] * capacity
    for start in range(0, length, 7):
        batch = list(range(start, min(start + 7, length)))
        uniforms = torch.rand(len(batch), generator=draws, dtype=torch.float64).tolist()
        for k, u in zip(batch, uniforms, strict=True):
            if k < capacity:
                expected[k] = k
            else:
                r = math.floor(u * (k + 1))  # uniform in [0, k]
                if r < capacity:
                    expected[r] = k
    assert buffer.fields["y"].tolist() == expected


def test_each_example_is_kept_with_probability_m_over_k():
    """Over many seeded streams, example i is in the buffer in Binomial(trials, M / k) of them; the
    counts also pass a chi-square test of uniformity."""
    capacity, length, trials = 8, 32, 2000
    p = capacity / length
    counts = torch.zeros(length)
    for trial in range(trials):
        buffer = ReservoirBuffer(capacity)
        _stream(buffer, length, 5, torch.Generator().manual_seed(trial))
        counts[buffer.fields["y"]] += 1
    assert counts.sum() == capacity * trials
    # Every example within 5 standard deviations of its binomial mean (false alarm < 1e-5 overall).
    sd = math.sqrt(trials * p * (1 - p))
    assert (counts - trials * p).abs().max() < 5 * sd
    # Drawing M of k without replacement, sum (c - e)^2 / e is about (1 - p) chi2(k - 1).
    statistic = float(((counts - trials * p) ** 2 / (trials * p)).sum()) / (1 - p)
    assert statistic < stats.chi2.ppf(0.999, length - 1)


def test_sample_draws_distinct_stored_examples_with_all_fields():
    buffer = ReservoirBuffer(6)
    generator = torch.Generator().manual_seed(0)
    ids = torch.arange(4)
    buffer.add(generator, x=ids.float().view(-1, 1), y=ids, logits=ids.float().view(-1, 1) * 2)
    batch = buffer.sample(10, generator)
    assert sorted(batch["y"].tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(batch["logits"], batch["y"].float().view(-1, 1) * 2)
    with pytest.raises(ValueError, match="stores"):
        buffer.add(generator, x=ids.float().view(-1, 1), y=ids)
    with pytest.raises(ValueError, match="empty"):
        ReservoirBuffer(3).sample(1, generator)


def test_state_round_trip():
    buffer = ReservoirBuffer(4)
    _stream(buffer, 9, 3, torch.Generator().manual_seed(1))
    restored = ReservoirBuffer(4)
    restored.load_state_dict(buffer.state_dict(), torch.device("cpu"))
    assert restored.seen == 9
    assert torch.equal(restored.fields["y"], buffer.fields["y"])
