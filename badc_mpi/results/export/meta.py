"""What the exports need to know about each recording and chunk: location, study area, the local
start (wall clock), the day of each chunk; from the manifest's columns, else from file names (pure).

Sources, in order (docs/results.md, "Exports"):

- ``location``: the manifest's ``location`` column, else the file-name stem split as WildTrax
  does (``LOCATION_YYYYMMDD_HHMMSS``: the part before the first ``_``);
- ``study_area``: the ``study_area`` column (no fallback);
- the local start: ``recording_start_local`` (its wall clock), else ``YYYYMMDD_HHMMSS`` in the
  file name (recorders write their local clock), else ``recording_start_utc`` (then in UTC, said so);
- a chunk's day: the local start plus the chunk's ``start_ms``, else the ``date`` column.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.errors import BadcError
from badc_mpi.results.aggregate.times import parse_iso

#: WildTrax's file-name form: location, date, time (the location has no underscore)
_NAME_RE = re.compile(r"^(?P<location>[^_]+)(?:_0\+1|__?[01]__?)?_(?P<date>\d{8})[_$](?P<time>\d{6})")
_STAMP_RE = re.compile(r"(?P<date>\d{8})[_$T-](?P<time>\d{6})")


class ExportError(BadcError):
    """An export cannot be written from these inputs (metadata missing or a bad option)."""


@dataclass
class Recording:
    """One recording as the exports see it."""

    recording_id: str
    source_path: str | None = None
    location: str | None = None
    study_area: str | None = None
    start_local: dt.datetime | None = None  #: naive wall clock of the recording start
    start_basis: str | None = None  #: recording_start_local | file name | recording_start_utc
    duration_ms: int | None = None  #: the end of its last chunk
    sample_rate: str | None = None
    sources: dict[str, str] = field(default_factory=dict)  #: field -> where it came from

    @property
    def filename(self) -> str:
        return os.path.basename(self.source_path) if self.source_path else self.recording_id

    def recording_date_time(self) -> str:
        return self.start_local.strftime("%Y-%m-%d %H:%M:%S") if self.start_local else ""


def _first(rows: list[dict[str, Any]], name: str) -> str | None:
    for r in rows:
        value = r.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def _from_name(path: str | None) -> tuple[str | None, dt.datetime | None]:
    if not path:
        return None, None
    stem = os.path.splitext(os.path.basename(path))[0]
    m = _NAME_RE.match(stem)
    stamp = m or _STAMP_RE.search(stem)
    when = None
    if stamp:
        try:
            when = dt.datetime.strptime(stamp.group("date") + stamp.group("time"), "%Y%m%d%H%M%S")
        except ValueError:
            when = None
    return (m.group("location") if m else None), when


def recordings(chunks: Iterable[dict[str, Any]]) -> dict[str, Recording]:
    """Per recording id, from the rows of the ``chunks`` table (any status)."""
    by_rec: dict[str, list[dict[str, Any]]] = {}
    for row in chunks:
        by_rec.setdefault(row["recording_id"], []).append(row)
    out = {}
    for rec_id, rows in by_rec.items():
        source = _first(rows, "source_path")
        name_location, name_time = _from_name(source)
        r = Recording(rec_id, source)
        r.location = _first(rows, "location")
        r.sources["location"] = "location column" if r.location else ""
        if r.location is None and name_location:
            r.location, r.sources["location"] = name_location, "file name"
        r.study_area = _first(rows, "study_area")
        local = parse_iso(_first(rows, "recording_start_local"))
        utc = parse_iso(_first(rows, "recording_start_utc"))
        if local is not None:
            r.start_local, r.start_basis = local.replace(tzinfo=None), "recording_start_local"
        elif name_time is not None:
            r.start_local, r.start_basis = name_time, "file name"
        elif utc is not None:
            r.start_local, r.start_basis = utc.astimezone(dt.timezone.utc).replace(tzinfo=None), "recording_start_utc (UTC)"
        ends = [row["end_ms"] for row in rows if row.get("end_ms") is not None]
        r.duration_ms = max(ends) if ends else None
        r.sample_rate = _first(rows, "sample_rate") or _first(rows, "recording_sample_frequency")
        out[rec_id] = r
    return out


def chunk_day(row: dict[str, Any], rec: Recording) -> dt.date | None:
    """The local calendar day a chunk starts on."""
    if rec.start_local is not None:
        return (rec.start_local + dt.timedelta(milliseconds=row.get("start_ms") or 0)).date()
    text = row.get("date")
    if text:
        try:
            return dt.date.fromisoformat(str(text)[:10])
        except ValueError:
            return None
    return None


def require(recs: Iterable[Recording], what: str, fields: tuple[str, ...], purpose: str) -> None:
    """Raise :class:`ExportError` naming the first recordings that lack any of ``fields``."""
    fixes = {
        "location": "a `location` column in the manifest (or file names LOCATION_YYYYMMDD_HHMMSS)",
        "start_local": "a `recording_start_local` column (ISO 8601, e.g. 2024-06-01T05:00:00-06:00), "
        "or YYYYMMDD_HHMMSS in the file names",
    }
    for name in fields:
        lacking = sorted(r.recording_id for r in recs if getattr(r, name) is None)
        if lacking:
            shown = ", ".join(lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
            label = {"start_local": "recording date-time"}.get(name, name)
            raise ExportError(
                f"{what}: {len(lacking)} recording(s) have no {label} ({shown}); {purpose} needs it",
                fix=f"add {fixes[name]}, then run `badc-mpi aggregate --force` and export again",
            )
