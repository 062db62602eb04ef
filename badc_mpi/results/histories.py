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

from badc_mpi.results.export_meta import Recording, chunk_day, require
from badc_mpi.results.schema import ANALYSED, FAILED

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


def build_histories(
    chunks: Sequence[dict[str, Any]], recs: dict[str, Recording], detections: Iterable[dict[str, Any]], species: Sequence[str]
) -> Histories:
    """``chunks``: rows of the ``chunks`` table; ``detections``: ``recording_id, chunk_id,
    label_code`` (already filtered by confidence)."""
    require(recs.values(), "detection histories", ("location",), "a location x day history")
    days: dict[tuple[str, str], dt.date] = {}
    undated = sorted({c["recording_id"] for c in chunks if chunk_day(c, recs[c["recording_id"]]) is None})
    if undated:
        require([recs[r] for r in undated], "detection histories", ("start_local",), "the day of each chunk")
    effort: dict[tuple[str, dt.date], Effort] = defaultdict(Effort)
    spans: dict[str, list[tuple[int, int, tuple[str, dt.date]]]] = defaultdict(list)
    for c in chunks:
        rec = recs[c["recording_id"]]
        day = chunk_day(c, rec)
        assert day is not None and rec.location is not None
        key = (rec.location, day)
        days[(c["recording_id"], c["chunk_id"])] = day
        e = effort[key]
        if c["status"] == ANALYSED:
            e.analysed += 1
            if c.get("start_ms") is not None and c.get("end_ms") is not None:
                spans[c["recording_id"]].append((c["start_ms"], c["end_ms"], key))
        elif c["status"] == FAILED:
            e.failed += 1
        else:
            e.not_analysed += 1
    for items in spans.values():
        reach = None
        for start, end, key in sorted(items):
            begin = start if reach is None else max(start, reach)
            if end > begin:
                effort[key].minutes += (end - begin) / 60000.0
            reach = end if reach is None else max(reach, end)
    wanted = set(species)
    counts: Counter[tuple[str, str, dt.date]] = Counter()
    for d in detections:
        code = d.get("label_code") or d.get("label")
        day = days.get((d["recording_id"], d["chunk_id"]))
        if code in wanted and day is not None:
            counts[(code, recs[d["recording_id"]].location, day)] += 1  # type: ignore[index]
    all_days = sorted({day for _, day in effort})
    calendar = [all_days[0] + dt.timedelta(days=i) for i in range((all_days[-1] - all_days[0]).days + 1)] if all_days else []
    locations = sorted({loc for loc, _ in effort})
    return Histories(list(species), locations, calendar, dict(effort), counts)
