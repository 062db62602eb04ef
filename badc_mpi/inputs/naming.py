"""Where and when a recording was made, read from its path: pure parsers, one per layout.

Every parser takes the path relative to the scanned root (POSIX ``/``, extension kept) and
returns :class:`NameFacts` or a :class:`NameProblem` that says how to fix the name. A date is never
guessed: a name that matches no rule, or matches it in two different ways, is a problem.
The rules (docs/recordings.md, "Where and when", with the recorders' manuals as sources):

- ``wildtrax``: ``LOCATION_YYYYMMDD_HHMMSS`` (also ``LOCATION_0+1_...``, ``LOCATION__0__...``,
  ``LOCATION__1__...``, SM5's ``LOCATION_AC_...``); the location holds no ``_``; ``$`` instead of
  the middle ``_`` marks a GPS-synchronised clock.
- ``wildlife-acoustics``: ``PREFIX[_0|_1|_0+1|_AC]_YYYYMMDD_HHMMSS`` (``$`` for GPS); the prefix is
  the location and holds no ``_`` (SM5 recorder names never do: capital letters, digits, ``-``); a
  ``_0``, ``_1``, ``_0+1`` or ``_AC`` right before the date is always the channel marker.
- ``audiomoth``: ``[DEVICEID_]YYYYMMDD_HHMMSS[T].WAV`` (``T``: a triggered recording; the 16-hex
  device or deployment id prefix of firmware 1.5+; or 8 hex digits of Unix time, old firmware);
  the location is the nearest folder above the file that is not a date (daily folders). UTC
  unless the recorder was configured otherwise (its WAV header says so: ``inputs/header_clock.py``).
- ``lab``: ``STUDY/.../STATION/[A|B|...]/[Data]/...YYYYMMDD_HHMMSS...``: the study area is the first
  folder under the root, the station (location) the nearest folder above the file whose name is
  neither generic (:data:`GENERIC_FOLDER`: ``Data``, ``Data_AC``, one letter, ``SD1``, ``Card2``...)
  nor a date (:func:`is_date_folder`); the date-time is the one ``YYYYMMDD_HHMMSS`` (or BAR-LT's
  ``YYYYMMDDTHHMMSS[+-]HHMM``) in the file name.
- a regular expression with named groups ``location``, ``date``, ``time`` (``HHMMSS`` or ``HHMM``;
  optional ``study_area``, ``offset``), searched in the relative path.

A ``[+-]HHMM`` right after the time (Frontier Labs BAR-LT) is the UTC offset the recorder kept: the
name is then an exact instant, whatever ``--clock`` says. Otherwise the layout's clock applies
(``inputs/clock.py``): ``fixed`` (one UTC offset per deployment; the default but for AudioMoth),
``civil`` (the site's zone, following daylight saving) or ``utc``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from badc_mpi.errors import UsageError

FIXED, CIVIL, UTC_CLOCK = "fixed", "civil", "utc"
CLOCKS = (FIXED, CIVIL, UTC_CLOCK)
CLOCK_ALIASES = {"local": CIVIL}  #: the name ``--clock`` had before fixed offsets were modelled
LAYOUTS = ("wildtrax", "wildlife-acoustics", "audiomoth", "lab")
_DEFAULT_CLOCK = {"wildtrax": FIXED, "wildlife-acoustics": FIXED, "audiomoth": UTC_CLOCK, "lab": FIXED, "regex": FIXED}
_FIX = {
    "wildtrax": "rename it LOCATION_YYYYMMDD_HHMMSS (a location without '_'), or pass --layout with a regular expression",
    "wildlife-acoustics": "rename it PREFIX_0+1_YYYYMMDD_HHMMSS (or PREFIX_YYYYMMDD_HHMMSS; a prefix without '_'), or pass --layout REGEX",
    "audiomoth": "keep AudioMoth names [DEVICEID_]YYYYMMDD_HHMMSS[T].WAV inside a folder named after the location, or pass --layout REGEX",
    "lab": "lay it out as STUDY/[...]/STATION/[A|B]/[Data]/NAME_YYYYMMDD_HHMMSS.wav, or pass --layout REGEX",
    "regex": "make the expression match this path (named groups location, date, time), rename the file, or pass --skip-unmatched",
    "date folder": "keep recordings in a folder named after the location (date folders such as 20240602/ are never one)",
}

_DT = r"(?P<date>\d{8})(?P<sep>[_$])(?P<time>\d{6})"
_WILDTRAX = re.compile(r"(?P<location>[^_]+)(?:_0\+1_|__0__|__1__|_AC_|_)" + _DT)
_WILDTRAX_LOOSE = re.compile(r"(?P<location>.+?)_" + _DT)
_WILDLIFE = re.compile(r"(?P<location>.+?)(?:_(?P<channel>0\+1|0|1|AC))?_" + _DT)
#: AudioMoth-Firmware-Basic ``generateFolderAndFilename``: optional 16-hex id and ``_``, then
#: ``YYYYMMDD_HHMMSS``, then ``T.WAV`` for a triggered recording (``_T`` accepted too)
_AUDIOMOTH = re.compile(r"(?:(?P<device>[0-9A-Fa-f]{16})_)?(?P<date>\d{8})_(?P<time>\d{6})(?:_?T)?")
_AUDIOMOTH_HEX = re.compile(r"(?P<hex>[0-9A-Fa-f]{8})")
_LAB_DT = re.compile(r"(?<!\d)(?P<date>\d{8})(?P<sep>[_$T])(?P<time>\d{6})(?P<offset>[+-]\d{4})?(?!\d)")
_OFFSET = re.compile(r"(?i:utc)?(?P<sign>[+-])(?P<hh>\d{1,2})(?::?(?P<mm>\d{2}))?")
#: folders the lab layout skips when it looks for the station above a file (SM5: ``Data_AC``)
GENERIC_FOLDER = re.compile(r"(?i)(data|data_ac|[a-z]|sd\d*|card\d*)")
#: a date (AudioMoth 1.8+ and SM5 daily folders), or a date and a name (BAR-LT schedule folders)
_DATE_FOLDER = re.compile(r"(?P<y>(?:19|20)\d\d)(?P<s>[-_]?)(?P<m>\d\d)(?P=s)(?P<d>\d\d)(?:_[^/]*)?")
REGEX_GROUPS = ("location", "date", "time")


@dataclass(frozen=True)
class NameFacts:
    """What a path says: where, and when by the clock the recorder kept (``clock``)."""

    location: str
    study_area: str | None
    start: datetime  #: naive, as written (wall clock of ``clock``, or of ``offset_min`` when set)
    clock: str  #: ``fixed`` | ``civil`` | ``utc``
    gps: bool = False
    offset_min: int | None = None  #: the UTC offset the name itself carries (BAR-LT ``-0600``): exact


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
    clock = CLOCK_ALIASES.get(clock, clock) if clock is not None else None
    if clock is not None and clock not in CLOCKS:
        raise UsageError(f"--clock {clock!r} is not one of {', '.join(CLOCKS)}", fix="use fixed, civil or utc")
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
    return Layout("regex", clock or _DEFAULT_CLOCK["regex"], pattern)


def _stem(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def is_date_folder(name: str) -> bool:
    """``20240602``, ``2024-06-02``, ``2024_06_02`` (a real date), or such a date, ``_`` and a name
    (BAR-LT's ``20220611_Peawanuck2223``): a folder that is never a location."""
    match = _DATE_FOLDER.fullmatch(name)
    if match is None:
        return False
    try:
        datetime(int(match["y"]), int(match["m"]), int(match["d"]))
    except ValueError:
        return False
    return True


def parse_datetime(date: str, time: str) -> datetime | None:
    """``YYYYMMDD``, ``YYYY-MM-DD`` or ``YYYY_MM_DD`` plus ``HHMMSS``, ``HHMM``, ``HH-MM-SS`` or
    ``HH:MM:SS`` (``HHMM``: second 0); None if invalid."""
    day, clock = re.sub(r"[-:_ ]", "", date), re.sub(r"[-:_ ]", "", time)
    if re.fullmatch(r"\d{4}", clock):
        clock += "00"
    digits = day + clock
    if not re.fullmatch(r"\d{14}", digits):
        return None
    try:
        return datetime.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def parse_offset(text: str | None) -> int | None:
    """``-0600``, ``+0530``, ``-06:00``, ``UTC-6`` -> minutes east of UTC; None when empty or out of
    range (``UTC``, ``Z``, ``0``: 0)."""
    text = (text or "").strip()
    if text.upper() in ("UTC", "Z", "0"):
        return 0
    match = _OFFSET.fullmatch(text)
    if match is None:
        return None
    mm = int(match["mm"] or 0)
    minutes = int(match["hh"]) * 60 + mm
    if mm >= 60 or minutes > 14 * 60:
        return None
    return -minutes if match["sign"] == "-" else minutes


def _facts(
    layout: Layout, match: re.Match[str], location: str, study: str | None, offset: str | None = None
) -> NameFacts | NameProblem:
    groups = match.groupdict()
    start = parse_datetime(groups["date"], groups["time"])
    if start is None:
        return NameProblem(f"{groups['date']}_{groups['time']} is not a valid date and time", layout.fix)
    if not location:
        return NameProblem("the location is empty", layout.fix)
    minutes = parse_offset(offset)
    if offset and minutes is None:
        return NameProblem(f"UTC offset {offset!r} is not [+-]HHMM within 14 h", layout.fix)
    return NameFacts(location, study or None, start, layout.clock, gps=groups.get("sep") == "$", offset_min=minutes)


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
    if not match:
        return NameProblem(f"{stem!r} is not PREFIX_0+1_YYYYMMDD_HHMMSS", layout.fix)
    if "_" in match["location"]:  # SM5 names hold none; WildTrax would split the location there
        return NameProblem(f"prefix {match['location']!r} holds '_' (WildTrax splits the name at the first '_')", layout.fix)
    return _facts(layout, match, match["location"], None)


def _location_folder(parts: list[str]) -> str | None:
    """The nearest folder above the file that is not a date folder."""
    for folder in reversed(parts[:-1]):
        if not is_date_folder(folder):
            return folder
    return None


def parse_audiomoth(rel: str, layout: Layout) -> NameFacts | NameProblem:
    parts = rel.split("/")
    if len(parts) < 2:
        return NameProblem("an AudioMoth file directly under the root has no location folder", layout.fix)
    folder = _location_folder(parts)
    if folder is None:
        return NameProblem("only date folders above the file: no location folder", _FIX["date folder"])
    stem = _stem(rel)
    match = _AUDIOMOTH.fullmatch(stem)
    if match:
        return _facts(layout, match, folder, None)
    if _AUDIOMOTH_HEX.fullmatch(stem):  # old firmware: Unix time, always UTC
        start = datetime.fromtimestamp(int(stem, 16), timezone.utc).replace(tzinfo=None)
        return NameFacts(folder, None, start, UTC_CLOCK)
    return NameProblem(f"{stem!r} is not [DEVICEID_]YYYYMMDD_HHMMSS[T] (nor 8 hex digits of Unix time)", layout.fix)


def parse_lab(rel: str, layout: Layout) -> NameFacts | NameProblem:
    parts = rel.split("/")
    stem = _stem(rel)
    stations = [p for p in parts[1:-1] if not GENERIC_FOLDER.fullmatch(p) and not is_date_folder(p)]
    if len(parts) < 3 or not stations:
        return NameProblem("no STUDY/STATION folders above the file (date and generic folders are neither)", layout.fix)
    found = {(m["date"], m["time"]) for m in _LAB_DT.finditer(stem)}
    if not found:
        return NameProblem(f"{stem!r} holds no YYYYMMDD_HHMMSS", layout.fix)
    if len(found) > 1:
        shown = ", ".join(f"{d}_{t}" for d, t in sorted(found))
        return NameProblem(f"{stem!r} holds {len(found)} date-times ({shown}): ambiguous", "rename it to hold one")
    match = next(_LAB_DT.finditer(stem))
    return _facts(layout, match, stations[-1], parts[0], match["offset"])


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
    offset = match.groupdict().get("offset")
    if offset is None:  # a BAR-LT offset right after the time counts even when the expression stops there
        after = re.match(r"[+-]\d{4}(?!\d)", rel[match.end("time") :])
        offset = after.group(0) if after else None
    return _facts(layout, match, match["location"] or "", study, offset)


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
    if isinstance(facts, NameFacts) and is_date_folder(facts.location):
        return NameProblem(f"location {facts.location!r} is a date, never a location", _FIX["date folder"])
    return facts
