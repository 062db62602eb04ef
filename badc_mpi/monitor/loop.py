"""``badc-mpi monitor``: a run's telemetry, live (the I/O shell around tail, state and view).

Each refresh reads the summary's head first, then the telemetry's new bytes: rank 0 closes the
telemetry before it writes the final summary, so once the summary says the run is over, that
refresh has every line. ``--follow`` ends there (or on Ctrl-C); ``--once`` shows one snapshot.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from badc_mpi.errors import UsageError
from badc_mpi.monitor.liveness import rank0_gone, resume_hint
from badc_mpi.monitor.state import MonitorState, Snapshot
from badc_mpi.monitor.tail import SummaryWatcher, TelemetryTail
from badc_mpi.monitor.view import SPARK_COLS, format_snapshot
from badc_mpi.storage.telemetry import sidecar

#: the cursor home, each line's rest cleared, the screen's rest cleared: a redraw without flicker
HOME, CLEAR_EOL, CLEAR_EOS, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
_SIDECARS = (".ledger.jsonl",)


@dataclass(frozen=True)
class MonitorOptions:
    telemetry: str  #: a telemetry JSONL, or a folder (its newest run's telemetry)
    follow: bool = False
    interval_s: float = 2.0
    spark_cols: int = SPARK_COLS


def _run_stem(name: str) -> str:
    """``site1.part1_<run id>.ledger.jsonl`` -> ``site1.part1_<run id>`` (manifest stems may hold dots)."""
    for suffix in (*_SIDECARS, ".summary.json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolve_telemetry(path: str, follow: bool) -> Path:
    """The telemetry file ``path`` names: the file itself, or a folder's newest ``*.jsonl`` run log."""
    p = Path(path)
    if p.is_dir():
        runs = [f for f in p.glob("*.jsonl") if not f.name.endswith(_SIDECARS)]
        if not runs:
            raise UsageError(
                f"{p}: no telemetry (*.jsonl) in this folder",
                fix="start the run first (`make infer MANIFEST=...`), or name the run's telemetry file (badc-mpi run prints it)",
            )
        return max(runs, key=lambda f: (f.stat().st_mtime, f.name))
    if not p.exists() and not follow:
        raise UsageError(
            f"{p}: no such telemetry file",
            fix="start the run first (`make infer MANIFEST=...`; badc-mpi run prints the telemetry path), "
            "check the path, or add --follow to wait for it",
        )
    if p.name.endswith(_SIDECARS) or p.name.endswith(".summary.json"):
        raise UsageError(
            f"{p}: a sidecar, not the run's telemetry",
            fix=f"name the telemetry beside it: {_run_stem(p.name)}.jsonl",
        )
    return p


def _age_s(path: Path, now_s: float) -> float | None:
    try:
        return max(0.0, now_s - path.stat().st_mtime)
    except OSError:
        return None


class Monitor:
    """One run's telemetry and summary, refreshed on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tail = TelemetryTail(path)
        self.summary = SummaryWatcher(sidecar(path, ".summary.json"))
        self.state = MonitorState()
        self.notices: deque[str] = deque(maxlen=3)
        self.over = False  #: the summary says the run is over and every line of it was read

    def refresh(self, now_s: float) -> Snapshot:
        head = self.summary.poll()
        status = self.tail.check()
        if status.replaced:
            self.state = MonitorState()
            self.notices.append(f"{time.strftime('%H:%M:%S')}: the telemetry {status.replaced}; started over")
        for block in self.tail.blocks():
            self.state.apply(block)
        if head is not None and self.state.run_id and head.run_id and head.run_id != self.state.run_id:
            note = f"the summary is run {head.run_id}'s, not this telemetry's ({self.state.run_id}): ignored"
            if note not in self.notices:
                self.notices.append(note)
            head = None
        self.over = bool(status.exists and head is not None and head.final)
        snap = self.state.snapshot(
            str(self.path), now_s, head, exists=status.exists, size_bytes=status.size_bytes, notices=list(self.notices)
        )
        gone = rank0_gone(
            self.state.header,
            final=head is not None and head.final,
            summary_age_s=snap.summary_age_s,
            telemetry_age_s=_age_s(self.path, now_s),
            host=socket.gethostname(),
        )
        if gone is None:
            return snap
        self.over = True  # --follow ends: nothing more will come
        return dataclasses.replace(snap, gone=gone, resume=resume_hint(self.state.header), eta_s=None)

    def close(self) -> None:
        self.tail.close()


def run_monitor(
    options: MonitorOptions,
    out: TextIO | None = None,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show one snapshot, or with ``follow`` refresh every ``interval_s`` until the run is over;
    on a terminal the view is redrawn in place, elsewhere each snapshot is printed after the last.
    Returns the exit code (0). Ctrl-C (KeyboardInterrupt) is the caller's to catch."""
    out = out or sys.stdout
    if options.interval_s <= 0:
        raise UsageError(f"--interval-s {options.interval_s}: must be above 0", fix="e.g. --interval-s 2")
    monitor = Monitor(resolve_telemetry(options.telemetry, options.follow))
    tty = bool(getattr(out, "isatty", lambda: False)())
    try:
        if not options.follow:
            out.write(format_snapshot(monitor.refresh(clock()), options.spark_cols) + "\n")
            out.flush()
            return 0
        first = True
        while True:
            text = format_snapshot(monitor.refresh(clock()), options.spark_cols)
            if tty:
                out.write(
                    HOME + (CLEAR_SCREEN if first else "") + text.replace("\n", CLEAR_EOL + "\n") + CLEAR_EOL + "\n" + CLEAR_EOS
                )
            else:
                out.write(text + "\n\n")
            out.flush()
            first = False
            if monitor.over:
                return 0
            sleep(options.interval_s)
    finally:
        monitor.close()
