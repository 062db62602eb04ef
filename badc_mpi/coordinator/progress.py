"""Progress on rank 0's stderr: one updating line on a TTY; elsewhere (a log, a SLURM output
file) plain lines: the first at once (the total), then after 2, 4, 8, ... s up to the steady
interval (30 s by default), so a short or young run's log shows it moving."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_progress(done: int, total: int, failed: int, elapsed_s: float) -> str:
    """``done/total (pct) | failed | chunks/s | ETA`` for ``done`` final chunks after ``elapsed_s``."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    left = max(0, total - done)
    if rate > 0:
        eta_s = int(left / rate)
        eta = f"{eta_s // 3600:d}:{eta_s % 3600 // 60:02d}:{eta_s % 60:02d}"
    else:
        eta = "--:--:--"
    pct = 100.0 * done / total if total else 100.0
    return f"{done}/{total} chunks ({pct:.1f}%) | failed {failed} | {rate:.2f} chunks/s | ETA {eta}"


FIRST_GAP_S = 2.0  #: a log's second progress line comes this long after the first; the gap then doubles


class Progress:
    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 30.0)
        self.clock = clock
        self.t0 = clock()
        self._last = self.t0
        self._shown = False
        self._printed = 0
        self._gap_s = self.interval_s if self.tty else min(FIRST_GAP_S, self.interval_s)

    def update(self, done: int, failed: int, force: bool = False) -> None:
        now = self.clock()
        first = not self.tty and self._printed == 0
        if not force and not first and now - self._last < self._gap_s:
            return
        self._last = now
        self._printed += 1
        if not first:
            self._gap_s = min(self._gap_s * 2, self.interval_s)
        line = format_progress(done, self.total, failed, now - self.t0)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self._shown = True
        else:
            self.stream.write(f"badc-mpi progress: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
