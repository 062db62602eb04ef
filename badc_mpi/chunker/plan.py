"""From found recordings to per-recording plans: names, ids, sites, times, chunks. Pure.

:func:`name_recordings` reads place and time from every path (``inputs/naming.py``), completes
them from the site table, resolves the time zone (``inputs/clock.py``) and checks the ids; what
cannot be used comes back as one problem line per file (with the fix). :func:`plan_recording`
adds a header and the chunk bounds (``bounds.py``), or why the recording failed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from badc_mpi.chunker.bounds import MIN_CHUNK_MS, chunk_bounds
from badc_mpi.inputs.clock import When, resolve_when
from badc_mpi.inputs.naming import Layout, NameFacts, NameProblem, parse_path
from badc_mpi.inputs.recordings import Found, Header, id_problem, recording_id_for
from badc_mpi.inputs.sites import Site
from badc_mpi.records import MAX_ID_BYTES

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


@dataclass(frozen=True)
class RecordingPlan:
    """A named recording, its header, and its chunks (empty, with ``error``, when it failed)."""

    named: Named
    header: Header
    starts: np.ndarray
    ends: np.ndarray
    error: str = ""

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
        if zone is None:
            no_zone[facts.location] = None
        by_id[recording_id].append(item.rel)
        study = facts.study_area or (site.study_area if site is not None else "") or ""
        named.append(Named(item, recording_id, facts, site, resolve_when(facts.start, facts.clock, zone), study))
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


def plan_recording(named: Named, header: Header, chunk_ms: int, overlap_ms: int) -> RecordingPlan:
    """The chunks of one recording under the tail rule, or why it has none."""
    empty = np.zeros(0, dtype=np.int64)
    if header.error:
        return RecordingPlan(named, header, empty, empty, header.error)
    if header.duration_ms < MIN_CHUNK_MS:
        reason = f"too short: {header.duration_ms} ms of audio, HawkEars needs at least {MIN_CHUNK_MS} ms"
        return RecordingPlan(named, header, empty, empty, reason)
    starts, ends = chunk_bounds(header.duration_ms, chunk_ms, overlap_ms)
    return RecordingPlan(named, header, starts, ends)
