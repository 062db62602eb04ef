"""Where and when from recording paths (inputs/naming.py), time zones across DST (inputs/clock.py),
and the site table (inputs/sites.py): pure functions, no files but the site table's."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from badc_mpi.errors import RecordingsError, UsageError
from badc_mpi.inputs.clock import AMBIGUOUS, NONEXISTENT, resolve_when
from badc_mpi.inputs.naming import NameFacts, NameProblem, make_layout, parse_path
from badc_mpi.inputs.sites import parse_site_table

EDMONTON = ZoneInfo("America/Edmonton")


def facts(rel: str, layout: str, clock: str | None = None) -> NameFacts:
    out = parse_path(rel, make_layout(layout, clock))
    assert isinstance(out, NameFacts), out
    return out


def problem(rel: str, layout: str) -> NameProblem:
    out = parse_path(rel, make_layout(layout))
    assert isinstance(out, NameProblem), out
    return out


@pytest.mark.parametrize(
    "rel,location,start,gps",
    [
        ("x/NWT-01_20240601_050000.wav", "NWT-01", "2024-06-01 05:00:00", False),
        ("NWT-01_20240601$050000.flac", "NWT-01", "2024-06-01 05:00:00", True),
        ("ABMI-0509-SW_0+1_20230615_043000.wav", "ABMI-0509-SW", "2023-06-15 04:30:00", False),
        ("P12__0__20230615_043000.WAV", "P12", "2023-06-15 04:30:00", False),
    ],
)
def test_wildtrax(rel: str, location: str, start: str, gps: bool) -> None:
    got = facts(rel, "wildtrax")
    assert (got.location, got.start, got.clock, got.gps) == (location, datetime.fromisoformat(start), "fixed", gps)


def test_wildtrax_problems_say_why_and_how() -> None:
    assert "holds '_'" in problem("A_B_20240601_050000.wav", "wildtrax").reason
    assert "not a valid date" in problem("S1_20241301_050000.wav", "wildtrax").reason  # month 13: never guessed
    bad = problem("20240601_050000.wav", "wildtrax")
    assert "LOCATION_YYYYMMDD_HHMMSS" in bad.reason and "rename" in bad.fix


def test_wildlife_acoustics_channel_markers_and_gps() -> None:
    assert facts("SM4A1_0+1_20240601_050000.wav", "wildlife-acoustics").location == "SM4A1"
    assert facts("SM4A1_1_20240601$050000.wav", "wildlife-acoustics").gps
    # '_0' before the date is the channel; what is left holds '_', which WildTrax would split: refused
    assert "holds '_'" in problem("S4A_0_0_20240601_050000.wav", "wildlife-acoustics").reason
    assert facts("SM4A1_20240601_050000.wav", "wildlife-acoustics").location == "SM4A1"
    assert isinstance(parse_path("SM4A1_2024_0601.wav", make_layout("wildlife-acoustics")), NameProblem)


def test_audiomoth_is_utc_and_takes_the_folder() -> None:
    got = facts("site/AM-07/20240601_110000.WAV", "audiomoth")
    assert (got.location, got.clock, got.start) == ("AM-07", "utc", datetime(2024, 6, 1, 11))
    assert facts("AM-07/5E3C8A00.WAV", "audiomoth").start == datetime(2020, 2, 6, 21, 49, 52)  # old firmware: hex Unix time
    assert "no location folder" in problem("20240601_110000.WAV", "audiomoth").reason
    assert facts("AM-07/20240601_050000.WAV", "audiomoth", clock="local").clock == "civil"  # the old name of civil


@pytest.mark.parametrize(
    "rel,study,station",
    [
        ("Kakisa/ARU_data/SM/KAK-03/A/Data/KAK-03_20240601_050000.wav", "Kakisa", "KAK-03"),
        ("Kakisa/Sub2/KAK-03/20240601_050000.wav", "Kakisa", "KAK-03"),
        ("Kakisa/KAK-03/S4A_0+1_20240601_050000.wav", "Kakisa", "KAK-03"),
        ("Kakisa/KAK-03/b/data/x_20240601_050000.flac", "Kakisa", "KAK-03"),
    ],
)
def test_lab_layout(rel: str, study: str, station: str) -> None:
    got = facts(rel, "lab")
    assert (got.study_area, got.location, got.start, got.clock) == (study, station, datetime(2024, 6, 1, 5), "fixed")


def test_lab_layout_problems() -> None:
    assert "no STUDY/STATION" in problem("Kakisa/20240601_050000.wav", "lab").reason
    assert "no STUDY/STATION" in problem("Kakisa/A/Data/20240601_050000.wav", "lab").reason  # only generic folders
    assert "ambiguous" in problem("K/S1/20240601_050000_20240602_060000.wav", "lab").reason
    assert "holds no YYYYMMDD_HHMMSS" in problem("K/S1/recording.wav", "lab").reason


def test_regex_layout() -> None:
    layout = make_layout(r"(?P<study_area>[^/]+)/(?P<location>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}-\d{2}-\d{2})")
    got = parse_path("BU/ST-9/2024-06-01T05-30-00.wav", layout)
    assert isinstance(got, NameFacts)
    assert (got.study_area, got.location, got.start) == ("BU", "ST-9", datetime(2024, 6, 1, 5, 30))
    assert "does not match" in parse_path("BU/x.wav", layout).reason  # type: ignore[union-attr]
    two = make_layout(r"(?P<location>[A-Z]+)_(?P<date>\d{8})_(?P<time>\d{6})")
    assert "ambiguous" in parse_path("AB_20240601_050000/CD_20240602_050000.wav", two).reason  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="lacks the named group"):
        make_layout(r"(?P<location>\w+)_(?P<date>\d{8})")
    with pytest.raises(UsageError, match="nor a valid regular expression"):
        make_layout("(unclosed")


# ------------------------------------------------------------------ time zones
def test_local_names_become_utc_in_summer_and_winter() -> None:
    summer = resolve_when(datetime(2024, 6, 1, 5), "civil", EDMONTON)
    winter = resolve_when(datetime(2024, 1, 15, 5), "civil", EDMONTON)
    assert (summer.utc_text, summer.local_text, summer.note) == ("2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00", "")
    assert (winter.utc_text, winter.local_text) == ("2024-01-15T12:00:00Z", "2024-01-15T05:00:00-07:00")


def test_dst_gap_and_fold_are_resolved_and_flagged() -> None:
    gap = resolve_when(datetime(2024, 3, 10, 2, 30), "civil", EDMONTON)  # 02:30 never happened
    assert (gap.note, gap.utc_text, gap.local_text) == (NONEXISTENT, "2024-03-10T09:30:00Z", "2024-03-10T03:30:00-06:00")
    fold = resolve_when(datetime(2024, 11, 3, 1, 30), "civil", EDMONTON)  # 01:30 happened twice
    assert (fold.note, fold.utc_text, fold.local_text) == (AMBIGUOUS, "2024-11-03T07:30:00Z", "2024-11-03T01:30:00-06:00")
    after = resolve_when(datetime(2024, 11, 3, 2, 30), "civil", EDMONTON)
    assert (after.note, after.utc_text) == ("", "2024-11-03T09:30:00Z")


def test_utc_names_give_the_local_date_which_may_be_the_day_before() -> None:
    when = resolve_when(datetime(2024, 6, 2, 3, 0), "utc", EDMONTON)
    assert (when.utc_text, when.local_date) == ("2024-06-02T03:00:00Z", "2024-06-01")
    unknown = resolve_when(datetime(2024, 6, 2, 3, 0), "utc", None)
    assert (unknown.utc_text, unknown.local_date) == ("2024-06-02T03:00:00Z", "")  # no zone: no guessed date
    local_only = resolve_when(datetime(2024, 6, 2, 3, 0), "fixed", None)
    assert (local_only.utc_text, local_only.local_text, local_only.local_date) == ("", "2024-06-02T03:00:00", "2024-06-02")


# ------------------------------------------------------------------ site table
def test_site_table_parses_and_validates() -> None:
    text = "location,latitude,longitude,region,time_zone,study_area,notes\nNWT-01,61.5,-117.25,CA-NT,America/Yellowknife,Dehcho,x\nP2,,,,,,\n"
    sites = parse_site_table(text, "sites.csv")
    assert sites["NWT-01"].latitude == 61.5 and sites["NWT-01"].zone == ZoneInfo("America/Yellowknife")
    assert sites["P2"].zone is None and sites["P2"].latitude is None
    cases = [
        ("location,latitude,longitude\nA,91,0\n", "line 2, column 'latitude'"),
        ("location,latitude,longitude\nA,50,\n", "go together"),
        ("location,time_zone\nA,Mountain\n", "not an IANA time zone"),
        ("location,region\nA,Alberta\n", "not an eBird region code"),
        ("location\nA\nA\n", "line 3: location 'A' is listed twice"),
        ("where,lat\nA,1\n", r"unknown column\(s\) 'where'"),
        ("lat,lon\n1,2\n", "no 'location' column"),
    ]
    for bad, needle in cases:
        with pytest.raises(RecordingsError, match=needle) as info:
            parse_site_table(bad, "sites.csv")
        assert "sites.csv" in str(info.value) and "Fix:" in str(info.value)
