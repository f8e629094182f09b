"""Timing shared by the benchmarks: calls interleaved round by round, in a new random order each round."""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def interleaved_seconds(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall time (s) of each call in each of ``rounds`` rounds, after ``warmup`` untimed rounds.

    Every round calls each entry once, so a change of machine load hits all of them alike, in a new
    (seeded) random order, so that no entry always runs right after another: with a fixed cyclic
    order, the call that followed onnxruntime's paid for it and a variant looked 25 % faster.
    """
    times: dict[str, list[float]] = {name: [] for name in calls}
    names, order = list(calls), random.Random(0)
    for round_number in range(warmup + rounds):
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            calls[name]()
            if round_number >= warmup:
                times[name].append(time.perf_counter() - start)
    return times
