"""How a run stops on SIGTERM/SIGINT (rank 0's side), within SLURM's default KillWait (30 s).

1. The first SIGTERM/SIGINT: rank 0 stops dispatching and lets chunks in flight finish for up to
   ``--grace-s`` (default 20 s); a second signal ends the grace period at once. Other ranks
   ignore both signals (SLURM and mpiexec signal every rank): rank 0 decides.
2. Then every other rank is told to stop, and every rank interrupts its runner: the attempt in
   flight is killed with its process group (a HawkEars worker still loading its models too), and
   the rank's attempt thread gets :data:`STOP_WAIT_S` to end; rank 0 waits as long for the
   others' goodbyes.
3. Rank 0 closes ledger and telemetry, writes the summary (state ``interrupted``), releases the
   output lock and exits 75 with the resume command.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from badc_mpi.coordinator.scheduler import Scheduler
from badc_mpi.logs import get_logger

log = get_logger(__name__)

STOP_WAIT_S = 5.0  #: after the grace period, how long interrupted attempts and goodbyes may take


class StopSignals:
    """While installed, records the first stop signal's name in ``received``; a second sets ``hurry``."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.hurry = False  #: a second signal: stop waiting for the grace period
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        else:
            self.hurry = True

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (embedded use)
                pass

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}


class Drain:
    """Step 1 above, on rank 0's loop: the first signal drains the scheduler and starts the grace
    period; a second ends it at once. :meth:`over` says when the loop must give up waiting."""

    def __init__(self, signals: StopSignals, grace_s: float) -> None:
        self.signals = signals
        self.grace_s = grace_s
        self.deadline: float | None = None  #: monotonic end of the grace period, once draining

    def over(self, scheduler: Scheduler) -> bool:
        """Once per loop iteration (a signal received during planning drains too): True once the
        grace period is over."""
        if self.signals.received and self.deadline is None:
            log.warning(
                "%s: stop dispatching; waiting up to %.0f s for %d chunks in flight",
                self.signals.received,
                self.grace_s,
                scheduler.in_flight_count,
            )
            scheduler.drain()
            self.deadline = time.monotonic() + self.grace_s
        if self.signals.hurry and self.deadline is not None:  # a second signal: no more grace
            self.deadline = min(self.deadline, time.monotonic())
        if self.deadline is not None and time.monotonic() > self.deadline:
            log.warning("grace period over: %d chunks still in flight are left for resume", scheduler.in_flight_count)
            return True
        return False
