"""Telemetry lines to columns, only the fields the monitor shows (no I/O).

Per-chunk lines (``start``, ``retry``, ``success``, ``failure``) carry all the monitor needs;
a ``worker`` event (code -1) names a worker before its first chunk, the ``run`` header names none.

A block of complete lines goes through ``pyarrow.json`` with an explicit schema that ignores every
other field: a 1,000,000-line log parses in about a second where ``json.loads`` per line takes
several. A block pyarrow refuses (a corrupt line, a field of an unexpected type) is parsed again
line by line; lines that are not JSON objects are counted in ``bad_lines`` and skipped.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from badc_mpi.storage.telemetry import FAILURE, RETRY, START, SUCCESS

#: event codes of :attr:`Columns.event`; -1 is any other event
EVENT_CODES = {START: 0, SUCCESS: 1, RETRY: 2, FAILURE: 3}
E_START, E_SUCCESS, E_RETRY, E_FAILURE = 0, 1, 2, 3
_TIME = pa.timestamp("ms", tz="UTC")
SCHEMA = pa.schema(
    [
        ("event", pa.string()),
        ("worker", pa.string()),
        ("rank", pa.int64()),
        ("runtime_s", pa.float64()),
        ("failure_class", pa.string()),
        ("reason", pa.string()),
        ("started_at", _TIME),
        ("finished_at", _TIME),
        ("gpu_util_pct_mean", pa.float64()),
        ("gpu_util_pct_max", pa.float64()),
        ("vram_used_mib", pa.float64()),
        ("vram_device_mib", pa.float64()),
        ("gpu_memory_total_mib", pa.float64()),  #: the worker event's device size (schema 2's "of")
    ]
)
_PARSE = pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")
_THREADS_FROM_BYTES = 4 << 20  # small (follow) blocks parse on this thread
_PA_BLOCK_BYTES = 4 << 20  # pyarrow's own block (per thread): a longer line sends its block to json.loads
_FLOATS = ("runtime_s", "gpu_util_pct_mean", "gpu_util_pct_max", "vram_used_mib", "vram_device_mib", "gpu_memory_total_mib")


@dataclass
class Columns:
    """One block's events as arrays (nulls: -1 for codes, indices and times; NaN for floats)."""

    n: int
    event: np.ndarray  #: int8 EVENT_CODES
    worker: np.ndarray  #: int32 index into worker_names
    worker_names: list[str]
    rank: np.ndarray  #: int64
    failure_class: np.ndarray  #: int32 index into class_names
    class_names: list[str]
    started_ms: np.ndarray  #: int64 epoch milliseconds
    finished_ms: np.ndarray
    floats: dict[str, np.ndarray]  #: runtime_s, gpu_util_pct_mean/max, vram_used_mib, vram_device_mib
    reasons: Any  #: a pyarrow array or a list, indexable by row
    bad_lines: int = 0

    def keep(self, mask: np.ndarray) -> Columns:
        """Only the rows where ``mask`` is true (e.g. without the ``run`` header)."""
        rows = np.flatnonzero(mask)
        reasons = self.reasons.take(pa.array(rows)) if isinstance(self.reasons, pa.Array) else [self.reasons[i] for i in rows]
        return Columns(
            n=len(rows),
            event=self.event[rows],
            worker=self.worker[rows],
            worker_names=self.worker_names,
            rank=self.rank[rows],
            failure_class=self.failure_class[rows],
            class_names=self.class_names,
            started_ms=self.started_ms[rows],
            finished_ms=self.finished_ms[rows],
            floats={k: v[rows] for k, v in self.floats.items()},
            reasons=reasons,
            bad_lines=self.bad_lines,
        )

    def reason_at(self, row: int) -> str | None:
        value = self.reasons[row]
        return value.as_py() if hasattr(value, "as_py") else value


def parse_block(block: bytes | memoryview) -> Columns:
    """The events of ``block`` (complete lines, each ending in a newline)."""
    try:
        table = pj.read_json(
            pa.py_buffer(block),
            read_options=pj.ReadOptions(use_threads=len(block) > _THREADS_FROM_BYTES, block_size=_PA_BLOCK_BYTES),
            parse_options=_PARSE,
        )
    except (pa.ArrowException, ValueError):
        return parse_lines(bytes(block))
    return _from_table(table)


def _array(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _encode(arr: pa.Array) -> tuple[np.ndarray, list[str]]:
    enc = pc.dictionary_encode(arr)
    return enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32), enc.dictionary.to_pylist()


def _event_codes(idx: np.ndarray, names: list[str]) -> np.ndarray:
    lut = np.array([EVENT_CODES.get(name, -1) for name in names] + [-1], dtype=np.int8)
    return lut[idx]  # index -1 (null) reads the trailing -1


def _from_table(table: pa.Table) -> Columns:
    if table.num_rows == 0:
        return empty_columns()
    ev_idx, ev_names = _encode(_array(table, "event"))
    worker, worker_names = _encode(_array(table, "worker"))
    fclass, class_names = _encode(_array(table, "failure_class"))
    nan = pa.scalar(math.nan)
    return Columns(
        n=table.num_rows,
        event=_event_codes(ev_idx, ev_names),
        worker=worker,
        worker_names=worker_names,
        rank=_array(table, "rank").fill_null(-1).to_numpy(zero_copy_only=False),
        failure_class=fclass,
        class_names=class_names,
        started_ms=_array(table, "started_at").cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False),
        finished_ms=_array(table, "finished_at").cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False),
        floats={k: _array(table, k).fill_null(nan).to_numpy(zero_copy_only=False) for k in _FLOATS},
        reasons=_array(table, "reason"),
    )


def empty_columns() -> Columns:
    ints = np.zeros(0, dtype=np.int64)
    return Columns(0, np.zeros(0, np.int8), np.zeros(0, np.int32), [], ints, np.zeros(0, np.int32), [], ints, ints,
                   {k: np.zeros(0) for k in _FLOATS}, [])  # fmt: skip


def iso_ms(value: Any) -> int:
    """Epoch milliseconds of a telemetry time (``2026-11-28T23:15:05.123Z``), -1 if not one."""
    if not isinstance(value, str):
        return -1
    try:
        moment = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return -1
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return int(round(moment.timestamp() * 1000))


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _code(table: dict[str, int], names: list[str], value: Any) -> int:
    if not isinstance(value, str):
        return -1
    code = table.get(value)
    if code is None:
        code = table[value] = len(names)
        names.append(value)
    return code


def parse_lines(block: bytes) -> Columns:
    """The slow, forgiving path: ``json.loads`` per line; what is not a JSON object is skipped."""
    rows: list[dict[str, Any]] = []
    bad = 0
    for raw in block.split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict):
            rows.append(record)
        else:
            bad += 1
    if not rows:
        cols = empty_columns()
        cols.bad_lines = bad
        return cols
    workers: dict[str, int] = {}
    worker_names: list[str] = []
    classes: dict[str, int] = {}
    class_names: list[str] = []
    ev = [r.get("event") for r in rows]
    return Columns(
        n=len(rows),
        event=np.array([EVENT_CODES.get(e, -1) if isinstance(e, str) else -1 for e in ev], dtype=np.int8),
        worker=np.array([_code(workers, worker_names, r.get("worker")) for r in rows], dtype=np.int32),
        worker_names=worker_names,
        rank=np.array([r["rank"] if type(r.get("rank")) is int else -1 for r in rows], dtype=np.int64),
        failure_class=np.array([_code(classes, class_names, r.get("failure_class")) for r in rows], dtype=np.int32),
        class_names=class_names,
        started_ms=np.array([iso_ms(r.get("started_at")) for r in rows], dtype=np.int64),
        finished_ms=np.array([iso_ms(r.get("finished_at")) for r in rows], dtype=np.int64),
        floats={k: np.array([_float(r.get(k)) for r in rows], dtype=np.float64) for k in _FLOATS},
        reasons=[r.get("reason") if isinstance(r.get("reason"), str) else None for r in rows],
        bad_lines=bad,
    )
