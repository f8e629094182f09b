"""Dynamic batching: concurrent requests gathered into one model call, the results split back.

A single worker task owns the model. When a request arrives it waits, at most ``max_delay`` seconds
after the oldest waiting request arrived, for more requests to fill a batch of ``max_batch`` examples;
then it concatenates them, runs the model once in a worker thread (the event loop keeps accepting
and parsing requests meanwhile) and hands each request its own rows of every output. This is
Triton's ``dynamic_batching { max_queue_delay_microseconds }`` policy:

* ``max_batch = 1`` turns batching off: one call per request.
* ``max_delay = 0`` never waits, but still runs together whatever queued up during the last call.
* A batch never exceeds ``max_batch`` examples: a request larger than that is split into parts of
  ``max_batch`` examples, queued one after the other (requests arriving meanwhile run between its
  parts), and its outputs are put back together. The model's working memory is that of one batch,
  whatever the request size.

Closing (:meth:`DynamicBatcher.close`, or leaving the context at server shutdown) refuses new
requests and new parts, runs what is already queued without waiting, and stops the worker; every
queued part gets its answer, and a request whose later parts were refused fails with
:class:`BatcherClosedError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np

__all__ = ["Answer", "BatcherClosedError", "DynamicBatcher"]

Outputs = dict[str, np.ndarray]


class BatcherClosedError(RuntimeError):
    """A request was submitted to a batcher that is not running (not started, or shutting down)."""


@dataclass(frozen=True)
class Answer:
    """The outputs of one request, and where its time went (seconds, summed over its parts)."""

    outputs: Outputs
    queued: float  # from its arrival to the start of the model call that ran it
    computed: float  # the model calls that ran it


@dataclass
class _Waiting:
    inputs: np.ndarray
    arrived: float
    answer: asyncio.Future[Answer]


class DynamicBatcher:
    """Runs ``run(batch) -> {name: array with one row per example}`` on gathered requests.

    Use as an async context manager inside the event loop: entering starts the worker, leaving drains
    the queue and stops it.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], Outputs],
        max_batch: int,
        max_delay: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """``on_batch(examples, seconds)`` is called after each model call that succeeded."""
        if max_batch < 1 or max_delay < 0:
            raise ValueError(f"need max_batch >= 1 and max_delay >= 0, got {max_batch} and {max_delay}")
        self.run = run
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._queue: deque[_Waiting] = deque()
        self._queued_examples = 0
        self._arrival = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        """Whether requests are accepted."""
        return self._worker is not None and not self._closing

    async def __aenter__(self) -> DynamicBatcher:
        self._worker = asyncio.create_task(self._work(), name="dynamic-batcher")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
        if self._worker is not None:
            await self._worker

    def close(self) -> None:
        """Refuse new requests from now on; what is queued still runs, without waiting for a batch."""
        self._closing = True
        self._arrival.set()

    async def submit(self, inputs: np.ndarray) -> Answer:
        """The outputs for ``inputs`` (a batch of one or more examples), once all its parts have run."""
        if len(inputs) <= self.max_batch:
            return await self._submit_part(inputs)
        starts = range(self.max_batch, len(inputs), self.max_batch)
        parts = [await self._submit_part(part) for part in np.split(inputs, starts)]
        return Answer(
            {name: np.concatenate([part.outputs[name] for part in parts]) for name in parts[0].outputs},
            queued=sum(part.queued for part in parts),
            computed=sum(part.computed for part in parts),
        )

    async def _submit_part(self, inputs: np.ndarray) -> Answer:
        if not self.is_open:
            raise BatcherClosedError("the server is shutting down")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(inputs, loop.time(), loop.create_future())
        self._queue.append(waiting)
        self._queued_examples += len(inputs)
        self._arrival.set()
        return await waiting.answer

    async def _work(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._arrival.clear()
                await self._arrival.wait()
            await self._wait_for_batch()
            await self._run(self._take_batch())

    async def _wait_for_batch(self) -> None:
        """Return when a full batch is queued, the oldest request has waited max_delay, or on closing."""
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].arrived + self.max_delay
        while self._queued_examples < self.max_batch and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Waiting]:
        """The oldest requests that fit in max_batch examples (at least one request, none larger)."""
        batch = [self._queue.popleft()]
        size = len(batch[0].inputs)
        while self._queue and size + len(self._queue[0].inputs) <= self.max_batch:
            batch.append(self._queue.popleft())
            size += len(batch[-1].inputs)
        self._queued_examples -= size
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        inputs = np.concatenate([waiting.inputs for waiting in batch])
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            outputs = await asyncio.to_thread(self.run, inputs)
        except Exception as error:  # every request of the batch gets the failure
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
            return
        computed = loop.time() - began
        if self.on_batch is not None:
            self.on_batch(len(inputs), computed)
        start = 0
        for waiting in batch:
            stop = start + len(waiting.inputs)
            if not waiting.answer.done():  # done: the client went away (request cancelled)
                rows = {name: values[start:stop] for name, values in outputs.items()}
                waiting.answer.set_result(Answer(rows, began - waiting.arrived, computed))
            start = stop
