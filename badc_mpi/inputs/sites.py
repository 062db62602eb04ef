"""The site table: location -> latitude, longitude, region, time zone, study area.

A CSV with a header; ``location`` is required, every other column optional::

    location,latitude,longitude,region,time_zone,study_area
    NWT-01,61.52,-117.18,CA-NT,America/Yellowknife,Dehcho

``latitude``/``longitude`` in decimal degrees (both or neither), ``region`` an eBird region code
(``CA-NT``, ``US-AK-020``), ``time_zone`` an IANA zone (``America/Edmonton``; ``Etc/GMT+7`` for a
recorder kept on UTC-7 all year), ``study_area`` free text, ``deploy_start``/``deploy_end`` the
deployment window (``2024-05-25`` or a local ``2024-05-25T14:00``; detection histories leave out
and list chunks outside it, docs/results.md). Headers are read case-blind and
common aliases are accepted and said (:data:`SITE_ALIASES`: ``lat``, ``lon``/``long``,
``timezone``/``tz``, ``site``, ...); ``notes``/``comments``/``description`` are kept out; any other
column is an error naming the expected ones (a misspelt ``lattitude`` would otherwise turn
HawkEars' location filter off in silence). A bad row is a
:class:`~badc_mpi.errors.RecordingsError` naming the file, line and fix. ``utc_offset``
(``-06:00``, ``-0600``, ``UTC-6``) is the one offset the recorders at that location kept for the
deployment (``--clock fixed``; without it, the zone's offset at the first recording).
:func:`parse_site_table` is pure; :func:`load_site_table` reads the file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import sys
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from badc_mpi.errors import RecordingsError
from badc_mpi.inputs.naming import parse_offset

SITE_COLUMNS = ("location", "latitude", "longitude", "region", "time_zone", "study_area", "utc_offset")
DEPLOY_COLUMNS = ("deploy_start", "deploy_end")  #: optional: the deployment window (detection histories)
REGION_RE = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3}){0,2}")
#: other spellings of the columns (compared lower-case, spaces and hyphens as ``_``)
SITE_ALIASES = {
    "location": ("site", "site_id", "station", "location_id", "loc", "location_name"),
    "latitude": ("lat", "decimal_latitude", "latitude_dd", "y"),
    "longitude": ("lon", "long", "lng", "decimal_longitude", "longitude_dd", "x"),
    "region": ("ebird_region", "region_code"),
    "time_zone": ("timezone", "tz", "zone", "tz_name", "time_zone_name", "olson"),
    "study_area": ("study", "studyarea", "project", "area", "study_area_name"),
}
#: columns people keep beside the sites: read past, never used
SITE_IGNORED = ("notes", "note", "comments", "comment", "description")
_ALIAS_OF = {alias: column for column, aliases in SITE_ALIASES.items() for alias in aliases}


@dataclass(frozen=True)
class Site:
    location: str
    latitude: float | None = None
    longitude: float | None = None
    region: str = ""
    time_zone: str = ""
    study_area: str = ""
    utc_offset_min: int | None = None  #: the deployment's fixed offset (``utc_offset``), minutes east
    deploy_start: str = ""
    deploy_end: str = ""

    @property
    def zone(self) -> ZoneInfo | None:
        return ZoneInfo(self.time_zone) if self.time_zone else None


def zone_or_error(name: str, where: str) -> ZoneInfo:
    """The IANA zone ``name``; RecordingsError naming ``where`` when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RecordingsError(
            f"{where}: {name!r} is not an IANA time zone",
            fix="use a zone such as America/Edmonton, America/Yellowknife or Etc/GMT+7 (fixed UTC-7)",
        ) from None


def _degrees(value: str, low: float, high: float, where: str, column: str) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise RecordingsError(
            f"{where}, column {column!r}: {value!r} is not a number in {low:g}..{high:g}", fix="give decimal degrees"
        )
    return number


def _deploy_time(value: str, where: str, column: str) -> str:
    """A deploy_start/deploy_end value made comparable ("" when empty); RecordingsError when bad."""
    if not value:
        return ""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RecordingsError(
            f"{where}, column {column!r}: {value!r} is not a date", fix="give YYYY-MM-DD or a local YYYY-MM-DDTHH:MM"
        ) from None
    if parsed.tzinfo is not None:
        raise RecordingsError(f"{where}, column {column!r}: {value!r} has a UTC offset", fix="give the local date or time")
    return (parsed + dt.timedelta(days=1) if len(value) == 10 and column == "deploy_end" else parsed).isoformat()


def site_header(names: list[str], path: str) -> tuple[list[str], list[str]]:
    """(the header in :data:`SITE_COLUMNS` names, one note per alias read); RecordingsError for
    an unknown or doubled column (pure)."""
    header: list[str] = []
    notes: list[str] = []
    unknown: list[str] = []
    for raw in names:
        key = re.sub(r"[\s-]+", "_", raw.strip().lower())
        column = key if key in SITE_COLUMNS + DEPLOY_COLUMNS + SITE_IGNORED else _ALIAS_OF.get(key)
        if column is None:
            unknown.append(raw.strip())
            column = raw.strip()
        elif column != key:
            notes.append(f"{path}: column {raw.strip()!r} read as {column!r}")
        if column in header and column in SITE_COLUMNS:
            raise RecordingsError(f"{path}: two columns mean {column!r}", fix="keep one of them")
        header.append(column)
    if unknown:
        raise RecordingsError(
            f"{path}: unknown column(s) {', '.join(repr(u) for u in unknown)}",
            fix="use the columns "
            + ",".join(SITE_COLUMNS + DEPLOY_COLUMNS)
            + " (also read: lat, lon, long, timezone, tz, site, ...; "
            + "/".join(SITE_IGNORED[:3])
            + " are kept out)",
        )
    return header, notes


def parse_site_table(text: str, path: str, notes: list[str] | None = None) -> dict[str, Site]:
    """Sites by location from the CSV ``text`` of ``path`` (pure); aliases read are added to ``notes``."""
    reader = csv.DictReader(io.StringIO(text))
    header, said = site_header(list(reader.fieldnames or []), path)
    if notes is not None:
        notes.extend(said)
    if "location" not in header:
        raise RecordingsError(
            f"{path}: no 'location' column (header: {', '.join(header) or 'empty'})", fix="header: " + ",".join(SITE_COLUMNS)
        )
    reader.fieldnames = header
    sites: dict[str, Site] = {}
    for row in reader:
        where = f"{path}, line {reader.line_num}"
        values = {k: (row.get(k) or "").strip() for k in SITE_COLUMNS + DEPLOY_COLUMNS}
        location = values["location"]
        if not location:
            raise RecordingsError(f"{where}: empty location", fix="name the location, or delete the row")
        if location in sites:
            raise RecordingsError(f"{where}: location {location!r} is listed twice", fix="keep one row per location")
        lat = _degrees(values["latitude"], -90, 90, where, "latitude")
        lon = _degrees(values["longitude"], -180, 180, where, "longitude")
        if (lat is None) != (lon is None):
            raise RecordingsError(f"{where}: latitude and longitude go together", fix="give both, or neither")
        if values["region"] and not REGION_RE.fullmatch(values["region"]):
            raise RecordingsError(
                f"{where}, column 'region': {values['region']!r} is not an eBird region code", fix="use e.g. CA-NT or CA-AB"
            )
        if values["time_zone"]:
            zone_or_error(values["time_zone"], f"{where}, column 'time_zone'")
        offset = parse_offset(values["utc_offset"]) if values["utc_offset"] else None
        if values["utc_offset"] and offset is None:
            raise RecordingsError(
                f"{where}, column 'utc_offset': {values['utc_offset']!r} is not a UTC offset",
                fix="write it as -06:00 (or -0600, UTC-6): the offset the recorder kept all deployment",
            )
        deploy = [_deploy_time(values[c], where, c) for c in DEPLOY_COLUMNS]
        if all(deploy) and deploy[1] <= deploy[0]:
            raise RecordingsError(
                f"{where}: deploy_end is before deploy_start (an empty deployment)", fix="swap them, or fix the dates"
            )
        sites[location] = Site(location, lat, lon, values["region"], values["time_zone"], values["study_area"],
                               offset, values["deploy_start"], values["deploy_end"])  # fmt: skip
    return sites


def load_site_table(path: str) -> dict[str, Site]:
    """Read and parse ``path`` (RecordingsError when it cannot be read)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingsError(f"--sites {path}: cannot be read ({exc})", fix="give a UTF-8 CSV file") from None
    notes: list[str] = []
    sites = parse_site_table(text, path, notes)
    for note in notes:
        print(f"badc-mpi: note: {note}", file=sys.stderr)
    return sites
