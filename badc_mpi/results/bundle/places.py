"""The report's per-recording and per-site facts, and its species x local time of day grid.

Each recording's location and local start come from :func:`badc_mpi.results.export.meta.recordings`
(the manifest's ``location`` / ``recording_start_local`` columns, else the file name, else
``recording_start_utc`` in UTC), so the report and the exports place a recording the same way.
The queries are constant SQL with parameters (one row per recording, per recording x species, per
species x recording x minute); the grouping is done here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from badc_mpi.results.export.meta import Recording, recordings

MAX_DAY_COLUMNS = 96  #: the time-of-day grid widens its bucket (whole multiples) to stay under this
MINUTES_PER_DAY = 1440

#: one chunks row per recording (its first chunk) and its last chunk's end
FIRST_CHUNKS = """
SELECT * FROM chunks
QUALIFY row_number() OVER (PARTITION BY recording_id ORDER BY start_ms, chunk_id) = 1
"""
RECORDING_SPECIES = "SELECT DISTINCT recording_id, coalesce(label_code, label) AS label FROM detections"
SPECIES_MINUTES = """
SELECT coalesce(label_code, label) AS label, recording_id, start_ms // 60000 AS minute, count(*) AS n
FROM detections WHERE coalesce(label_code, label) IN (SELECT unnest(?::VARCHAR[]))
GROUP BY 1, 2, 3
"""


def rows_of(con: Any, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """A query's rows as dicts (small results only)."""
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def recording_places(con: Any) -> dict[str, Recording]:
    """Per recording id: its location and local start (from its first chunk's row)."""
    return recordings(rows_of(con, FIRST_CHUNKS))


def _start_text(rec: Recording | None) -> str:
    if rec is None or rec.start_local is None:
        return ""
    text = rec.start_local.strftime("%Y-%m-%d %H:%M")
    return text + " UTC" if rec.start_basis and "utc" in rec.start_basis else text


def recording_rows(summary_rows: list[dict[str, Any]], places: dict[str, Recording], limit: int) -> list[dict[str, Any]]:
    """The per-recording table: where, when (local), chunks by status and detections (pure)."""
    out = []
    for r in summary_rows[:limit]:
        rec = places.get(r["recording_id"])
        out.append(
            {
                "recording": r["recording_id"],
                "location": (rec.location if rec else None) or "",
                "start (local)": _start_text(rec),
                "chunks": r["chunks"],
                "analysed": r["analysed"],
                "failed": r["failed"],
                "not analysed": r["not_analysed"] + r["stale"],
                "detections": r["detections"],
                "species": r["labels"],
            }
        )
    return out


def site_rows(
    summary_rows: list[dict[str, Any]], places: dict[str, Recording], species_pairs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The per-site table (pure): recordings, local days, chunks by status, detections and
    distinct species per location (``(no location)`` for recordings without one)."""
    species: dict[str, set[str]] = {}
    loc_of = {rid: (rec.location or "(no location)") for rid, rec in places.items()}
    for pair in species_pairs:
        species.setdefault(loc_of.get(pair["recording_id"], "(no location)"), set()).add(pair["label"])
    sites: dict[str, dict[str, Any]] = {}
    for r in summary_rows:
        loc = loc_of.get(r["recording_id"], "(no location)")
        s = sites.setdefault(loc, {"recordings": 0, "days": set(), "chunks": 0, "analysed": 0, "failed": 0, "detections": 0})
        rec = places.get(r["recording_id"])
        if rec is not None and rec.start_local is not None:
            s["days"].add(rec.start_local.date())
        s["recordings"] += 1
        for k in ("chunks", "analysed", "failed", "detections"):
            s[k] += r[k]
    out = []
    for loc in sorted(sites):
        s = sites[loc]
        days: set[dt.date] = s["days"]
        out.append(
            {
                "location": loc,
                "recordings": s["recordings"],
                "days": len(days),
                "first day": min(days).isoformat() if days else "",
                "last day": max(days).isoformat() if days else "",
                "chunks": s["chunks"],
                "analysed": s["analysed"],
                "failed": s["failed"],
                "detections": s["detections"],
                "species": len(species.get(loc, ())),
            }
        )
    return out


def site_tables(
    con: Any, summary_rows: list[dict[str, Any]], limit: int, places: dict[str, Recording]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-site rows, the first ``limit`` per-recording rows); ``places``: :func:`recording_places`."""
    return site_rows(summary_rows, places, rows_of(con, RECORDING_SPECIES)), recording_rows(summary_rows, places, limit)


@dataclass(frozen=True)
class DayGrid:
    """Detections per species (rows) and local time-of-day bucket (columns)."""

    labels: list[str]
    buckets: list[str]  #: ``h:mm`` of each bucket's start
    grid: np.ndarray
    bucket_minutes: int
    left_out: int  #: detections of recordings without a known start (not in the grid)
    utc: bool  #: some starts are known only in UTC (then the grid mixes clocks: said in the title)


def day_grid(labels: Sequence[str], cells: list[dict[str, Any]], places: dict[str, Recording], bucket_minutes: float) -> DayGrid:
    """Pure: ``cells`` (label, recording_id, minute in recording, n) placed at their local time of
    day; the columns span the occupied part of the day in buckets of ``bucket_minutes`` (whole
    multiples of it when the span would need more than :data:`MAX_DAY_COLUMNS`)."""
    li = {lab: i for i, lab in enumerate(labels)}
    minutes, rows, counts = [], [], []
    left_out, utc = 0, False
    for c in cells:
        rec = places.get(c["recording_id"])
        if rec is None or rec.start_local is None or c["label"] not in li:
            left_out += int(c["n"]) if c["label"] in li else 0
            continue
        utc = utc or bool(rec.start_basis and "utc" in rec.start_basis)
        start = rec.start_local.hour * 60 + rec.start_local.minute
        minutes.append((start + int(c["minute"])) % MINUTES_PER_DAY)
        rows.append(li[c["label"]])
        counts.append(int(c["n"]))
    width = max(1, int(round(bucket_minutes)))
    if not minutes:
        return DayGrid(list(labels), [], np.zeros((len(labels), 0)), width, left_out, utc)
    m = np.array(minutes)
    lo, hi = int(m.min()), int(m.max())
    if width < 60:  # whole hours either side: the shape reads against the clock
        lo, hi = lo // 60 * 60, (hi // 60 + 1) * 60 - 1
    while (hi // width - lo // width + 1) > MAX_DAY_COLUMNS:
        width *= 2
    first = lo // width
    cols = hi // width - first + 1
    grid = np.zeros((len(labels), cols))
    np.add.at(grid, (np.array(rows), m // width - first), np.array(counts))
    starts = [(first + j) * width for j in range(cols)]
    return DayGrid(list(labels), [f"{s // 60:d}:{s % 60:02d}" for s in starts], grid, width, left_out, utc)


def species_by_time_of_day(con: Any, labels: Sequence[str], bucket_minutes: float, places: dict[str, Recording]) -> DayGrid:
    """``places``: :func:`recording_places` (one query over every chunk: made once per report)."""
    return day_grid(labels, rows_of(con, SPECIES_MINUTES, [list(labels)]), places, bucket_minutes)
