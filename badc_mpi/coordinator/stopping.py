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
from collections.abc import Callable
from typing import Any

STOP_WAIT_S = 5.0  #: after the grace period, how long interrupted attempts and goodbyes may take
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop_handlers(on_stop: Callable[[str], None]) -> dict[int, Any]:
    """Call ``on_stop(signal name)`` on each SIGTERM/SIGINT; returns the handlers replaced."""
    old: dict[int, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        on_stop(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (embedded use)
            pass
    return old


def restore_handlers(old: dict[int, Any]) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)
