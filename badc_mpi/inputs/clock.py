"""From a recorder's clock to UTC and the site's local time (IANA zones, ``zoneinfo``). Pure.

A name's date-time is read by one of three clocks (``--clock``; docs/recordings.md, "Clocks"):

- ``fixed`` (default but for AudioMoth): the recorder kept **one UTC offset for the whole
  deployment**, as Song Meters and AudioMoths do (neither follows daylight saving). The offset is
  the site table's ``utc_offset``, else the offset in force in the site's zone at the deployment's
  first recording (:func:`deployment_offset`). Every name is then one exact instant: after a DST
  change UTC stays right, and names inside the skipped spring hour stay distinct;
- ``civil``: wall-clock time in the site's zone on that date, following daylight saving (files a
  person renamed to local civil time). Around a change a local time can be **ambiguous** (autumn:
  read as the first occurrence, ``fold=0``) or **nonexistent** (spring: read with the offset in
  force before the change); both are flagged (``When.note``) and counted in the summary;
- ``utc``: UTC (AudioMoth's default); the local time is given with the deployment's offset, so a
  deployment's wall-clock times never repeat (WildTrax's date-time has no zone).

A name that carries its own offset (BAR-LT ``-0600``), or an AudioMoth header that states the
configured zone, is exact whatever the clock (``offset_min``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from badc_mpi.inputs.naming import UTC_CLOCK

AMBIGUOUS = "ambiguous"
NONEXISTENT = "nonexistent"


@dataclass(frozen=True)
class When:
    """A recording's start: ``utc`` (aware) and ``local`` (aware, or naive when the zone is unknown)."""

    utc: datetime | None
    local: datetime | None
    note: str = ""  #: "" | ambiguous | nonexistent

    @property
    def utc_text(self) -> str:
        return self.utc.strftime("%Y-%m-%dT%H:%M:%SZ") if self.utc else ""

    @property
    def local_text(self) -> str:
        return self.local.isoformat() if self.local else ""

    @property
    def local_date(self) -> str:
        """The recording's local date (ISO), or "" when the local time is unknown."""
        return self.local.date().isoformat() if self.local else ""


def offset_at(start: datetime, zone: ZoneInfo) -> int:
    """Minutes east of UTC in force in ``zone`` at the wall-clock time ``start`` (the offset before
    the change for a nonexistent time, daylight time for an ambiguous one)."""
    resolved = _civil(start, zone)
    assert resolved.local is not None and resolved.local.utcoffset() is not None
    return int(resolved.local.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]  # asserted just above


def deployment_offset(starts: list[datetime], zone: ZoneInfo | None, clock: str = "fixed") -> int | None:
    """The fixed offset of a deployment whose names are ``starts`` (wall clock, or UTC when
    ``clock`` is ``utc``): the zone's offset at the first."""
    if zone is None or not starts:
        return None
    first = min(starts)
    if clock == UTC_CLOCK:
        return int(first.replace(tzinfo=timezone.utc).astimezone(zone).utcoffset().total_seconds() // 60)  # type: ignore[union-attr]  # an aware time in a zone has an offset
    return offset_at(first, zone)


def fixed_zone(offset_min: int) -> timezone:
    return timezone(timedelta(minutes=offset_min))


def _civil(start: datetime, zone: ZoneInfo) -> When:
    first = start.replace(tzinfo=zone, fold=0)
    utc = first.astimezone(timezone.utc)
    local = utc.astimezone(zone)
    if local.replace(tzinfo=None) != start:  # in the spring gap: no such wall-clock time
        return When(utc, local, NONEXISTENT)
    if utc != start.replace(tzinfo=zone, fold=1).astimezone(timezone.utc):  # the autumn hour, twice
        return When(utc, local, AMBIGUOUS)
    return When(utc, local)


def resolve_when(
    start: datetime, clock: str, zone: ZoneInfo | None, offset_min: int | None = None, local_offset_min: int | None = None
) -> When:
    """``start`` (naive, by ``clock``) as UTC and local time. ``zone``: the site's zone (None:
    unknown); ``offset_min``: the fixed offset of the name (BAR-LT, an AudioMoth header) or of the
    deployment (``fixed``; the caller picks which): when given, ``start`` is exact whatever
    ``clock`` says, and the local time is written with that offset, as the recorder kept it.
    ``fixed`` without an offset (no zone known) keeps the wall clock and no UTC. ``utc`` names are
    given their local time with ``local_offset_min`` (the deployment's offset: one offset for all
    its recordings, so local times never repeat in the autumn hour), else in ``zone``."""
    if offset_min is not None:
        local = start.replace(tzinfo=fixed_zone(offset_min))
        return When(local.astimezone(timezone.utc), local)
    if clock == UTC_CLOCK:
        utc = start.replace(tzinfo=timezone.utc)
        if local_offset_min is not None:
            return When(utc, utc.astimezone(fixed_zone(local_offset_min)))
        return When(utc, utc.astimezone(zone) if zone is not None else None)
    if zone is None:
        return When(None, start)
    return _civil(start, zone)
