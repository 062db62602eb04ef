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
from typing import Any

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
