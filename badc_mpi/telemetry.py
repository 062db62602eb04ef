"""Telemetry: one JSON line per event, written by rank 0 only.

Events: ``start`` (an attempt began), ``retry`` (an attempt failed and the chunk will run again
after ``backoff_s``), ``success`` and ``failure`` (the chunk's final outcome; exactly one per
chunk). Each line is flushed as soon as the batch it arrived in is handled, and the file is
fsynced at least every second, so ``tail -f`` sees the run live and a crash loses at most a
second. A torn last line (the writer killed mid-write) is tolerated by readers.

The final events double as the resume ledger (see :mod:`badc_mpi.ledger`): a chunk's ``success``
line is written only after its outputs were fsynced and renamed into place on the worker.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

SCHEMA = "badc-mpi.telemetry/1"
START, RETRY, SUCCESS, FAILURE = "start", "retry", "success", "failure"
FINAL_EVENTS = frozenset({SUCCESS, FAILURE})


def utc_iso(epoch_s: float | None) -> str | None:
    """ISO-8601 UTC with milliseconds, e.g. ``2026-11-28T23:15:05.123Z``."""
    if epoch_s is None:
        return None
    stamp = _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def utc_stamp(epoch_s: float) -> str:
    """Compact UTC timestamp for file names, e.g. ``20261128T231505Z``."""
    return _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def telemetry_path(telemetry_dir: str | os.PathLike[str], manifest_paths: list[str], now_s: float) -> Path:
    """``<telemetry-dir>/<manifest-stem>_<UTC timestamp>.jsonl``, never an existing file."""
    stem = Path(manifest_paths[0]).stem if manifest_paths else "run"
    if len(manifest_paths) > 1:
        stem += f"+{len(manifest_paths) - 1}"
    base = Path(telemetry_dir) / f"{stem}_{utc_stamp(now_s)}"
    path = base.with_suffix(".jsonl")
    n = 1
    while path.exists():
        path = Path(f"{base}-{n}.jsonl")
        n += 1
    return path


def sidecar(path: str | os.PathLike[str], suffix: str) -> Path:
    """``run.jsonl`` -> ``run.summary.json`` (suffix ``.summary.json``)."""
    p = Path(path)
    return p.with_name(p.name[: -len(".jsonl")] + suffix if p.name.endswith(".jsonl") else p.name + suffix)


class TelemetryWriter:
    """Append-only JSONL writer: ``write`` buffers, ``flush`` pushes to the OS, fsync every second."""

    def __init__(self, path: str | os.PathLike[str], fsync_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived handle
        self.fsync_interval_s = fsync_interval_s
        self._last_sync = time.monotonic()
        self._dirty = False
        self._unsynced = False
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._dirty = True
        self.lines += 1

    def flush(self) -> None:
        """Flush buffered lines to the OS; fsync when the interval has passed."""
        if self._dirty:
            self._fh.flush()
            self._dirty = False
            self._unsynced = True
        if self._unsynced and time.monotonic() - self._last_sync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            self._fh.flush()
            self._dirty = False
        os.fsync(self._fh.fileno())
        self._unsynced = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Events of a telemetry file; a torn (unterminated) last line is skipped.

    Raises ValueError naming the line for a corrupt line that is not the last one.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not a JSON object ({exc.msg})") from exc
    del torn  # an unterminated last line is a write cut short: ignored by design


# -- records (pure) ------------------------------------------------------------------------
_GPU_KEYS = ("vram_used_mib", "vram_device_mib", "gpu_util_pct_mean", "gpu_util_pct_max")


def bare_record(run_id: str, event: str, static: dict[str, Any], chunk: Any, attempt: int, **fields: Any) -> dict[str, Any]:
    """The common head of every record: schema, identity of the chunk and of the worker."""
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "run_id": run_id,
        "event": event,
        "ts": utc_iso(time.time()),
        "recording_id": chunk.recording_id,
        "chunk_id": chunk.chunk_id,
        "sha256": chunk.sha256,
        "attempt": attempt,
        "rank": static.get("rank"),
        "host": static.get("host"),
        "pid": static.get("pid"),
        "worker": static.get("worker"),
        "gpu_index": static.get("gpu_index"),
        "gpu_uuid": static.get("gpu_uuid"),
        "gpu_name": static.get("gpu_name"),
    }
    record.update(fields)
    return record


def start_record(run_id: str, static: dict[str, Any], chunk: Any, ev: Any) -> dict[str, Any]:
    record = bare_record(run_id, START, static, chunk, ev.attempt, started_at=utc_iso(ev.started_at), command=ev.command)
    if chunk.extra:
        record["meta"] = dict(chunk.extra)
    return record


def result_record(run_id: str, static: dict[str, Any], chunk: Any, ev: Any, event: str, backoff_s: float) -> dict[str, Any]:
    """A ``success`` / ``retry`` / ``failure`` record from a worker's ResultEvent."""
    gpu = ev.gpu or {}
    record = bare_record(
        run_id, event, static, chunk, ev.attempt,
        started_at=utc_iso(ev.started_at),
        finished_at=utc_iso(ev.finished_at),
        runtime_s=round(ev.runtime_s, 4),
        exit_code=ev.exit_code,
        signal=ev.signal,
        failure_class=ev.failure_class,
        reason=ev.reason if not ev.ok else (ev.reason[-500:] if ev.reason else ""),
        command=ev.command,
        backoff_s=backoff_s if event == RETRY else None,
        **{k: gpu.get(k) for k in _GPU_KEYS},
        detections=ev.detections,
        outputs=ev.outputs,
        runner_pid=ev.runner_pid,
        model_version=ev.model_version,
        hawkears_version=ev.hawkears_version,
        metrics=ev.metrics,
    )
    if chunk.extra:
        record["meta"] = dict(chunk.extra)
    return record
