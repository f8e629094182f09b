"""The progress of a run: a live bar on a terminal, one log line per unit (epoch or experience)
otherwise, as training tools log when their output goes to a file."""

from __future__ import annotations

import time
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["RunProgress"]


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class RunProgress:
    """Reports a run of ``units`` units, of which ``start`` were done by an earlier process.

    On a terminal: one bar over the optimizer steps of the whole run (its total is re-estimated at
    each unit), with the running loss and accuracy. Otherwise one line per finished unit::

        lipconv_s.digits_hkr epoch 3/40: loss 0.1234, accuracy 91.20 %, 0.8 s, ETA 0:00:30

    where the ETA is the mean duration of the units this process trained times the units left.

    Args:
        console: where to report; nothing is shown when ``enabled`` is False.
        name: the model's name, in every line.
        unit: what a unit is ('epoch', 'experience').
    """

    def __init__(self, console: Console, name: str, unit: str, units: int, start: int, enabled: bool) -> None:
        self.console, self.name, self.unit, self.units, self.start = console, name, unit, units, start
        self.live = enabled and console.is_terminal and not console.is_dumb_terminal
        self.lines = enabled and not self.live
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )
        self.task = self.bar.add_task(name, total=None, loss=float("nan"), acc=float("nan"))
        self.steps_done = 0
        self.started = self.unit_started = time.perf_counter()

    def __enter__(self) -> RunProgress:
        self.bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.bar.stop()

    def begin_unit(self, unit: int, steps_left: int) -> None:
        """Unit ``unit`` (0-based) starts; ``steps_left`` optimizer steps remain in the run."""
        self.unit_started = time.perf_counter()
        self.bar.update(
            self.task,
            description=f"{self.name} {self.unit} {unit + 1}/{self.units}",
            total=self.steps_done + steps_left,
        )

    def step(self, loss: float, acc: float) -> None:
        """One optimizer step done; ``loss`` and ``acc`` are the unit's running means."""
        self.steps_done += 1
        self.bar.update(self.task, completed=self.steps_done, loss=loss, acc=acc)

    def end_unit(self, unit: int, record: dict[str, Any]) -> None:
        """Unit ``unit`` finished with ``record`` (its mean ``loss`` and ``accuracy``)."""
        if not self.lines:
            return
        now = time.perf_counter()
        trained = unit + 1 - self.start
        eta = (now - self.started) / trained * (self.units - unit - 1)
        self.console.print(
            f"{self.name} {self.unit} {unit + 1}/{self.units}: loss {record['loss']:.4f}, "
            f"accuracy {100 * record['accuracy']:.2f} %, {now - self.unit_started:.1f} s, "
            f"ETA {_duration(eta)}",
            highlight=False,
            soft_wrap=True,
        )
