"""Inference statistics of the served model, in the form of Triton's statistics extension.

``GET /v2/models/stats`` (and ``/v2/models/{name}[/versions/1]/stats``) answers what
``tritonclient``'s ``get_inference_statistics`` and perf_analyzer read: per model, the number of
inferences (examples) and of model executions (batches), and the time spent, as a count and a total
in nanoseconds, in each stage:

* ``success`` / ``fail``: inference requests answered 200 / with an error, from the moment their
  head was read to their answer (the time to receive the body included);
* ``queue``: waiting in the batcher for a model call;
* ``compute_input``: parsing and checking the request; ``compute_infer``: the model calls that ran
  it (a batch's time counts for each request in it); ``compute_output``: encoding the answer.

``batch_stats`` gives, per batch size, the model calls of that size and their time
(``compute_infer`` only: the per-batch input and output stages are not measured separately). No
response cache exists, so the cache counters are zero.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InferenceStatistics"]

STAGES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += round(seconds * 1e9)

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class InferenceStatistics:
    """Counters updated by the app (requests) and the batcher (model calls), in the event loop."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    stages: dict[str, _Duration] = field(default_factory=lambda: {stage: _Duration() for stage in STAGES})
    batches: dict[int, _Duration] = field(default_factory=lambda: defaultdict(_Duration))

    def record_batch(self, examples: int, seconds: float) -> None:
        """A model call on ``examples`` examples took ``seconds``."""
        self.execution_count += 1
        self.batches[examples].add(seconds)

    def record_success(
        self, examples: int, total: float, queued: float, parsed: float, computed: float, encoded: float
    ) -> None:
        """An inference request of ``examples`` examples was answered; its times in seconds."""
        self.inference_count += examples
        self.last_inference_ms = time.time_ns() // 1_000_000
        for stage, seconds in (
            ("success", total),
            ("queue", queued),
            ("compute_input", parsed),
            ("compute_infer", computed),
            ("compute_output", encoded),
        ):
            self.stages[stage].add(seconds)

    def record_failure(self, total: float) -> None:
        """An inference request was answered with an error after ``total`` seconds."""
        self.stages["fail"].add(total)

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        """The model's entry of ``model_stats``."""
        batch_stats = [
            {"batch_size": size, "compute_infer": duration.to_json()}
            for size, duration in sorted(self.batches.items())
        ]
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {stage: duration.to_json() for stage, duration in self.stages.items()},
            "batch_stats": batch_stats,
            "memory_usage": [],
        }
