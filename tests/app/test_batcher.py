"""``zoo.app.serve.batcher``: gathering, splitting, failures and draining, with a fake model (no HTTP)."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from zoo.app.serve.batcher import BatcherClosedError, DynamicBatcher


class FakeModel:
    """Doubles its inputs and records the size of every batch it is called with."""

    def __init__(self, fail: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.fail = fail

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        self.batch_sizes.append(len(inputs))
        if self.fail:
            raise RuntimeError("the model failed")
        return {"double": 2 * inputs, "first": inputs[:, 0]}


def requests(sizes: list[int]) -> list[np.ndarray]:
    """One request per size, each example a distinct row so that a mix-up shows."""
    bounds = itertools.pairwise(np.cumsum([0, *sizes]))
    return [np.arange(a, b, dtype=np.float32)[:, None].repeat(3, axis=1) for a, b in bounds]


async def submit_all(batcher: DynamicBatcher, inputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [answer.outputs for answer in await asyncio.gather(*(batcher.submit(x) for x in inputs))]


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    model = FakeModel()

    async def scenario():
        async with DynamicBatcher(model, max_batch=4, max_delay=0.2) as batcher:
            inputs = requests([1, 2, 1, 3, 1])
            return inputs, await submit_all(batcher, inputs)

    inputs, answers = asyncio.run(scenario())
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(answer["double"], 2 * x)
        np.testing.assert_array_equal(answer["first"], x[:, 0])
    # In arrival order, as many whole requests as fit in 4 examples: [1, 2, 1], then [3, 1].
    assert model.batch_sizes == [4, 4]


def test_a_full_batch_does_not_wait_for_the_delay():
    model = FakeModel()

    async def scenario():
        async with DynamicBatcher(model, max_batch=2, max_delay=30.0) as batcher:
            await asyncio.wait_for(submit_all(batcher, requests([1, 1])), timeout=5)

    asyncio.run(scenario())
    assert model.batch_sizes == [2]


@pytest.mark.parametrize("max_batch, max_delay, sizes", [(1, 0.05, [1, 1, 1, 1]), (8, 0.0, [1, 2, 1])])
def test_max_batch_1_runs_each_example_alone_and_delay_0_never_waits(max_batch, max_delay, sizes):
    model = FakeModel()

    async def scenario():
        async with DynamicBatcher(model, max_batch=max_batch, max_delay=max_delay) as batcher:
            for x in requests([1, 2, 1]):  # one after the other: nothing to gather with delay 0
                await batcher.submit(x)

    asyncio.run(scenario())
    assert model.batch_sizes == sizes


def test_a_request_larger_than_max_batch_runs_in_parts_and_others_run_between_them():
    model = FakeModel()

    async def scenario():
        async with DynamicBatcher(model, max_batch=2, max_delay=0.0) as batcher:
            inputs = requests([7, 1])
            big = asyncio.ensure_future(batcher.submit(inputs[0]))
            await asyncio.sleep(0)  # its first part is queued
            small = await batcher.submit(inputs[1])
            return inputs, small.outputs, big.done(), (await big).outputs

    inputs, small, big_was_done, big = asyncio.run(scenario())
    np.testing.assert_array_equal(big["double"], 2 * inputs[0])
    np.testing.assert_array_equal(big["first"], inputs[0][:, 0])
    np.testing.assert_array_equal(small["double"], 2 * inputs[1])
    assert not big_was_done, "the small request waited for every part of the large one"
    assert max(model.batch_sizes) == 2 and sum(model.batch_sizes) == 8


def test_a_model_failure_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    model = FakeModel(fail=True)

    async def scenario():
        async with DynamicBatcher(model, max_batch=4, max_delay=0.2) as batcher:
            submitted = (batcher.submit(x) for x in requests([1, 1]))
            results = await asyncio.gather(*submitted, return_exceptions=True)
            model.fail = False
            return results, (await batcher.submit(requests([1])[0])).outputs

    results, after = asyncio.run(scenario())
    assert [str(r) for r in results] == ["the model failed"] * 2
    assert len(after["double"]) == 1


def test_closing_answers_every_queued_request_then_refuses_new_ones():
    model = FakeModel()

    async def scenario():
        async with DynamicBatcher(model, max_batch=64, max_delay=30.0) as batcher:
            pending = [asyncio.ensure_future(batcher.submit(x)) for x in requests([1, 2, 3])]
            await asyncio.sleep(0.01)  # queued, waiting for a batch that will not fill
        answers = [a.outputs for a in await asyncio.wait_for(asyncio.gather(*pending), timeout=5)]  # not 30 s
        with pytest.raises(BatcherClosedError):
            await batcher.submit(requests([1])[0])
        return answers, batcher.is_open

    answers, is_open = asyncio.run(scenario())
    assert [len(a["double"]) for a in answers] == [1, 2, 3] and not is_open
    assert model.batch_sizes == [6]


def test_closing_refuses_the_parts_of_a_large_request_not_yet_queued():
    model = FakeModel()

    async def scenario():
        async with DynamicBatcher(model, max_batch=2, max_delay=0.0) as batcher:
            big = asyncio.ensure_future(batcher.submit(requests([6])[0]))
            await asyncio.sleep(0)  # the first part is queued
            batcher.close()
            with pytest.raises(BatcherClosedError, match="shutting down"):
                await big

    asyncio.run(scenario())
    assert model.batch_sizes == [2]  # the queued part ran, the others were not queued


def test_answers_say_how_long_they_queued_and_ran_and_batches_are_reported():
    model, reported = FakeModel(), []

    def slow_model(inputs: np.ndarray) -> dict[str, np.ndarray]:
        time.sleep(0.05)
        return model(inputs)

    async def scenario():
        on_batch = lambda examples, seconds: reported.append((examples, seconds))  # noqa: E731
        async with DynamicBatcher(slow_model, max_batch=2, max_delay=0.1, on_batch=on_batch) as batcher:
            return await batcher.submit(requests([1])[0]), await batcher.submit(requests([5])[0])

    alone, split = asyncio.run(scenario())
    assert 0.09 < alone.queued < 0.5 and 0.05 <= alone.computed < 0.5  # waited max_delay for company
    assert [examples for examples, _ in reported] == [1, 2, 2, 1]
    assert split.computed == pytest.approx(sum(seconds for _, seconds in reported[1:]))
    assert len(split.outputs["double"]) == 5
