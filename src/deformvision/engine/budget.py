"""How long a run trains, and how much of it is done (the learning-rate schedules follow that fraction).

A run lasts ``schedule.epochs``, or, with a budget, until ``schedule.max_steps`` optimizer steps or
``schedule.max_seconds`` of training are spent, whichever comes first (see
:class:`~deformvision.engine.config.ScheduleConfig`).
"""

import time
from collections.abc import Callable

from deformvision.engine.config import ScheduleConfig


class Budget:
    """The length of a run and the fraction of it done.

    Training time is counted only while the clock runs (:meth:`start` ... :meth:`stop`): the trainer
    stops it for evaluation and checkpoints. The clock is read at :meth:`tick` (once per optimizer
    step), so every use of the progress between two ticks agrees; ``agree`` makes the processes of a
    distributed run agree too (they must stop at the same step and use the same learning rate).
    ``done_seconds`` is restored from a checkpoint on resume.

    Args:
        config: the schedule (``epochs``, ``max_steps``, ``max_seconds``).
        steps_per_epoch: optimizer steps in one epoch.
        agree: maps this process's reading to the one all processes use (e.g. their mean); called on
            every process at each tick, for time budgets only. ``None``: one process.
    """

    def __init__(
        self, config: ScheduleConfig, steps_per_epoch: int, agree: Callable[[float], float] | None = None
    ) -> None:
        self.has_budget = bool(config.max_steps or config.max_seconds)
        self.epochs = config.epochs
        self.total_steps = config.max_steps if self.has_budget else config.epochs * steps_per_epoch
        self.max_seconds = config.max_seconds
        self.agree = agree if config.max_seconds else None
        self.done_seconds = 0.0  # training seconds before the clock last started
        self.seconds = 0.0  # training seconds at the last tick
        self._started: float | None = None

    def describe(self) -> str:
        """``"15 epochs"``-like text: ``"1000 steps"``, ``"480 s"``, ``"480 s or 1000 steps"``."""
        if not self.has_budget:
            return f"{self.epochs} epochs"
        parts = [f"{self.max_seconds:g} s"] if self.max_seconds else []
        return " or ".join(parts + ([f"{self.total_steps} steps"] if self.total_steps else []))

    def start(self) -> None:
        """Run the training clock (and tick)."""
        if self._started is None:
            self._started = time.perf_counter()
        self.tick()

    def stop(self) -> None:
        """Stop the training clock (the seconds so far are kept; and tick)."""
        if self._started is not None:
            self.done_seconds += time.perf_counter() - self._started
            self._started = None
        self.tick()

    def tick(self) -> None:
        """Read the clock into :attr:`seconds`."""
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        self.seconds = self.done_seconds + running
        if self.agree is not None:
            self.seconds = self.agree(self.seconds)

    def progress(self, step: int) -> float:
        """The fraction of the run done before optimizer step ``step`` (the largest of the budgets used; time as
        of the last :meth:`tick`)."""
        fractions = [step / self.total_steps] if self.total_steps else []
        if self.max_seconds:
            fractions.append(self.seconds / self.max_seconds)
        return max(fractions)

    def spent(self, step: int) -> bool:
        """Whether the run ends before optimizer step ``step``."""
        return self.progress(step) >= 1.0
