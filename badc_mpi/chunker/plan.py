"""From found recordings to per-recording plans: names, ids, sites, times, chunks. Pure.

:func:`name_recordings` reads place and time from every path (``inputs/naming.py``), completes
them from the site table, resolves the time zone (``inputs/clock.py``) and checks the ids; what
cannot be used comes back as one problem line per file (with the fix). A ``fixed`` clock takes
one offset per deployment (a location's recordings in this scan, cut where none was made for
30 days): the site table's ``utc_offset``, else the zone's offset at its first recording. :func:`plan_recording` adds a header (an AudioMoth
header's time zone makes the name exact: ``inputs/header_clock.py``) and the chunk bounds
(``bounds.py``), or why the recording failed; :func:`same_instants` lists two recordings of one
location at one instant, which no export could tell apart.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from badc_mpi.chunker.bounds import MIN_CHUNK_MS, chunk_bounds
from badc_mpi.inputs.clock import When, deployment_offset, resolve_when
from badc_mpi.inputs.header_clock import audiomoth_clock
from badc_mpi.inputs.naming import CIVIL, FIXED, UTC_CLOCK, Layout, NameFacts, NameProblem, parse_path
from badc_mpi.inputs.recordings import Found, Header, id_problem, recording_id_for
from badc_mpi.inputs.sites import Site
from badc_mpi.records import MAX_ID_BYTES

#: a location's recordings more than this apart belong to two deployments (each its own fixed offset)
DEPLOYMENT_GAP = timedelta(days=30)
#: the longest ``_chunk_<start>_<end>`` suffix a chunk id gets (two 10-digit ms values: 115 days)
CHUNK_SUFFIX_BYTES = len("_chunk_") + 10 + 1 + 10


def chunk_id(recording_id: str, start_ms: int, end_ms: int) -> str:
    """The lab's chunk naming: ``<recording>_chunk_<start_ms>_<end_ms>``."""
    return f"{recording_id}_chunk_{start_ms}_{end_ms}"


@dataclass(frozen=True)
class Named:
    """One recording with its id, what its path says, its site (if known) and its start time."""

    found: Found
    recording_id: str
    facts: NameFacts
    site: Site | None
    when: When
    study_area: str
    zone: ZoneInfo | None = None
    deployment_offset_min: int | None = None  #: ``fixed``: the deployment's offset (None: unknown)
    basis: str = ""  #: how its time was read, for the summary (e.g. ``fixed UTC-07:00``)


@dataclass(frozen=True)
class RecordingPlan:
    """A named recording, its header, and its chunks (empty, with ``error``, when it failed)."""

    named: Named
    header: Header
    starts: np.ndarray
    ends: np.ndarray
    error: str = ""
    clock_note: str = ""  #: what its header said of its clock, when that disagrees with the names or sites

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Naming:
    """The outcome of :func:`name_recordings`."""

    named: list[Named]
    problems: list[str]  #: one line per file that cannot be used (each with its fix)
    skipped: list[str]  #: the paths of those files
    no_zone: list[str]  #: locations whose time zone is unknown (their UTC or local time stays empty)


def name_recordings(
    found: list[Found], layout: Layout, sites: dict[str, Site] | None, default_zone: ZoneInfo | None, sites_path: str = ""
) -> Naming:
    """Place, time and id of every recording, and the problems (never raises for a bad name)."""
    named: list[Named] = []
    problems: list[str] = []
    skipped: list[str] = []
    no_zone: dict[str, None] = {}
    by_id: dict[str, list[str]] = defaultdict(list)
    pending: list[tuple[Found, str, NameFacts, Site | None, ZoneInfo | None, str]] = []
    for item in found:
        facts = parse_path(item.rel, layout)
        if isinstance(facts, NameProblem):
            problems.append(facts.line(item.rel))
            skipped.append(item.rel)
            continue
        recording_id = recording_id_for(item.rel)
        bad = id_problem(recording_id)
        if bad is None and len(recording_id.encode("utf-8")) + CHUNK_SUFFIX_BYTES > MAX_ID_BYTES:
            bad = f"its chunk ids would pass the {MAX_ID_BYTES}-byte id limit"
        if bad:
            problems.append(f"{item.rel}: {bad}. Fix: scan from a folder closer to the recordings, or rename the folders")
            skipped.append(item.rel)
            continue
        site = sites.get(facts.location) if sites is not None else None
        if sites is not None and site is None:
            problems.append(
                f"{item.rel}: location {facts.location!r} is not in the site table {sites_path}. Fix: add a row for it"
            )
            skipped.append(item.rel)
            continue
        zone = site.zone if site is not None and site.time_zone else default_zone
        if zone is None and (site is None or site.utc_offset_min is None) and facts.offset_min is None:
            no_zone[facts.location] = None
        by_id[recording_id].append(item.rel)
        study = facts.study_area or (site.study_area if site is not None else "") or ""
        pending.append((item, recording_id, facts, site, zone, study))
    offsets = _deployment_offsets(pending)
    for item, recording_id, facts, site, zone, study in pending:
        offset = offsets.get((facts.location, facts.start))
        exact = facts.offset_min if facts.offset_min is not None else offset if facts.clock == FIXED else None
        when = resolve_when(facts.start, facts.clock, zone, exact, offset if facts.clock == UTC_CLOCK else None)
        named.append(Named(item, recording_id, facts, site, when, study, zone, offset, _basis(facts, offset)))
    clashes = {rid: rels for rid, rels in by_id.items() if len(rels) > 1}
    if clashes:
        for rid, rels in clashes.items():
            for rel in rels:
                problems.append(
                    f"{rel}: recording id {rid!r} is also that of {', '.join(r for r in rels if r != rel)}. Fix: rename one"
                )
                skipped.append(rel)
        named = [n for n in named if n.recording_id not in clashes]
    return Naming(named, problems, skipped, list(no_zone))


def _deployment_offsets(
    pending: list[tuple[Found, str, NameFacts, Site | None, ZoneInfo | None, str]],
) -> dict[tuple[str, datetime], int]:
    """Per (location, name time): the site table's ``utc_offset``, else the zone's offset at the
    first name of its deployment (a gap over :data:`DEPLOYMENT_GAP` starts a new one)."""
    starts: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    zones: dict[str, ZoneInfo | None] = {}
    fixed: dict[tuple[str, datetime], int] = {}
    for _item, _rid, facts, site, zone, _study in pending:
        if site is not None and site.utc_offset_min is not None and facts.clock != UTC_CLOCK:
            fixed[(facts.location, facts.start)] = site.utc_offset_min
        elif facts.offset_min is None and facts.clock in (FIXED, UTC_CLOCK):
            starts[(facts.location, facts.clock)].append(facts.start)
            zones[facts.location] = zone
    for (location, clock), names in starts.items():
        for deployment in split_deployments(names):
            offset = deployment_offset(deployment, zones[location], clock)
            if offset is not None:
                fixed.update({(location, start): offset for start in deployment})
    return fixed


def split_deployments(starts: list[datetime]) -> list[list[datetime]]:
    """One location's name times, sorted, cut where no recording was made for over
    :data:`DEPLOYMENT_GAP` (the recorder was collected, and set again when it went back out)."""
    out: list[list[datetime]] = []
    for start in sorted(starts):
        if not out or start - out[-1][-1] > DEPLOYMENT_GAP:
            out.append([])
        out[-1].append(start)
    return out


def _basis(facts: NameFacts, offset: int | None) -> str:
    if facts.offset_min is not None:
        return "the name's own offset"
    if facts.clock == FIXED:
        return f"fixed {_offset_text(offset)}" if offset is not None else "fixed, no zone known"
    if facts.clock == UTC_CLOCK and offset is not None:
        return f"utc, local at {_offset_text(offset)}"
    return facts.clock


def _offset_text(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def with_header_clock(named: Named, header: Header) -> tuple[Named, str]:
    """``named`` with its time read by the clock its AudioMoth header states (when the header's
    start is the name's), and a note when the header disagrees with the name or the site table."""
    clock = audiomoth_clock(header.comment)
    facts = named.facts
    if clock is None or facts.offset_min is not None:
        return named, ""
    if not clock.matches(facts.start):
        return named, (
            f"its AudioMoth header says it started {clock.start:%Y-%m-%d %H:%M:%S} ({clock.zone_text}), "
            f"its name says {facts.start:%Y-%m-%d %H:%M:%S}: renamed, so the name is read by --clock {facts.clock}"
        )
    offset = None if clock.offset_min == 0 else clock.offset_min
    when = resolve_when(
        facts.start, UTC_CLOCK if offset is None else facts.clock, named.zone, offset, named.deployment_offset_min
    )
    note = ""
    site = named.site
    expected, source = (site.utc_offset_min, "the site table") if site is not None else (None, "")
    if expected is None and facts.clock != CIVIL and named.deployment_offset_min is not None:
        # a recorder keeps the offset in force at the deployment's start, across a DST change
        expected, source = named.deployment_offset_min, "the zone at the deployment's start"
    if expected is None and named.zone is not None and when.utc is not None:
        expected, source = int(when.utc.astimezone(named.zone).utcoffset().total_seconds() // 60), "the zone"  # type: ignore[union-attr]  # an aware time in a zone has an offset
    if offset is not None and expected is not None and offset != expected:
        note = (
            f"its AudioMoth header says the clock kept {clock.zone_text}, {source} {_offset_text(expected)}: read by the header"
        )
    basis = f"AudioMoth header {clock.zone_text}"
    replaced = Named(named.found, named.recording_id, facts, named.site, when, named.study_area, named.zone, offset, basis)
    return replaced, note


def same_instants(plans: list[RecordingPlan]) -> list[str]:
    """One problem line per recording that shares its location and start instant with another."""
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for plan in plans:
        named = plan.named
        key = (named.facts.location, named.when.utc_text or named.when.local_text)
        if key[1]:
            by_key[key].append(named.found.rel)
    lines = []
    for (location, instant), rels in by_key.items():
        if len(rels) > 1:
            lines.append(
                f"{' and '.join(rels)}: location {location!r} at one instant {instant} (after time conversion). "
                "Fix: name the location of each apart, remove the copy, or set the clock (--clock, utc_offset)"
            )
    return lines


def plan_recording(named: Named, header: Header, chunk_ms: int, overlap_ms: int) -> RecordingPlan:
    """The chunks of one recording under the tail rule, or why it has none."""
    empty = np.zeros(0, dtype=np.int64)
    named, note = with_header_clock(named, header)
    if header.error:
        return RecordingPlan(named, header, empty, empty, header.error, note)
    if header.duration_ms < MIN_CHUNK_MS:
        reason = f"too short: {header.duration_ms} ms of audio, HawkEars needs at least {MIN_CHUNK_MS} ms"
        return RecordingPlan(named, header, empty, empty, reason, note)
    starts, ends = chunk_bounds(header.duration_ms, chunk_ms, overlap_ms)
    return RecordingPlan(named, header, starts, ends, clock_note=note)
