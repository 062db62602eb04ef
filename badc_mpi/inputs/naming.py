"""Where and when a recording was made, read from its path: pure parsers, one per layout.

Every parser takes the path relative to the scanned root (POSIX ``/``, extension kept) and
returns :class:`NameFacts` or a :class:`NameProblem` that says how to fix the name. A date is never
guessed: a name that matches no rule, or matches it in two different ways, is a problem.
The rules (docs/recordings.md):

- ``wildtrax``: ``LOCATION_YYYYMMDD_HHMMSS`` (also ``LOCATION_0+1_...``, ``LOCATION__0__...``,
  ``LOCATION__1__...``); the location holds no ``_``; ``$`` instead of the middle ``_`` marks a
  GPS-synchronised clock. Local time.
- ``wildlife-acoustics``: ``PREFIX[_0|_1|_0+1]_YYYYMMDD_HHMMSS`` (``$`` for GPS); the prefix is the
  location; a ``_0``, ``_1`` or ``_0+1`` right before the date is always the channel marker. Local.
- ``audiomoth``: ``YYYYMMDD_HHMMSS`` (or 8 hex digits of Unix time, old firmware); the location is
  the file's folder. UTC.
- ``lab``: ``STUDY/.../STATION/[A|B|...]/[Data]/...YYYYMMDD_HHMMSS...``: the study area is the first
  folder under the root, the station (location) the nearest folder above the file whose name is
  not generic (:data:`GENERIC_FOLDER`: ``Data``, one letter, ``SD1``, ``Card2``...); the date-time
  is the one ``YYYYMMDD_HHMMSS`` in the file name. Local.
- a regular expression with named groups ``location``, ``date``, ``time`` (optional
  ``study_area``), searched in the relative path. Local unless ``--clock utc``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from badc_mpi.errors import UsageError

LOCAL, UTC_CLOCK = "local", "utc"
CLOCKS = (LOCAL, UTC_CLOCK)
LAYOUTS = ("wildtrax", "wildlife-acoustics", "audiomoth", "lab")
_DEFAULT_CLOCK = {"wildtrax": LOCAL, "wildlife-acoustics": LOCAL, "audiomoth": UTC_CLOCK, "lab": LOCAL}
_FIX = {
    "wildtrax": "rename it LOCATION_YYYYMMDD_HHMMSS (a location without '_'), or pass --layout with a regular expression",
    "wildlife-acoustics": "rename it PREFIX_0+1_YYYYMMDD_HHMMSS (or PREFIX_YYYYMMDD_HHMMSS), or pass --layout REGEX",
    "audiomoth": "keep AudioMoth names YYYYMMDD_HHMMSS.WAV inside a folder named after the location, or pass --layout REGEX",
    "lab": "lay it out as STUDY/[...]/STATION/[A|B]/[Data]/NAME_YYYYMMDD_HHMMSS.wav, or pass --layout REGEX",
    "regex": "make the expression match this path (named groups location, date, time), rename the file, or pass --skip-unmatched",
}

_DT = r"(?P<date>\d{8})(?P<sep>[_$])(?P<time>\d{6})"
_WILDTRAX = re.compile(r"(?P<location>[^_]+)(?:_0\+1_|__0__|__1__|_)" + _DT)
_WILDTRAX_LOOSE = re.compile(r"(?P<location>.+?)_" + _DT)
_WILDLIFE = re.compile(r"(?P<location>.+?)(?:_(?P<channel>0\+1|0|1))?_" + _DT)
_AUDIOMOTH = re.compile(r"(?P<date>\d{8})_(?P<time>\d{6})")
_AUDIOMOTH_HEX = re.compile(r"(?P<hex>[0-9A-Fa-f]{8})")
_LAB_DT = re.compile(r"(?<!\d)(?P<date>\d{8})(?P<sep>[_$])(?P<time>\d{6})(?!\d)")
#: folders the lab layout skips when it looks for the station above a file
GENERIC_FOLDER = re.compile(r"(?i)(data|[a-z]|sd\d*|card\d*)")
REGEX_GROUPS = ("location", "date", "time")


@dataclass(frozen=True)
class NameFacts:
    """What a path says: where, and when by the clock the recorder kept (``clock``)."""

    location: str
    study_area: str | None
    start: datetime  #: naive, as written (local wall-clock or UTC, per ``clock``)
    clock: str  #: ``local`` | ``utc``
    gps: bool = False


@dataclass(frozen=True)
class NameProblem:
    """Why a path gives no (or no single) place and time, and the fix."""

    reason: str
    fix: str

    def line(self, path: str) -> str:
        return f"{path}: {self.reason}. Fix: {self.fix}"


@dataclass(frozen=True)
class Layout:
    """A ``--layout`` value made usable: one of :data:`LAYOUTS` or ``regex`` with its pattern."""

    name: str
    clock: str
    pattern: re.Pattern[str] | None = None

    @property
    def fix(self) -> str:
        return _FIX["regex" if self.pattern is not None else self.name]


def make_layout(spec: str, clock: str | None = None) -> Layout:
    """``--layout`` (a name, or a regular expression with named groups) and ``--clock``."""
    if clock is not None and clock not in CLOCKS:
        raise UsageError(f"--clock {clock!r} is not one of {', '.join(CLOCKS)}", fix="use local or utc")
    if spec in LAYOUTS:
        return Layout(spec, clock or _DEFAULT_CLOCK[spec])
    try:
        pattern = re.compile(spec)
    except re.error as exc:
        raise UsageError(
            f"--layout {spec!r} is neither one of {', '.join(LAYOUTS)} nor a valid regular expression ({exc})",
            fix="name a layout, or give a Python regular expression with named groups location, date, time",
        ) from None
    missing = [g for g in REGEX_GROUPS if g not in pattern.groupindex]
    if missing:
        raise UsageError(
            f"--layout regular expression {spec!r} lacks the named group(s) {', '.join(missing)}",
            fix="add them, e.g. '(?P<location>[^/]+)/(?P<date>\\d{8})_(?P<time>\\d{6})'",
        )
    return Layout("regex", clock or LOCAL, pattern)


def _stem(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def parse_datetime(date: str, time: str) -> datetime | None:
    """``YYYYMMDD`` or ``YYYY-MM-DD`` plus ``HHMMSS``, ``HH-MM-SS`` or ``HH:MM:SS``; None if invalid."""
    digits = re.sub(r"[-:_ ]", "", date) + re.sub(r"[-:_ ]", "", time)
    if not re.fullmatch(r"\d{14}", digits):
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def _facts(layout: Layout, match: re.Match[str], location: str, study: str | None) -> NameFacts | NameProblem:
    groups = match.groupdict()
    start = parse_datetime(groups["date"], groups["time"])
    if start is None:
        return NameProblem(f"{groups['date']}_{groups['time']} is not a valid date and time", layout.fix)
    if not location:
        return NameProblem("the location is empty", layout.fix)
    return NameFacts(location, study or None, start, layout.clock, gps=groups.get("sep") == "$")


def parse_wildtrax(rel: str, layout: Layout) -> NameFacts | NameProblem:
    stem = _stem(rel)
    match = _WILDTRAX.fullmatch(stem)
    if match:
        return _facts(layout, match, match["location"], None)
    loose = _WILDTRAX_LOOSE.fullmatch(stem)
    if loose and "_" in loose["location"]:
        return NameProblem(f"location {loose['location']!r} holds '_' (WildTrax splits the name at the first '_')", layout.fix)
    return NameProblem(f"{stem!r} is not LOCATION_YYYYMMDD_HHMMSS", layout.fix)


def parse_wildlife_acoustics(rel: str, layout: Layout) -> NameFacts | NameProblem:
    stem = _stem(rel)
    match = _WILDLIFE.fullmatch(stem)
    if match:
        return _facts(layout, match, match["location"], None)
    return NameProblem(f"{stem!r} is not PREFIX_0+1_YYYYMMDD_HHMMSS", layout.fix)


def parse_audiomoth(rel: str, layout: Layout) -> NameFacts | NameProblem:
    parts = rel.split("/")
    if len(parts) < 2:
        return NameProblem("an AudioMoth file directly under the root has no location folder", layout.fix)
    stem, folder = _stem(rel), parts[-2]
    match = _AUDIOMOTH.fullmatch(stem)
    if match:
        return _facts(layout, match, folder, None)
    if _AUDIOMOTH_HEX.fullmatch(stem):  # old firmware: Unix time, always UTC
        start = datetime.fromtimestamp(int(stem, 16), timezone.utc).replace(tzinfo=None)
        return NameFacts(folder, None, start, UTC_CLOCK)
    return NameProblem(f"{stem!r} is not YYYYMMDD_HHMMSS (nor 8 hex digits of Unix time)", layout.fix)


def parse_lab(rel: str, layout: Layout) -> NameFacts | NameProblem:
    parts = rel.split("/")
    stem = _stem(rel)
    stations = [p for p in parts[1:-1] if not GENERIC_FOLDER.fullmatch(p)]
    if len(parts) < 3 or not stations:
        return NameProblem("no STUDY/STATION folders above the file", layout.fix)
    found = {(m["date"], m["time"]) for m in _LAB_DT.finditer(stem)}
    if not found:
        return NameProblem(f"{stem!r} holds no YYYYMMDD_HHMMSS", layout.fix)
    if len(found) > 1:
        shown = ", ".join(f"{d}_{t}" for d, t in sorted(found))
        return NameProblem(f"{stem!r} holds {len(found)} date-times ({shown}): ambiguous", "rename it to hold one")
    return _facts(layout, next(_LAB_DT.finditer(stem)), stations[-1], parts[0])


def parse_regex(rel: str, layout: Layout) -> NameFacts | NameProblem:
    assert layout.pattern is not None
    matches = list(layout.pattern.finditer(rel))
    if not matches:
        return NameProblem("the --layout expression does not match", layout.fix)
    distinct = {tuple(sorted(m.groupdict().items(), key=lambda kv: kv[0])) for m in matches}
    if len(distinct) > 1:
        return NameProblem(f"the --layout expression matches {len(distinct)} different ways: ambiguous", layout.fix)
    match = matches[0]
    study = match.groupdict().get("study_area")
    return _facts(layout, match, match["location"] or "", study)


_PARSERS = {
    "wildtrax": parse_wildtrax,
    "wildlife-acoustics": parse_wildlife_acoustics,
    "audiomoth": parse_audiomoth,
    "lab": parse_lab,
    "regex": parse_regex,
}


def parse_path(rel: str, layout: Layout) -> NameFacts | NameProblem:
    """The place and time ``rel`` (relative to the scanned root, ``/``-separated) says under ``layout``."""
    facts = _PARSERS[layout.name](rel, layout)
    if isinstance(facts, NameFacts) and "/" in facts.location:
        return NameProblem(f"location {facts.location!r} holds '/'", layout.fix)
    return facts
