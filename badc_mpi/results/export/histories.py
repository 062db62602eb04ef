"""Detection histories for occupancy models: location x day, per focus species (pure).

A survey occasion is a local calendar day (the day a chunk starts, :func:`chunk_day`). For each
focus species, location and day of the campaign's calendar (first to last day any chunk falls
on), ``detected`` is ``1`` (a detection at or above ``--min-confidence`` in an analysed chunk),
``0`` (at least one analysed chunk, no detection: surveyed, not detected) or ``NA`` (no analysed
chunk that day: not surveyed, whether its chunks failed, were never analysed or never existed).
``minutes_analysed`` is the effort: the union of the analysed chunks' spans (overlapping chunks
count their shared seconds once), attributed to the day each chunk starts.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from badc_mpi.results.aggregate.schema import ANALYSED, FAILED
from badc_mpi.results.export.meta import Recording, chunk_day, require

FOCUS_DEFAULT = ("ROPT", "RUGR", "STGR", "SPGR", "WIPT")
LONG_COLUMNS = [
    "species", "location", "date", "detected", "detections", "minutes_analysed", "chunks_analysed", "chunks_failed",
    "chunks_not_analysed",
]  # fmt: skip
NA = "NA"


@dataclass
class Effort:
    minutes: float = 0.0
    analysed: int = 0
    failed: int = 0
    not_analysed: int = 0


@dataclass
class Histories:
    species: list[str]
    locations: list[str]
    days: list[dt.date]
    effort: dict[tuple[str, dt.date], Effort]
    counts: Counter[tuple[str, str, dt.date]]  #: (species, location, day) -> detections

    def detected(self, species: str, location: str, day: dt.date) -> str:
        e = self.effort.get((location, day))
        if e is None or e.analysed == 0:
            return NA
        return "1" if self.counts.get((species, location, day), 0) else "0"

    def long_rows(self) -> list[list[Any]]:
        rows = []
        for sp in self.species:
            for loc in self.locations:
                for day in self.days:
                    e = self.effort.get((loc, day), Effort())
                    rows.append([sp, loc, day.isoformat(), self.detected(sp, loc, day), self.counts.get((sp, loc, day), 0),
                                 round(e.minutes, 3), e.analysed, e.failed, e.not_analysed])  # fmt: skip
        return rows

    def wide_rows(self, species: str | None) -> list[list[Any]]:
        """``species``: 1/0/NA per day; None: minutes analysed per day (NA when not surveyed)."""
        header: list[Any] = ["location", *(d.isoformat() for d in self.days)]
        rows = [header]
        for loc in self.locations:
            if species is None:
                cells = [round(self.effort[(loc, d)].minutes, 3) if self.detected("", loc, d) != NA else NA for d in self.days]
            else:
                cells = [self.detected(species, loc, d) for d in self.days]
            rows.append([loc, *cells])
        return rows


def parse_species(text: str | None) -> list[str]:
    if not text:
        return list(FOCUS_DEFAULT)
    return [s.strip().upper() for s in text.split(",") if s.strip()]


def lacks_days(rec: Recording, chunks: Iterable[dict[str, Any]]) -> bool:
    """Whether some chunk of ``rec`` has no local day (no start, no ``date``)."""
    return any(chunk_day(c, rec) is None for c in chunks)


class HistoryBuilder:
    """Histories built recording by recording (memory: locations x days, never the detections)."""

    def __init__(self, species: Sequence[str]) -> None:
        self.species = list(species)
        self._wanted = set(species)
        self._effort: dict[tuple[str, dt.date], Effort] = defaultdict(Effort)
        self._counts: Counter[tuple[str, str, dt.date]] = Counter()

    def add(self, rec: Recording, chunks: Sequence[dict[str, Any]], detections: Iterable[dict[str, Any]]) -> None:
        """One recording: its rows of the ``chunks`` table (sorted by start) and its detections
        (``chunk_id, label_code, label``; already filtered by confidence). Its location and the
        day of every chunk must be known (:func:`check`)."""
        days: dict[str, dt.date] = {}
        spans: list[tuple[int, int, tuple[str, dt.date]]] = []
        check([rec], [rec] if lacks_days(rec, chunks) else [])
        location = str(rec.location)
        for c in chunks:
            day = chunk_day(c, rec)
            assert day is not None  # checked above
            key = (location, day)
            days[c["chunk_id"]] = day
            e = self._effort[key]
            if c["status"] == ANALYSED:
                e.analysed += 1
                if c.get("start_ms") is not None and c.get("end_ms") is not None:
                    spans.append((c["start_ms"], c["end_ms"], key))
            elif c["status"] == FAILED:
                e.failed += 1
            else:
                e.not_analysed += 1
        reach = None
        for start, end, key in sorted(spans):
            begin = start if reach is None else max(start, reach)
            if end > begin:
                self._effort[key].minutes += (end - begin) / 60000.0
            reach = end if reach is None else max(reach, end)
        for d in detections:
            code = d.get("label_code") or d.get("label")
            day = days.get(d["chunk_id"])
            if code in self._wanted and day is not None:
                self._counts[(code, location, day)] += 1

    def result(self) -> Histories:
        all_days = sorted({day for _, day in self._effort})
        span = (all_days[-1] - all_days[0]).days + 1 if all_days else 0
        calendar = [all_days[0] + dt.timedelta(days=i) for i in range(span)]
        locations = sorted({loc for loc, _ in self._effort})
        return Histories(self.species, locations, calendar, dict(self._effort), self._counts)


def check(recs: Sequence[Recording], undated: Sequence[Recording]) -> None:
    """Raise the one-line :class:`ExportError` when histories cannot be built: ``recs`` every
    recording, ``undated`` those with a chunk whose day is unknown."""
    require(recs, "detection histories", ("location",), "a location x day history")
    require(undated, "detection histories", ("start_local",), "the day of each chunk")


def build_histories(
    chunks: Sequence[dict[str, Any]], recs: dict[str, Recording], detections: Iterable[dict[str, Any]], species: Sequence[str]
) -> Histories:
    """All at once (small inputs): ``chunks`` rows of the ``chunks`` table; ``detections``:
    ``recording_id, chunk_id, label_code`` (already filtered by confidence)."""
    by_chunk: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_det: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in chunks:
        by_chunk[c["recording_id"]].append(c)
    for d in detections:
        by_det[d["recording_id"]].append(d)
    check(list(recs.values()), [recs[r] for r, rows in by_chunk.items() if lacks_days(recs[r], rows)])
    builder = HistoryBuilder(species)
    for rid in sorted(by_chunk):
        builder.add(recs[rid], by_chunk[rid], by_det.get(rid, []))
    return builder.result()
