"""Absolute times of detections: the manifest's recording start plus the recording-relative offset.

Pure table transforms (docs/results.md, "Absolute times"). A manifest may carry
``recording_start_utc`` (ISO 8601 with ``Z`` or an offset) and ``recording_start_local`` (ISO 8601
wall clock, with the recorder's UTC offset, e.g. ``2024-06-01T05:00:00-06:00``). Each detection
then gets ``detection_start_utc`` / ``detection_end_utc`` (timestamp[ms, UTC]) and
``detection_start_local`` (the wall clock plus ``start_ms``, written with the recording start's
offset: a recording keeps the offset it started with, as a recorder's clock does across a DST
change). Values are parsed once per distinct recording start (dictionary values), never per row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UTC_COLUMN, LOCAL_COLUMN = "recording_start_utc", "recording_start_local"
TIME_FIELDS = [
    ("detection_start_utc", pa.timestamp("ms", tz="UTC")),  #: recording_start_utc + start_ms
    ("detection_end_utc", pa.timestamp("ms", tz="UTC")),  #: recording_start_utc + end_ms
    ("detection_start_local", pa.string()),  #: local wall clock + start_ms, ISO 8601 with the recording's offset
]
TIME_NAMES = tuple(n for n, _ in TIME_FIELDS)
_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class StartTime:
    """One recording start, parsed: epoch ms in UTC (None: unknown), wall clock as epoch ms
    (naive), and the UTC offset text (``-06:00``; ``""`` when the local time has none)."""

    utc_ms: int | None = None
    wall_ms: int | None = None
    offset: str | None = None


def parse_iso(text: str | None) -> dt.datetime | None:
    """ISO 8601 (``Z`` or ``+HH:MM`` allowed, ``T`` or space) -> datetime, None when empty or bad."""
    if not text or not text.strip():
        return None
    try:
        return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None


def _wall_ms(value: dt.datetime) -> int:
    return int((value.replace(tzinfo=None) - _EPOCH) / dt.timedelta(milliseconds=1))


def offset_text(value: dt.datetime) -> str:
    off = value.utcoffset()
    if off is None:
        return ""
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def start_time(utc_text: str | None, local_text: str | None) -> StartTime:
    """A recording's start from its manifest values (either may be missing or unparseable)."""
    utc, local = parse_iso(utc_text), parse_iso(local_text)
    utc_ms = _wall_ms(utc.astimezone(dt.timezone.utc)) if utc is not None and utc.tzinfo is not None else None
    if utc_ms is None and local is not None and local.tzinfo is not None:
        utc_ms = _wall_ms(local.astimezone(dt.timezone.utc))
    if local is None:
        return StartTime(utc_ms)
    return StartTime(utc_ms, _wall_ms(local), offset_text(local))


def _encoded(col: pa.ChunkedArray) -> tuple[list[str | None], pa.Array]:
    """(distinct values, index of each row's value)."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr.cast(pa.string()))
    return arr.dictionary.cast(pa.string()).to_pylist(), arr.indices


def _per_row(table: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str | None]] | None:
    """Per row: recording start in UTC ms (NaN unknown), wall-clock ms (NaN unknown), offset."""
    names = table.column_names
    if UTC_COLUMN not in names and LOCAL_COLUMN not in names:
        return None
    n = table.num_rows
    empty = pa.chunked_array([pa.nulls(n, pa.string())])
    utc_vals, utc_idx = _encoded(table.column(UTC_COLUMN) if UTC_COLUMN in names else empty)
    loc_vals, loc_idx = _encoded(table.column(LOCAL_COLUMN) if LOCAL_COLUMN in names else empty)
    width = len(loc_vals) + 1
    ui = np.asarray(utc_idx.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    li = np.asarray(loc_idx.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    keys, inverse = np.unique((ui + 1) * width + (li + 1), return_inverse=True)
    starts = []
    for key in keys.tolist():
        u, v = key // width - 1, key % width - 1
        starts.append(start_time(utc_vals[u] if u >= 0 else None, loc_vals[v] if v >= 0 else None))
    inverse = inverse.reshape(-1)
    utc = np.array([np.nan if s.utc_ms is None else s.utc_ms for s in starts], dtype=np.float64)[inverse]
    wall = np.array([np.nan if s.wall_ms is None else s.wall_ms for s in starts], dtype=np.float64)[inverse]
    offsets = [starts[i].offset for i in inverse.tolist()] if n else []
    return utc, wall, offsets


def _stamp(base: np.ndarray, offset_ms: pa.ChunkedArray) -> pa.Array:
    off = np.asarray(offset_ms.to_numpy(zero_copy_only=False), dtype=np.float64) if len(base) else np.zeros(0)
    total = base + off
    mask = np.isnan(total)
    return pa.array(np.where(mask, 0, total).astype(np.int64), mask=mask).cast(pa.timestamp("ms", tz="UTC"))


def add_absolute_times(table: pa.Table) -> pa.Table:
    """Set the :data:`TIME_FIELDS` columns of ``table`` (which has ``start_ms``/``end_ms``) from its
    recording-start columns; nulls where they are absent or unparseable (pure)."""
    parsed = _per_row(table)
    n = table.num_rows
    if parsed is None:
        values = [pa.nulls(n, kind) for _, kind in TIME_FIELDS]
    else:
        utc, wall, offsets = parsed
        start = table.column("start_ms").cast(pa.float64()) if n else pa.chunked_array([], pa.float64())
        end = table.column("end_ms").cast(pa.float64()) if n else pa.chunked_array([], pa.float64())
        local = pc.strftime(_stamp(wall, start).cast(pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%S")
        suffix = pa.array(offsets, pa.string())
        values = [_stamp(utc, start), _stamp(utc, end), pc.binary_join_element_wise(local, suffix, "")]
    for (name, kind), value in zip(TIME_FIELDS, values):
        value = value.cast(kind)
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, value)
        else:
            table = table.append_column(pa.field(name, kind), value)
    return table


def missing_time_columns(columns: Sequence[str]) -> list[str]:
    """Which of the recording-start columns a detections table lacks."""
    return [c for c in (UTC_COLUMN, LOCAL_COLUMN) if c not in columns]
