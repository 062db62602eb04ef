"""The monitor's text (pure): a :class:`~badc_mpi.monitor.state.Snapshot` to plain lines.

No ANSI codes here: the same text goes to a SLURM log (``--once``) and, redrawn in place, to a
terminal (``--follow``; the loop adds the cursor codes).
"""

from __future__ import annotations

import math
import re
import time

from badc_mpi.monitor.state import Snapshot, WorkerRow

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_COLS = 24
ERROR_COLS = 100
_SPACE = re.compile(r"\s+")


def rebucket(values: list[int], width: int) -> tuple[list[int], int]:
    """``values`` summed in groups of ``factor`` consecutive buckets so that at most ``width``
    remain (groups start at the first bucket; the last may be partial); returns (sums, factor)."""
    if width <= 0 or not values:
        return [], 1
    factor = max(1, math.ceil(len(values) / width))
    return [sum(values[i : i + factor]) for i in range(0, len(values), factor)], factor


def sparkline(values: list[int], top: int | None = None) -> str:
    """One block character per value, scaled so that ``top`` (default: the largest) is █; zero is
    a blank, any other value at least ▁."""
    top = max(values, default=0) if top is None else top
    if top <= 0:
        return " " * len(values)
    out = []
    for v in values:
        if v <= 0:
            out.append(" ")
        else:
            out.append(SPARK_BLOCKS[min(len(SPARK_BLOCKS), max(1, math.ceil(v / top * len(SPARK_BLOCKS)))) - 1])
    return "".join(out)


def format_duration(seconds: float | None) -> str:
    """``0:04:05``, ``2d 03:04:05``; ``-`` for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(max(0.0, seconds)))
    days, s = divmod(s, 86400)
    text = f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def format_span(seconds: float) -> str:
    """A bucket width: ``1 s``, ``16 s``, ``4.3 min``, ``2.1 h``."""
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def one_line(text: str, width: int) -> str:
    """``text`` on one line (whitespace runs become one space), cut to ``width`` with an ellipsis."""
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _classes(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items()) or "none"


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch_s))


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.1f} s ago" if seconds < 120 else f"{format_duration(seconds)} ago"


def format_header(snap: Snapshot) -> list[str]:
    lines = [f"badc-mpi monitor: {snap.path}"]
    if not snap.exists:
        lines.append("  waiting for the telemetry file to appear (badc-mpi run creates it when rank 0 has planned)")
        return lines + [f"  {n}" for n in snap.notices]
    state = snap.state or "running (no summary yet; rank 0 writes one every 30 s)"
    if snap.summary_age_s is not None:
        state += f" (summary {_ago(snap.summary_age_s)})"
    if snap.gone:
        state = f"DEAD: {snap.gone}"
    lines.append(f"run       {snap.run_id or '-'}  {state}  last event {_ago(snap.last_event_age_s)}")
    done = f"{snap.finished:,}"
    if snap.total:
        done += f" / {snap.total:,} chunks ({100.0 * snap.finished / snap.total:.1f}%)"
    else:
        done += " chunks (total not known: a run before the total was in its header; the first summary brings it)"
    skipped = f", {snap.skipped:,} skipped (resume)" if snap.skipped else ""
    lines.append(
        f"progress  {done}: {snap.success:,} succeeded, {snap.failure:,} failed{skipped} | "
        f"{snap.retries:,} retries | in flight {snap.in_flight:,}"
    )
    eta = "-" if snap.eta_s is None else format_duration(snap.eta_s)
    if snap.state in ("finished", "interrupted", "stopped", "aborted"):
        eta = f"- (run {snap.state})"
    elif snap.gone:
        eta = "- (rank 0 gone)"
    lines.append(
        f"rate      {snap.rate_chunks_per_s:,.2f} chunks/s (last {snap.rate_window_s:.0f} s), "
        f"{snap.mean_rate_chunks_per_s:,.2f} mean over {format_duration(snap.elapsed_s)} | ETA {eta}"
    )
    lines.append(
        f"failures  failed attempts by class: {_classes(snap.attempts_by_class)} | "
        f"failed chunks by class: {_classes(snap.failures_by_class)}"
    )
    bad = f" ({snap.bad_lines:,} unreadable, skipped)" if snap.bad_lines else ""
    lines.append(f"telemetry {snap.size_bytes:,} bytes, {snap.lines:,} lines{bad}")
    if snap.resume:
        lines.append(f"resume    {snap.resume}")
    return lines + [f"note      {n}" for n in snap.notices]


_COLUMNS = (
    "worker",
    "rank",
    "done",
    "failed",
    "retries",
    "f.att",
    "busy",
    "mean_s",
    "util%",
    "max%",
    "vram_MiB",
    "max",
    "of",
    "idle_s",
)


def _cells(row: WorkerRow) -> list[str]:
    return [
        row.worker,
        "-" if row.rank is None else str(row.rank),
        f"{row.success:,}",
        f"{row.failure:,}",
        f"{row.retries:,}",
        f"{row.failed_attempts:,}",
        str(row.in_flight),
        _num(row.runtime_mean_s, 2),
        _num(row.util_last_pct),
        _num(row.util_max_pct),
        _num(row.vram_last_mib),
        _num(row.vram_max_mib),
        _num(row.vram_device_mib),
        _idle(row.idle_s),
    ]


def _idle(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}" if seconds < 100 else format_duration(seconds)


def format_workers(snap: Snapshot, spark_cols: int = SPARK_COLS) -> list[str]:
    if not snap.workers:
        return ["no events yet"]
    finished = [rebucket(r.finished_buckets, spark_cols) for r in snap.workers]
    retried = [rebucket(r.retry_buckets, spark_cols) for r in snap.workers]
    factor = max((f for _, f in finished), default=1)
    top_done = max((max(v, default=0) for v, _ in finished), default=0)
    top_retry = max((max(v, default=0) for v, _ in retried), default=0)
    rows = [_cells(r) for r in snap.workers]
    widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(_COLUMNS)]
    done_head = f"finished (█={top_done:,})".ljust(spark_cols)
    retry_head = f"retries (█={top_retry:,})"

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"{line(list(_COLUMNS))}  {done_head}  {retry_head}"]
    for cells, (done, _), (retry, _) in zip(rows, finished, retried):
        out.append(f"{line(cells)}  {sparkline(done, top_done).ljust(spark_cols)}  {sparkline(retry, top_retry)}".rstrip())
    if snap.timeline_start_s is not None:
        out.append(
            f"sparklines: one column = {format_span(snap.bucket_s * factor)} from {_clock(snap.timeline_start_s)} UTC; "
            "busy = attempts in flight, f.att = failed attempts, util% = last attempt's mean"
        )
    return out


def format_errors(snap: Snapshot, width: int = ERROR_COLS) -> list[str]:
    failing = [r for r in snap.workers if r.last_error is not None]
    if not failing:
        return []
    name_w = max(len(r.worker) for r in failing)
    out = ["last errors:"]
    for r in failing:
        err = r.last_error
        assert err is not None
        when = _clock(err.at_ms / 1000) if err.at_ms >= 0 else "-"
        text = f"{err.event} {err.failure_class or '-'}: {err.reason or '(no reason given)'}"
        out.append(f"  {r.worker.ljust(name_w)}  {when}  {one_line(text, width)}")
    return out


def format_snapshot(snap: Snapshot, spark_cols: int = SPARK_COLS, error_cols: int = ERROR_COLS) -> str:
    """The whole view, plain text, ending without a newline."""
    parts = format_header(snap)
    if snap.exists:
        parts += [""] + format_workers(snap, spark_cols)
        errors = format_errors(snap, error_cols)
        if errors:
            parts += [""] + errors
    return "\n".join(parts)
