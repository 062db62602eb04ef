"""Run summaries: the summary JSON, the failed-chunks manifest, the workers CSV, the final table.

Pure builders (``build_*``, ``format_*``) and thin atomic writers (``write_*``). Rank 0 writes
the summary at least every 30 s, at the end, on failure and on SIGTERM/SIGINT; the telemetry
(ledger) stays the truth, the summary is a snapshot of it.

Summary schema ``badc-mpi.summary/2``: the run's head (meta, ``state``, ``counts``, ``workers``)
then ``chunks``, which lists only the chunks of this run that failed or are unfinished (in
flight, backing off): a 10,000,000-chunk run rewrites a few kilobytes per snapshot, not a
gigabyte. Which chunks succeeded is in the append-only ledger (``ledger`` names it; ``resume_ledgers``
the earlier runs' ledgers whose chunks this run skipped). Schema ``/1`` listed every chunk.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from badc_mpi.records import FAILED_CSV_COLUMNS, STANDARD_COLUMNS, ChunkState, metadata_columns
from badc_mpi.storage.atomic import atomic_write_text
from badc_mpi.storage.jsonl import dumps

SUMMARY_SCHEMA = "badc-mpi.summary/2"
WORKER_COLUMNS = (
    "worker",
    "host",
    "gpu",
    "chunks",
    "success",
    "failure",
    "retries",
    "failed_attempts",
    "busy_s",
    "mean_runtime_s",
    "status",
    "note",
)


@dataclass
class WorkerStats:
    """Totals for one worker (``gpu<idx>@host`` / ``cpu<n>@host``)."""

    worker: str
    host: str
    rank: int
    gpu: str  #: GPU UUID, or ``cpu``
    gpu_index: int | None = None
    gpu_name: str | None = None
    chunks: int = 0  #: chunks whose final outcome happened here
    success: int = 0
    failure: int = 0
    retries: int = 0  #: failed attempts that were retried
    failed_attempts: int = 0
    attempts: int = 0
    busy_s: float = 0.0
    status: str = "ok"  #: ``ok`` | ``failed`` (runner cannot start) | ``quarantined`` | ``lost``
    note: str = ""  #: why, when the status is not ``ok``

    def count(self, event: str, runtime_s: float) -> None:
        """One attempt's end: ``success``, ``retry`` or ``failure`` (the chunk's final outcome)."""
        self.attempts += 1
        self.busy_s += runtime_s
        if event == "success":
            self.success += 1
            self.chunks += 1
        elif event == "retry":
            self.retries += 1
            self.failed_attempts += 1
        else:
            self.failure += 1
            self.failed_attempts += 1
            self.chunks += 1

    @property
    def mean_runtime_s(self) -> float:
        return self.busy_s / self.attempts if self.attempts else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "host": self.host,
            "gpu": self.gpu,
            "chunks": self.chunks,
            "success": self.success,
            "failure": self.failure,
            "retries": self.retries,
            "failed_attempts": self.failed_attempts,
            "busy_s": round(self.busy_s, 3),
            "mean_runtime_s": round(self.mean_runtime_s, 3),
            "status": self.status,
            "note": self.note,
        }


def chunk_entry(state: ChunkState) -> dict[str, Any]:
    """One chunk of this run (its key ``recording_id/chunk_id`` names it; the run_id is the summary's)."""
    return {
        "status": state.status,
        "attempts": state.attempts,
        "retries": state.retries,
        "worker": state.worker,
        "runtime_s": round(state.runtime_s, 3),
        "last_backoff_s": state.last_backoff_s,
        "failure_class": state.failure_class,
        "last_error": state.last_error,
        "outputs": state.outputs,
        "detections": state.detections,
        "sha256": state.chunk.sha256,
    }


_encode = dumps


def entry_json(state: ChunkState) -> str:
    """A chunk's summary entry, encoded (rank 0 encodes each chunk once, when it becomes final)."""
    return _encode(chunk_entry(state))


def summary_counts(counts: dict[str, int], carried: dict[str, int]) -> dict[str, int]:
    """Totals over this run's chunks and those resume carried over (both: chunks per status)."""
    skipped = sum(carried.values())
    return {
        "total": sum(counts.values()) + skipped,
        "success": counts.get("success", 0) + carried.get("success", 0),
        "failed": counts.get("failed", 0) + carried.get("failed", 0),
        "pending": counts.get("pending", 0),
        "in_flight": counts.get("in_flight", 0),
        "backoff": counts.get("backoff", 0),
        "skipped": skipped,
    }


def render_summary(
    meta: dict[str, Any],
    counts: dict[str, int],
    workers: Iterable[WorkerStats],
    entries: Iterable[tuple[str, str]],
    *,
    state: str,
    run_id: str,
) -> str:
    """The summary document as JSON text; ``entries`` are ``(key, encoded entry)`` pairs of the
    chunks that failed or are unfinished (``chunks`` comes last: readers of the head stop there).

    Chunks an earlier run finished (skipped by resume) are counted (``counts.skipped``), not listed.
    """
    head = {
        "schema": SUMMARY_SCHEMA,
        **meta,
        "run_id": run_id,
        "state": state,
        "counts": counts,
        "workers": {
            w.worker: {
                **w.row(),
                "rank": w.rank,
                "gpu_index": w.gpu_index,
                "gpu_name": w.gpu_name,
                "attempts": w.attempts,
            }
            for w in workers
        },
    }
    body = ",".join(f"{_encode(key)}:{text}" for key, text in entries)
    return _encode(head)[:-1] + ',"chunks":{' + body + "}}\n"


def write_summary(path: str, text: str) -> None:
    atomic_write_text(path, text)


def failed_rows(states: Iterable[ChunkState], extra_columns: list[str]) -> list[dict[str, str]]:
    """Failed chunks as manifest rows (absolute ``source_path``) plus ``badc_failure_class`` and
    ``badc_failure_reason`` (annotations: read back as a manifest, they are not chunk metadata)."""
    rows = []
    for s in states:
        if s.status != "failed":
            continue
        row = dict(s.chunk.to_row())
        row["source_path"] = s.chunk.input_path  # the CSV lives elsewhere: keep paths valid
        for col in extra_columns:
            row.setdefault(col, "")
        row[FAILED_CSV_COLUMNS[0]] = s.failure_class or ""
        row[FAILED_CSV_COLUMNS[1]] = " ".join((s.last_error or "").split())[:1000]
        rows.append(row)
    return rows


def csv_text(columns: list[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_failed_csv(path: str, states: Iterable[ChunkState], columns: list[str]) -> int:
    """Write the failed chunks as a manifest; returns how many. ``columns``: manifest header."""
    extra = [c for c in columns if c in STANDARD_COLUMNS or c in metadata_columns(columns)]
    rows = failed_rows(states, extra)
    atomic_write_text(path, csv_text(extra + list(FAILED_CSV_COLUMNS), rows))
    return len(rows)


def write_workers_csv(path: str, workers: Iterable[WorkerStats]) -> None:
    atomic_write_text(path, csv_text(list(WORKER_COLUMNS), (w.row() for w in workers)))


def format_worker_table(workers: Iterable[WorkerStats]) -> str:
    """The per-worker table printed at the end of a run."""
    rows = [w.row() for w in sorted(workers, key=lambda w: w.rank)]
    header = list(WORKER_COLUMNS)
    cells = [header] + [[str(r[c]) for c in header] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def worst_chunks(states: Iterable[ChunkState], limit: int = 10) -> list[ChunkState]:
    """Failed chunks first, then the most retried, for the end-of-run warning."""
    bad = [s for s in states if s.status == "failed" or s.retries > 0]
    bad.sort(key=lambda s: (s.status != "failed", -s.retries, s.chunk.key))
    return bad[:limit]


def format_final_report(
    doc: dict[str, Any],
    workers: Iterable[WorkerStats],
    states: Iterable[ChunkState],
    paths: dict[str, str | None],
    elapsed_s: float,
) -> tuple[str, str]:
    """(report for stdout, warning text or "") printed by rank 0 at the end of a run."""
    c = doc["counts"]
    rate = (c["success"] + c["failed"] - c.get("skipped", 0)) / elapsed_s if elapsed_s > 0 else 0.0
    lines = [
        "",
        format_worker_table(workers),
        "",
        f"run {doc['run_id']} {doc['state']}: {c['total']} chunks: {c['success']} succeeded, {c['failed']} failed"
        + (f", {c['skipped']} skipped (resume)" if c.get("skipped") else "")
        + (
            f", {c['pending'] + c['in_flight'] + c['backoff']} not finished"
            if c["pending"] + c["in_flight"] + c["backoff"]
            else ""
        )
        + f" in {elapsed_s:.1f} s ({rate:.2f} chunks/s)",
    ]
    for name, path in paths.items():
        if path:
            lines.append(f"  {name:<10} {path}")
    worst = worst_chunks(states)
    warn = ""
    if worst:
        warn_lines = [f"{sum(1 for _ in worst)} chunk(s) retried or failed; the worst:"]
        for s in worst:
            warn_lines.append(
                f"  {s.chunk.key}: {s.status}, {s.attempts} attempt(s), last {s.failure_class or '-'}: "
                + " ".join((s.last_error or "").split())[:200]
            )
        warn = "\n".join(warn_lines)
    return "\n".join(lines), warn
