"""From a recorder's clock to UTC and the site's local time (IANA zones, ``zoneinfo``). Pure.

A name's date-time is wall-clock time in the site's zone (``local``: WildTrax, Wildlife Acoustics,
the lab's layout) or UTC (``utc``: AudioMoth). Around a daylight-saving change a local time can be:

- **ambiguous** (autumn: 01:30 happens twice): read as the *first* occurrence, daylight time
  (``fold=0``), the hour the recorder reached first;
- **nonexistent** (spring: 02:30 is skipped): read with the offset in force *before* the change
  (standard time), as a clock that had not sprung forward yet; the local time reported is then
  the real one (03:30 daylight time).

Both are flagged (``When.note``) and counted in the chunk command's summary. Recorders that keep
standard time all year should be given a fixed-offset zone in the site table (``Etc/GMT+7`` is
UTC-7: POSIX signs are inverted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
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


def resolve_when(start: datetime, clock: str, zone: ZoneInfo | None) -> When:
    """``start`` (naive, by ``clock``) as UTC and local time in ``zone`` (None: unknown zone)."""
    if clock == UTC_CLOCK:
        utc = start.replace(tzinfo=timezone.utc)
        return When(utc, utc.astimezone(zone) if zone is not None else None)
    if zone is None:
        return When(None, start)
    first = start.replace(tzinfo=zone, fold=0)
    utc = first.astimezone(timezone.utc)
    local = utc.astimezone(zone)
    if local.replace(tzinfo=None) != start:  # in the spring gap: no such wall-clock time
        return When(utc, local, NONEXISTENT)
    if utc != start.replace(tzinfo=zone, fold=1).astimezone(timezone.utc):  # the autumn hour, twice
        return When(utc, local, AMBIGUOUS)
    return When(utc, local)
