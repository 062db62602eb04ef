"""Telemetry: one JSON line per event, written by rank 0 only.

Events: ``run`` (the header: schema, run id, the run's facts), ``worker`` (one rank's worker is
ready: host, pid, GPU, runner, model and HawkEars versions, command template; written again when
one of these changes), ``start`` (an attempt began), ``retry`` (an attempt failed and the chunk will
run again after ``backoff_s``), ``success`` and ``failure`` (the chunk's final outcome; exactly one
per chunk). Per-chunk lines name their ``rank`` and nothing that is the same for every chunk of
that worker (:func:`with_facts` joins the facts back); docs/telemetry.md has the format. Each line is flushed as soon as the batch it arrived in is handled, and the file is
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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from badc_mpi.records import Chunk
from badc_mpi.storage.jsonl import complete_lines, dumps

SCHEMA = "badc-mpi.telemetry/2"
START, RETRY, SUCCESS, FAILURE = "start", "retry", "success", "failure"
RUN, WORKER = "run", "worker"
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


def telemetry_path(telemetry_dir: str | os.PathLike[str], manifest_paths: list[str], run_id: str) -> Path:
    """``<telemetry-dir>/<manifest-stem>_<run id>.jsonl``: the run id (its UTC start and 8 random
    hex digits) makes every run's files its own, whatever its manifests are called: two runs of
    ``site1.part1.csv`` and ``site1.part2.csv`` started in one second (an ``sbatch --array``) get
    ``site1.part1_<id>.jsonl`` and ``site1.part2_<id>.jsonl``. Names sort by start within a stem.
    Pure: planning checks that none of the run's files exists (:func:`run_files`), and the writers
    create them exclusively."""
    stem = Path(manifest_paths[0]).stem if manifest_paths else "run"
    if len(manifest_paths) > 1:
        stem += f"+{len(manifest_paths) - 1}"
    return Path(telemetry_dir) / f"{stem}_{run_id}.jsonl"


#: the files of a run beside its telemetry (the ledger's suffix is ledger.LEDGER_SUFFIX)
RUN_SIDECARS = (".ledger.jsonl", ".summary.json", ".failed.csv", ".workers.csv")


def run_files(path: str | os.PathLike[str]) -> list[Path]:
    """A run's telemetry and every file named after it."""
    return [Path(path), *(sidecar(path, suffix) for suffix in RUN_SIDECARS)]


def sidecar(path: str | os.PathLike[str], suffix: str) -> Path:
    """``run.jsonl`` -> ``run.summary.json`` (suffix ``.summary.json``)."""
    p = Path(path)
    return p.with_name(p.name[: -len(".jsonl")] + suffix if p.name.endswith(".jsonl") else p.name + suffix)


class TelemetryWriter:
    """Append-only JSONL writer: ``write`` buffers, ``flush`` pushes to the OS, fsync every second."""

    def __init__(self, path: str | os.PathLike[str], fsync_interval_s: float = 1.0, *, exclusive: bool = False) -> None:
        """``exclusive``: create the file, never append to an existing one (a run's own telemetry:
        FileExistsError when another run has that name)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "x" if exclusive else "a", encoding="utf-8")  # noqa: SIM115 - long-lived handle
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
# Workers encode their own events (``worker_line``, ``start_line``, ``result_body``) so that rank
# 0, the single writer, only adds the outcome it decided (``result_line``) and appends: encoding is
# spread over all ranks instead of queueing on rank 0. Facts that do not change from one chunk to
# the next (host, pid, GPU, runner, versions, command template) are written once, in the ``run``
# header and in each worker's ``worker`` event; per-chunk lines carry the ``rank`` to join them
# (:func:`with_facts`). A key whose value would be null is left out of a per-chunk line.
#: the attempt's GPU figures per chunk (the sampler's device-wide ``vram_device_mib`` stays out: the
#: worker event names the device and its memory; ``make gpu-check`` reports it)
_GPU_KEYS = ("vram_used_mib", "gpu_util_pct_mean", "gpu_util_pct_max")
#: keys of a ``worker`` event that are bookkeeping, not facts (never copied into chunk records)
_NOT_FACTS = frozenset({"event", "at", "schema"})
#: a final line keeps a success's ``reason`` (e.g. stderr of a command) up to this many characters
SUCCESS_REASON_CHARS = 200


def worker_static(rank: int, pid: int, binding: Any) -> dict[str, Any]:
    """The facts that identify a worker (its ``worker`` event starts with them)."""
    return {
        "rank": rank,
        "worker": binding.worker,
        "host": binding.host,
        "pid": pid,
        "gpu_index": binding.gpu_index,
        "gpu_uuid": binding.gpu_uuid,
        "gpu_name": binding.gpu_name,
        "gpu_memory_total_mib": getattr(binding, "gpu_memory_total_mib", None),
    }


def who(static: dict[str, Any]) -> dict[str, Any]:
    """What every per-chunk line says of its worker: its ``rank``, the key of its ``worker`` event."""
    return {"rank": static.get("rank")}


def run_record(run_id: str, at: float, **fields: Any) -> dict[str, Any]:
    """The first line of a run's telemetry: the schema, the run id and the run's own facts."""
    return {"schema": SCHEMA, "event": RUN, "run_id": run_id, "at": utc_iso(at), **fields}


def worker_line(facts: dict[str, Any], at: float) -> str:
    """A ``worker`` event: the facts of one rank's worker, valid for its lines until the next one."""
    return dumps({"event": WORKER, "at": utc_iso(at), **facts})


def _identity(who_: dict[str, Any], chunk: Chunk, attempt: int) -> dict[str, Any]:
    return {**who_, "recording_id": chunk.recording_id, "chunk_id": chunk.chunk_id, "attempt": attempt}


def bare_record(event: str, who_: dict[str, Any], chunk: Chunk, attempt: int, **fields: Any) -> dict[str, Any]:
    """A whole per-chunk record built on rank 0 (a chunk failed before dispatch, a lost attempt)."""
    record = {"event": event, **_identity(who_, chunk, attempt)}
    record.update((k, v) for k, v in fields.items() if v is not None)
    return record


def start_line(who_: dict[str, Any], chunk: Chunk, attempt: int, started_at: float) -> str:
    """A ``start`` record (the chunk's extra manifest columns are in the manifest and the
    detections, not here)."""
    return dumps({"event": START, **_identity(who_, chunk, attempt), "started_at": utc_iso(started_at)})


def result_body(
    who_: dict[str, Any], chunk: Chunk, ev: Any, metrics: dict[str, Any] | None = None, runner_pid: int | None = None
) -> str:
    """Everything of a ``success``/``retry``/``failure`` record but its head (see result_line).

    ``metrics``: the attempt's per-chunk metrics (the runner's constant ones went to the
    ``worker`` event); ``runner_pid``: the attempt's process when it is not the worker's own.
    """
    body = _identity(who_, chunk, ev.attempt)
    body["finished_at"] = utc_iso(ev.finished_at)
    body["runtime_s"] = round(ev.runtime_s, 3)
    if ev.exit_code is not None:
        body["exit_code"] = ev.exit_code
    if ev.signal is not None:
        body["signal"] = ev.signal
    if not ev.ok:
        body["failure_class"] = ev.failure_class
        body["reason"] = ev.reason
    elif ev.reason:
        body["reason"] = ev.reason[-SUCCESS_REASON_CHARS:]
    if ev.detections is not None:
        body["detections"] = ev.detections
    gpu = ev.gpu
    if gpu:  # whole MiB and percent: the sampler's tenths say nothing more per chunk
        for key in _GPU_KEYS:
            value = gpu.get(key)
            if value is not None:
                body[key] = round(value)
    if runner_pid is not None:
        body["runner_pid"] = runner_pid
    if metrics:
        body["metrics"] = metrics
    return dumps(body)


_heads: dict[tuple[str, float | None], str] = {}


def result_line(event: str, backoff_s: float | None, body: str) -> str:
    """The final record: rank 0's verdict (event, back-off) prepended to the worker's body."""
    key = (event, backoff_s)
    head = _heads.get(key)
    if head is None:
        fields = {"event": event} if backoff_s is None else {"event": event, "backoff_s": backoff_s}
        head = dumps(fields)[:-1] + ","
        if backoff_s is None:  # success/failure heads repeat; retry heads carry a jittered delay
            _heads[key] = head
    return head + body[1:]


# -- reading (pure) ----------------------------------------------------------------------------
def with_facts(events: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Per-chunk records with the facts of their run and worker filled in, as if every line said
    everything: ``run_id``, ``schema``, then the latest ``worker`` event of the line's rank (host,
    pid, GPU, runner, versions, command template...). The record's own keys win, so files of
    schema 1 (every line complete) read the same. ``run`` and ``worker`` events are not yielded.
    """
    run: dict[str, Any] = {}
    facts: dict[Any, dict[str, Any]] = {}
    for record in events:
        event = record.get("event")
        if event == RUN:
            run = {"schema": record.get("schema"), "run_id": record.get("run_id")}
        elif event == WORKER:
            facts[record.get("rank")] = {k: v for k, v in record.items() if k not in _NOT_FACTS}
        else:
            yield {**run, **facts.get(record.get("rank"), {}), **record}
