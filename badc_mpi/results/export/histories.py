"""Detection histories for occupancy models: location x occasion, per focus species (pure).

Occasions (:mod:`occasions`): local days by default, or ``dawn`` / ``N-min`` within a survey
window. **Each location's occasions span its own deployment**: from the occasion of its first
chunk to that of its last (any status), never the campaign's first-to-last date, so one stray
file at another place or date adds its own occasion, not a calendar of years. Chunks outside the
location's deployment window (optional ``deploy_start`` / ``deploy_end`` columns, from the site
table: a date, or a local date-time; an end date includes its whole day) are left out and
listed. For each focus species, location and occasion, ``detected`` is ``1`` (a detection at or
above ``--min-confidence`` starting in it), ``0`` (surveyed: at least ``--min-effort-min``
minutes analysed, none detected) or ``NA`` (less analysed time: not surveyed, whether its chunks
failed, were never analysed or never existed). ``minutes_analysed`` is the effort: the union of
the analysed chunks' spans (overlapping chunks count their shared seconds once), split at the
occasions' edges. The long table adds ``occasion`` (1, 2, ... per location), ``occasion_start``
(local), ``doy``/``doy2`` (day of year of the occasion and its square) and ``hr``/``hr2`` (local
hour of its first analysed second, decimal, and its square): the observation covariates
wildrtrax's ``wt_format_occupancy`` builds for ``unmarked``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.results.aggregate.schema import ANALYSED, FAILED
from badc_mpi.results.aggregate.times import parse_iso
from badc_mpi.results.export.meta import Recording, chunk_day, require
from badc_mpi.results.export.occasions import Key, OccasionRule, key_text
from badc_mpi.results.export.stream import Detections

FOCUS_DEFAULT = ("ROPT", "RUGR", "STGR", "SPGR", "WIPT")
LONG_COLUMNS = [
    "species", "location", "date", "detected", "detections", "minutes_analysed", "chunks_analysed", "chunks_failed",
    "chunks_not_analysed", "occasion", "occasion_start", "doy", "doy2", "hr", "hr2",
]  # fmt: skip
NA = "NA"
DEPLOY_COLUMNS = ("deploy_start", "deploy_end")


@dataclass
class Effort:
    minutes: float = 0.0
    analysed: int = 0
    failed: int = 0
    not_analysed: int = 0
    first: dt.datetime | None = None  #: the first analysed local time in the occasion


@dataclass
class Histories:
    species: list[str]
    locations: list[str]
    occasions: dict[str, list[Key]]  #: location -> its own occasions (its deployment)
    effort: dict[tuple[str, Key], Effort]
    counts: Counter[tuple[str, str, Key]]  #: (species, location, occasion) -> detections
    rule: OccasionRule = field(default_factory=OccasionRule)
    outside: dict[str, int] = field(default_factory=dict)  #: recording id -> chunks outside its deployment window

    @property
    def days(self) -> list[Key]:
        """Every location's occasions together, in order (the wide tables' columns)."""
        return sorted({k for keys in self.occasions.values() for k in keys}, key=_order)

    def detected(self, species: str, location: str, key: Key) -> str:
        e = self.effort.get((location, key))
        if e is None or e.analysed == 0 or e.minutes + 1e-9 < self.rule.min_effort_min:
            return NA
        return "1" if self.counts.get((species, location, key), 0) else "0"

    def _start(self, key: Key) -> str:
        if isinstance(key, dt.datetime) or self.rule.window is None:
            return key_text(key)
        lo = self.rule.window[0]
        return f"{key.isoformat()}T{lo // 60:02d}:{lo % 60:02d}"

    def long_rows(self) -> list[list[Any]]:
        rows = []
        for sp in self.species:
            for loc in self.locations:
                for n, key in enumerate(self.occasions.get(loc, []), start=1):
                    e = self.effort.get((loc, key), Effort())
                    day = key.date() if isinstance(key, dt.datetime) else key
                    doy = day.timetuple().tm_yday
                    hr: Any = NA if e.first is None else round(e.first.hour + e.first.minute / 60 + e.first.second / 3600, 3)
                    hr2: Any = NA if e.first is None else round(float(hr) ** 2, 3)
                    rows.append([sp, loc, day.isoformat(), self.detected(sp, loc, key), self.counts.get((sp, loc, key), 0),
                                 round(e.minutes, 3), e.analysed, e.failed, e.not_analysed, n, self._start(key), doy,
                                 doy * doy, hr, hr2])  # fmt: skip
        return rows

    def wide_rows(self, species: str | None) -> list[list[Any]]:
        """``species``: 1/0/NA per occasion; None: minutes analysed (NA when not surveyed). One
        column per occasion of any location; NA outside a location's own deployment."""
        keys = self.days
        header: list[Any] = ["location", *(key_text(k) for k in keys)]
        rows = [header]
        for loc in self.locations:
            if species is None:
                cells = [round(self.effort[(loc, k)].minutes, 3) if self.detected("", loc, k) != NA else NA for k in keys]
            else:
                cells = [self.detected(species, loc, k) for k in keys]
            rows.append([loc, *cells])
        return rows

    def notes(self) -> list[str]:
        if not self.outside:
            return []
        recs = sorted(self.outside)
        shown = ", ".join(recs[:5]) + (f" and {len(recs) - 5} more" if len(recs) > 5 else "")
        return [
            f"histories: {sum(self.outside.values())} chunk(s) of {len(recs)} recording(s) outside their location's "
            f"deployment (deploy_start..deploy_end) left out: {shown}"
        ]


def _order(key: Key) -> tuple[int, int, int, int, int]:
    if isinstance(key, dt.datetime):
        return (key.year, key.month, key.day, key.hour, key.minute)
    return (key.year, key.month, key.day, -1, -1)


def _bound(text: str | None, end: bool) -> dt.datetime | None:
    """A deploy_start/deploy_end value as a naive local time (an end date: the next midnight)."""
    if not text or not str(text).strip():
        return None
    value = str(text).strip()
    if len(value) == 10:
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            return None
        return dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
    parsed = parse_iso(value)
    return parsed.replace(tzinfo=None) if parsed is not None else None


def deployment_window(rows: Sequence[dict[str, Any]]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The recording's deployment window from its chunk rows' ``deploy_start``/``deploy_end``."""
    found = {c: next((r.get(c) for r in rows if r.get(c)), None) for c in DEPLOY_COLUMNS}
    return _bound(found["deploy_start"], False), _bound(found["deploy_end"], True)


def parse_species(text: str | None) -> list[str]:
    if not text:
        return list(FOCUS_DEFAULT)
    return [s.strip().upper() for s in text.split(",") if s.strip()]


def lacks_days(rec: Recording, chunks: Iterable[dict[str, Any]]) -> bool:
    """Whether some chunk of ``rec`` has no local day (no start, no ``date``)."""
    return any(chunk_day(c, rec) is None for c in chunks)


class HistoryBuilder:
    """Histories built recording by recording (memory: locations x occasions, never the detections)."""

    def __init__(self, species: Sequence[str], rule: OccasionRule | None = None) -> None:
        self.species = list(species)
        self.rule = rule or OccasionRule()
        self._wanted = set(species)
        self._effort: dict[tuple[str, Key], Effort] = defaultdict(Effort)
        self._counts: Counter[tuple[str, str, Key]] = Counter()
        self._span: dict[str, tuple[Key, Key]] = {}
        self._outside: Counter[str] = Counter()

    def _interval(self, c: dict[str, Any], rec: Recording) -> tuple[dt.datetime, dt.datetime] | None:
        if rec.start_local is not None:
            a = rec.start_local + dt.timedelta(milliseconds=c.get("start_ms") or 0)
            end_ms = c.get("end_ms")
            return a, (rec.start_local + dt.timedelta(milliseconds=end_ms) if end_ms is not None else a)
        day = chunk_day(c, rec)
        if day is None:
            return None
        midnight = dt.datetime.combine(day, dt.time())  # only the date is known: the chunk's length from midnight
        length = max(0, (c.get("end_ms") or 0) - (c.get("start_ms") or 0))
        return midnight, midnight + dt.timedelta(milliseconds=length)

    def _touch(self, location: str, key: Key) -> None:
        first, last = self._span.get(location, (key, key))
        self._span[location] = (min(first, key, key=_order), max(last, key, key=_order))

    def add(self, rec: Recording, chunks: Sequence[dict[str, Any]], detections: Iterable[dict[str, Any]]) -> None:
        """One recording: its rows of the ``chunks`` table (sorted by start) and its detections
        (``chunk_id, label_code, label, start_ms``; already filtered by confidence). Its location
        and the day of every chunk must be known (:func:`check`)."""
        check([rec], [rec] if lacks_days(rec, chunks) else [])
        location = str(rec.location)
        lo, hi = deployment_window(chunks)
        spans: list[tuple[dt.datetime, dt.datetime]] = []
        inside: dict[str, dt.datetime] = {}  #: chunk id -> its start, for the chunks inside the deployment
        for c in chunks:
            interval = self._interval(c, rec)
            assert interval is not None  # checked above
            a, b = interval
            if (lo is not None and b <= lo and not (a == b == lo)) or (hi is not None and a >= hi):
                self._outside[rec.recording_id] += 1
                continue
            inside[c["chunk_id"]] = a
            a, b = max(a, lo) if lo else a, min(b, hi) if hi else b
            for key, _, _ in self.rule.pieces(a, b):
                self._touch(location, key)
                e = self._effort[(location, key)]
                if c["status"] == ANALYSED:
                    e.analysed += 1
                elif c["status"] == FAILED:
                    e.failed += 1
                else:
                    e.not_analysed += 1
            if c["status"] == ANALYSED:
                spans.append((a, b))
        reach: dt.datetime | None = None
        for a, b in sorted(spans):
            begin = a if reach is None else max(a, reach)
            if b > begin:
                for key, pa, pb in self.rule.pieces(begin, b):
                    e = self._effort[(location, key)]
                    e.minutes += (pb - pa).total_seconds() / 60.0
                    e.first = pa if e.first is None else min(e.first, pa)
            reach = b if reach is None else max(reach, b)
        dets = Detections.of(detections)
        for code, chunk_id, start_ms in zip(dets.codes(), dets.column("chunk_id"), dets.column("start_ms")):
            if code not in self._wanted or chunk_id not in inside:
                continue
            if rec.start_local is not None:
                when = rec.start_local + dt.timedelta(milliseconds=start_ms or 0)
                if (lo is not None and when < lo) or (hi is not None and when >= hi):
                    continue
            else:  # only the day is known: the detection counts at its chunk's start
                when = inside[chunk_id]
            occasion = self.rule.key_of(when)
            if occasion is not None:
                self._counts[(code, location, occasion)] += 1

    def result(self) -> Histories:
        occasions = {loc: self.rule.grid(first, last) for loc, (first, last) in sorted(self._span.items())}
        locations = sorted({loc for loc, _ in self._effort} | set(occasions))
        return Histories(self.species, locations, occasions, dict(self._effort), self._counts, self.rule, dict(self._outside))


def check(recs: Sequence[Recording], undated: Sequence[Recording]) -> None:
    """Raise the one-line :class:`ExportError` when histories cannot be built: ``recs`` every
    recording, ``undated`` those with a chunk whose day is unknown."""
    require(recs, "detection histories", ("location",), "a location x day history")
    require(undated, "detection histories", ("start_local",), "the day of each chunk")


def build_histories(
    chunks: Sequence[dict[str, Any]],
    recs: dict[str, Recording],
    detections: Iterable[dict[str, Any]],
    species: Sequence[str],
    rule: OccasionRule | None = None,
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
    builder = HistoryBuilder(species, rule)
    for rid in sorted(by_chunk):
        builder.add(recs[rid], by_chunk[rid], by_det.get(rid, []))
    return builder.result()
