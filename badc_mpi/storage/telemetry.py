"""Telemetry: one JSON line per event, written by rank 0 only.

Events: ``start`` (an attempt began), ``retry`` (an attempt failed and the chunk will run again
after ``backoff_s``), ``success`` and ``failure`` (the chunk's final outcome; exactly one per
chunk). Each line is flushed as soon as the batch it arrived in is handled, and the file is
fsynced at least every second, so ``tail -f`` sees the run live and a crash loses at most a
second. A torn last line (the writer killed mid-write) is tolerated by readers.

The final events double as the resume ledger (see :mod:`badc_mpi.storage.ledger`): a chunk's ``success``
line is written only after its outputs were fsynced and renamed into place on the worker.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from badc_mpi.records import Chunk
from badc_mpi.storage.jsonl import complete_lines, dumps

SCHEMA = "badc-mpi.telemetry/1"
START, RETRY, SUCCESS, FAILURE = "start", "retry", "success", "failure"
FINAL_EVENTS = frozenset({SUCCESS, FAILURE})


_second_cache: list[Any] = [None, ""]


def utc_iso(epoch_s: float | None) -> str | None:
    """ISO-8601 UTC with milliseconds, e.g. ``2026-11-28T23:15:05.123Z`` (hot path: cached per second)."""
    if epoch_s is None:
        return None
    whole = int(epoch_s)
    if _second_cache[0] != whole:
        _second_cache[0] = whole
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
    return f"{_second_cache[1]}{int((epoch_s - whole) * 1000):03d}Z"


def utc_stamp(epoch_s: float) -> str:
    """Compact UTC timestamp for file names, e.g. ``20261128T231505Z``."""
    return _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def telemetry_path(telemetry_dir: str | os.PathLike[str], manifest_paths: list[str], now_s: float) -> Path:
    """``<telemetry-dir>/<manifest-stem>_<UTC timestamp>.jsonl``, never an existing file.

    Two runs started within one second get ``_2``, ``_3``... which sort after the first.
    """
    stem = Path(manifest_paths[0]).stem if manifest_paths else "run"
    if len(manifest_paths) > 1:
        stem += f"+{len(manifest_paths) - 1}"
    base = Path(telemetry_dir) / f"{stem}_{utc_stamp(now_s)}"
    path = base.with_suffix(".jsonl")
    n = 2
    while path.exists():
        path = Path(f"{base}_{n}.jsonl")
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
        self.write_line(dumps(record))

    def write_line(self, line: str) -> None:
        """Append one already-encoded record (no newline inside)."""
        self._fh.write(line + "\n")
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
        body, _torn = complete_lines(fh.read())
    for number, raw in enumerate(body.split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {number}: not a JSON object ({exc.msg})") from exc


# -- records (pure) ------------------------------------------------------------------------
# Workers encode their own events (``start_line``, ``result_body``) so that rank 0, the single
# writer, only adds the outcome it decided (``result_line``) and appends: encoding is spread over
# all ranks instead of queueing on rank 0.
_GPU_KEYS = ("vram_used_mib", "vram_device_mib", "gpu_util_pct_mean", "gpu_util_pct_max")


def worker_static(rank: int, pid: int, binding: Any) -> dict[str, Any]:
    """The fields that identify a worker in every record."""
    return {
        "rank": rank,
        "host": binding.host,
        "pid": pid,
        "worker": binding.worker,
        "gpu_index": binding.gpu_index,
        "gpu_uuid": binding.gpu_uuid,
        "gpu_name": binding.gpu_name,
    }


def _identity(static: dict[str, Any], chunk: Chunk, attempt: int) -> dict[str, Any]:
    return {
        "recording_id": chunk.recording_id,
        "chunk_id": chunk.chunk_id,
        "sha256": chunk.sha256,
        "attempt": attempt,
        **static,
    }


def bare_record(run_id: str, event: str, static: dict[str, Any], chunk: Chunk, attempt: int, **fields: Any) -> dict[str, Any]:
    """A whole record built on rank 0 (e.g. a chunk failed before dispatch)."""
    return {"schema": SCHEMA, "run_id": run_id, "event": event, **_identity(static, chunk, attempt), **fields}


def start_line(run_id: str, static: dict[str, Any], chunk: Chunk, attempt: int, started_at: float, command: list[str]) -> str:
    record = bare_record(run_id, START, static, chunk, attempt, started_at=utc_iso(started_at), command=command)
    if chunk.extra:
        record["meta"] = dict(chunk.extra)
    return dumps(record)


def result_body(static: dict[str, Any], chunk: Chunk, ev: Any) -> str:
    """Everything of a ``success``/``retry``/``failure`` record but its head (see result_line)."""
    gpu = ev.gpu or {}
    body = _identity(static, chunk, ev.attempt)
    body.update(
        started_at=utc_iso(ev.started_at),
        finished_at=utc_iso(ev.finished_at),
        runtime_s=round(ev.runtime_s, 4),
        exit_code=ev.exit_code,
        signal=ev.signal,
        failure_class=ev.failure_class,
        reason=ev.reason if not ev.ok else (ev.reason[-500:] if ev.reason else ""),
        command=ev.command,
    )
    for key in _GPU_KEYS:
        body[key] = gpu.get(key)
    body.update(
        detections=ev.detections,
        outputs=ev.outputs,
        runner_pid=ev.runner_pid,
        model_version=ev.model_version,
        hawkears_version=ev.hawkears_version,
        metrics=ev.metrics,
    )
    if chunk.extra:
        body["meta"] = dict(chunk.extra)
    return dumps(body)


_heads: dict[tuple[str, str, float | None], str] = {}


def result_line(run_id: str, event: str, backoff_s: float | None, body: str) -> str:
    """The final record: rank 0's verdict (event, back-off) prepended to the worker's body."""
    key = (run_id, event, backoff_s)
    head = _heads.get(key)
    if head is None:
        head = dumps({"schema": SCHEMA, "run_id": run_id, "event": event, "backoff_s": backoff_s})[:-1] + ","
        if backoff_s is None:  # success/failure heads repeat; retry heads carry a jittered delay
            _heads[key] = head
    return head + body[1:]
