"""The clock an AudioMoth states in its WAV header, and what it says of a name's time. Pure.

AudioMoth-Firmware-Basic (``setHeaderComment``) writes the ``ICMT`` comment ``Recorded at
HH:MM:SS DD/MM/YYYY (UTC[+-H[:MM]]) by AudioMoth <id> ...`` (or ``during deployment <id>``): the
recording's start on the configured clock, and that clock's UTC offset. The file name
(``generateFolderAndFilename``) is written on the same clock, so when the name's time is the
header's (to a minute), the header's offset makes the name an exact instant. A file renamed since
(a name on another clock) is left to ``--clock`` and said so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from badc_mpi.inputs.naming import parse_offset

_RECORDED_AT = re.compile(
    r"Recorded at (?P<hms>\d{2}:\d{2}:\d{2}) (?P<dmy>\d{2}/\d{2}/\d{4}) \((?P<zone>UTC(?:[+-]\d{1,2}(?::\d{2})?)?)\)"
)
SAME_START_S = 60  #: a name and a header this close describe the same start on the same clock


@dataclass(frozen=True)
class HeaderClock:
    """What an AudioMoth header says: the start's wall clock and its UTC offset (minutes east)."""

    start: datetime
    offset_min: int
    zone_text: str  #: as written, e.g. ``UTC-6``

    def matches(self, name_start: datetime) -> bool:
        """Whether the file name's time is this header's start (the name was not renamed)."""
        return abs((name_start - self.start).total_seconds()) <= SAME_START_S


def audiomoth_clock(comment: str) -> HeaderClock | None:
    """The clock in an AudioMoth ``ICMT`` comment, or None when it is not one."""
    match = _RECORDED_AT.search(comment or "")
    if match is None or "AudioMoth" not in comment and "during deployment" not in comment:
        return None
    try:
        start = datetime.strptime(f"{match['dmy']} {match['hms']}", "%d/%m/%Y %H:%M:%S")
    except ValueError:
        return None
    offset = parse_offset(match["zone"][3:] or "UTC")
    if offset is None:
        return None
    return HeaderClock(start, offset, match["zone"])
