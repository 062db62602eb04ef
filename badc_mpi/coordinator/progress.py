"""Progress on rank 0's stderr: one updating line on a TTY, a plain line every 30 s otherwise."""

from __future__ import annotations

import sys
import time
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


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, interval_s: float | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 30.0)
        self.t0 = time.monotonic()
        self._last = self.t0
        self._shown = False

    def update(self, done: int, failed: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
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
