"""SIGTERM/SIGINT on rank 0: the first asks for a drain (stop dispatching, let chunks in flight
finish within ``--grace-s``), a second one stops waiting. SLURM sends SIGTERM at the time limit."""

from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    """While installed, records the first stop signal's name in ``received``."""

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
