"""Field places and clocks (issue 20): small trees named as each recorder names its files (the
manuals and firmware cited in docs/recordings.md), chunked through the CLI; place, UTC and local
time per recording are pinned, and what the rules cannot tell apart is refused (exit 2)."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from badc_mpi.cli import main
from badc_mpi.inputs.header_clock import audiomoth_clock
from badc_mpi.inputs.naming import NameFacts, NameProblem, is_date_folder, make_layout, parse_offset, parse_path

RATE = 8000
EDMONTON_SITES = "location,time_zone\n{rows}"


def wav(path: Path, seconds: float = 4, comment: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16", format="WAV") as handle:
        if comment:
            handle.comment = comment
        handle.write(np.zeros(int(seconds * RATE), dtype=np.int16))
    return path


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def sites(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sites.csv"
    path.write_text(text)
    return str(path)


def chunk(root: Path, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    out = root.parent / "m.csv"
    rc = main(["chunk", str(root), "--out", str(out), "--force", *args])
    if rc == 2:
        return rc, {}
    with open(out, newline="") as handle:
        rows = {r["recording_id"]: r for r in csv.DictReader(handle)}
    return rc, rows


def place_time(rows: dict[str, dict[str, str]]) -> dict[str, tuple[str, str, str]]:
    return {rid: (r["location"], r["recording_start_utc"], r["recording_start_local"]) for rid, r in rows.items()}


def facts(rel: str, layout: str, clock: str | None = None) -> NameFacts:
    got = parse_path(rel, make_layout(layout, clock))
    assert isinstance(got, NameFacts), got
    return got


# ------------------------------------------------------------------ places
def test_a_date_is_never_a_location() -> None:
    for name in ("20240602", "2024-06-02", "2024_06_02", "20220611_Peawanuck2223"):
        assert is_date_folder(name), name
    for name in ("00015141", "KAK-01", "20241302", "2024-0602"):  # a BAR-LT serial, a station, month 13, mixed
        assert not is_date_folder(name), name
    # AudioMoth 1.8+ daily folders (generateFolderAndFilename: YYYYMMDD/), SM5 Data_AC/<date>/
    assert facts("AM-07/20240602/20240602_110000.WAV", "audiomoth").location == "AM-07"
    assert facts("Kakisa/KAK-02/Data_AC/20240602/S5A00032_AC_20240602_050000.wav", "lab").location == "KAK-02"
    assert facts("Kakisa/KAK-02/2024-06-02/KAK-02_20240602_050000.wav", "lab").location == "KAK-02"
    only_dates = parse_path("20240602/20240602_110000.WAV", make_layout("audiomoth"))
    assert isinstance(only_dates, NameProblem) and "date folders" in only_dates.fix
    as_regex = parse_path("20240602/X_20240602_050000.wav", make_layout(r"(?P<location>[^/]+)/X_(?P<date>\d{8})_(?P<time>\d{6})"))
    assert isinstance(as_regex, NameProblem) and "is a date, never a location" in as_regex.reason


def test_recorder_names_from_their_manuals() -> None:
    # SM5 guide, "Audio Recording Files": RecorderName_AC_YYYYMMDD_hhmmss; the name holds no '_'
    sm5 = facts("S5A00032_AC_20240601_050000.wav", "wildlife-acoustics")
    assert (sm5.location, sm5.start, sm5.gps) == ("S5A00032", datetime(2024, 6, 1, 5), False)
    assert facts("S5A00032_AC_20260306$154513.wav", "wildlife-acoustics").gps
    assert facts("S5A00032_AC_20240601_050000.wav", "wildtrax").location == "S5A00032"
    # AudioMoth firmware: [16-hex id_]YYYYMMDD_HHMMSS[T].WAV
    for name in ("20240601_110000T.WAV", "20240601_110000_T.WAV", "24F319055FDF2F5B_20240601_110000.WAV",
                 "24F319055FDF2F5B_20240601_110000T.WAV"):  # fmt: skip
        got = facts(f"AM-07/{name}", "audiomoth")
        assert (got.location, got.start, got.clock) == ("AM-07", datetime(2024, 6, 1, 11), "utc"), name
    # BAR-LT (ARUtools' log file): SERIAL_YYYYMMDDTHHMMSS-0400_SS22.wav in a date_schedule folder
    bar = facts("JBL/P71-1/20220611_Peawanuck2223/00015141_20220611T215000-0400_SS22.wav", "lab")
    assert (bar.location, bar.start, bar.offset_min) == ("P71-1", datetime(2022, 6, 11, 21, 50), -240)
    assert facts("JBL/P71-1/20210604T212300-0400_SS.wav", "lab").offset_min == -240
    # a regex whose time group is HHMM (second 0); an offset right after the time is read
    hhmm = facts("ST-9/2024_06_01_0530.wav", r"(?P<location>[^/]+)/(?P<date>\d{4}_\d{2}_\d{2})_(?P<time>\d{4})")
    assert hhmm.start == datetime(2024, 6, 1, 5, 30)
    assert facts("P1/20240601T050000+0530.wav", r"(?P<location>[^/]+)/(?P<date>\d{8})T(?P<time>\d{6})").offset_min == 330
    assert [parse_offset(t) for t in ("-0600", "-06:00", "UTC-6", "UTC+5:30", "UTC", "+1500", "x")] == [
        -360, -360, -360, 330, 0, None, None,
    ]  # fmt: skip


def test_field_trees_give_place_utc_and_local_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    moths = tmp_path / "moths"
    wav(moths / "AM-07" / "20240602" / "20240602_110000.WAV")
    wav(moths / "AM-07" / "20240602" / "24F319055FDF2F5B_20240602_120000T.WAV")
    wav(moths / "AM-08" / "20240602" / "20240602_110000.WAV")  # the same name at another station: its own location
    table = sites(tmp_path, "location,time_zone\nAM-07,America/Edmonton\nAM-08,America/Edmonton\n")
    rc, rows = chunk(moths, "--layout", "audiomoth", "--sites", table)
    assert rc == 0, capsys.readouterr()
    assert place_time(rows) == {
        "AM-07~20240602~20240602_110000": ("AM-07", "2024-06-02T11:00:00Z", "2024-06-02T05:00:00-06:00"),
        "AM-07~20240602~24F319055FDF2F5B_20240602_120000T": ("AM-07", "2024-06-02T12:00:00Z", "2024-06-02T06:00:00-06:00"),
        "AM-08~20240602~20240602_110000": ("AM-08", "2024-06-02T11:00:00Z", "2024-06-02T05:00:00-06:00"),
    }
    bars = tmp_path / "bars"
    wav(bars / "JBL" / "P71-1" / "20220611_Peawanuck2223" / "00015141_20220611T215000-0400_SS22.wav")
    # the site's zone says -05:00 in June: the name's own offset wins (the recorder's clock)
    rc, rows = chunk(bars, "--layout", "lab", "--sites", sites(tmp_path, "location,time_zone\nP71-1,America/Winnipeg\n"))
    assert rc == 0
    assert place_time(rows) == {
        "JBL~P71-1~20220611_Peawanuck2223~00015141_20220611T215000-0400_SS22": (
            "P71-1", "2022-06-12T01:50:00Z", "2022-06-11T21:50:00-04:00",
        ),
    }  # fmt: skip
    sm5 = tmp_path / "sm5"
    wav(sm5 / "S5A00032" / "Data_AC" / "20240601" / "S5A00032_AC_20240601_050000.wav")
    rc, rows = chunk(sm5, "--layout", "wildlife-acoustics", "--time-zone", "America/Edmonton")
    assert rc == 0 and place_time(rows)["S5A00032~Data_AC~20240601~S5A00032_AC_20240601_050000"] == (
        "S5A00032", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00",
    )  # fmt: skip


# ------------------------------------------------------------------ clocks
def test_fixed_clock_keeps_one_offset_across_dst(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "sm4"
    for name in ("ST-1_20240301_050000", "ST-1_20240310_023000", "ST-1_20240310_033000", "ST-1_20240401_050000"):
        wav(root / "ST-1" / f"{name}.wav")
    table = sites(tmp_path, "location,time_zone\nST-1,America/Edmonton\n")
    rc, rows = chunk(root, "--layout", "wildtrax", "--sites", table)  # fixed: MST (-07:00) from the first recording
    assert rc == 0
    assert "clocks (docs/recordings.md, Clocks): fixed UTC-07:00 (4)" in capsys.readouterr().out
    assert {rid.split("~")[1]: t[1:] for rid, t in place_time(rows).items()} == {
        "ST-1_20240301_050000": ("2024-03-01T12:00:00Z", "2024-03-01T05:00:00-07:00"),
        "ST-1_20240310_023000": ("2024-03-10T09:30:00Z", "2024-03-10T02:30:00-07:00"),  # in the skipped hour: distinct
        "ST-1_20240310_033000": ("2024-03-10T10:30:00Z", "2024-03-10T03:30:00-07:00"),
        "ST-1_20240401_050000": ("2024-04-01T12:00:00Z", "2024-04-01T05:00:00-07:00"),  # after the change: still right
    }
    # the site table's utc_offset is the deployment's offset when given
    offset_table = sites(tmp_path, "location,time_zone,utc_offset\nST-1,America/Edmonton,-06:00\n")
    rc, rows = chunk(root, "--layout", "wildtrax", "--sites", offset_table)
    assert rc == 0 and rows["ST-1~ST-1_20240301_050000"]["recording_start_utc"] == "2024-03-01T11:00:00Z"
    assert rows["ST-1~ST-1_20240301_050000"]["recording_start_local"] == "2024-03-01T05:00:00-06:00"
    # utc: names are UTC; local times keep the deployment's offset too (MST at its first recording)
    rc, rows = chunk(root, "--layout", "wildtrax", "--sites", table, "--clock", "utc")
    assert rc == 0 and rows["ST-1~ST-1_20240401_050000"]["recording_start_local"] == "2024-03-31T22:00:00-07:00"


def test_utc_names_across_the_autumn_hour_keep_distinct_local_times(tmp_path: Path) -> None:
    root = tmp_path / "moths"
    for name in ("20241102_120000", "20241103_073000", "20241103_083000"):  # 01:30 MDT and 01:30 MST in civil time
        wav(root / "AM-07" / f"{name}.WAV")
    rc, rows = chunk(root, "--layout", "audiomoth", "--time-zone", "America/Edmonton")
    assert rc == 0
    assert [r["recording_start_local"] for r in rows.values()] == [
        "2024-11-02T06:00:00-06:00", "2024-11-03T01:30:00-06:00", "2024-11-03T02:30:00-06:00",
    ]  # fmt: skip  # one offset for the deployment: WildTrax never sees one wall-clock time twice


def test_civil_clock_in_the_skipped_hour_is_two_recordings_at_one_instant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "renamed"
    wav(root / "ST-1" / "ST-1_20240310_023000.wav")
    wav(root / "ST-1" / "ST-1_20240310_033000.wav")
    table = sites(tmp_path, "location,time_zone\nST-1,America/Edmonton\n")
    rc, _ = chunk(root, "--layout", "wildtrax", "--sites", table, "--clock", "civil")
    err = capsys.readouterr().err
    assert rc == 2
    assert "ST-1/ST-1_20240310_023000.wav and ST-1/ST-1_20240310_033000.wav: location 'ST-1' at one instant" in err
    assert "2024-03-10T09:30:00Z" in err and not (tmp_path / "m.csv").exists()
    # two cards of one station holding one name (lab layout A/ and B/): refused too, whatever the clock
    lab = tmp_path / "lab"
    wav(lab / "K" / "ST-2" / "A" / "ST-2_20240601_050000.wav")
    wav(lab / "K" / "ST-2" / "B" / "ST-2_20240601_050000.wav")
    assert chunk(lab, "--layout", "lab", "--time-zone", "America/Edmonton")[0] == 2
    assert "location 'ST-2' at one instant 2024-06-01T11:00:00Z" in capsys.readouterr().err


AUDIOMOTH_COMMENT = (
    "Recorded at 05:00:00 01/06/2024 (UTC-6) by AudioMoth 24F319055FDF2F5B at medium gain while battery was 4.2V "
    "and temperature was 15.2C."
)


def test_audiomoth_header_states_the_clock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = audiomoth_clock(AUDIOMOTH_COMMENT)
    assert clock is not None and (clock.start, clock.offset_min, clock.zone_text) == (datetime(2024, 6, 1, 5), -360, "UTC-6")
    assert audiomoth_clock("Recorded at 11:00:00 01/06/2024 (UTC) during deployment 0123456789ABCDEF at").offset_min == 0  # type: ignore[union-attr]
    assert audiomoth_clock("Recorded at 00:00:00 01/06/2024 (UTC+5:30) by AudioMoth X").offset_min == 330  # type: ignore[union-attr]
    assert audiomoth_clock("a comment") is None
    root = tmp_path / "moths"
    wav(root / "AM-07" / "20240601_050000.WAV", comment=AUDIOMOTH_COMMENT)  # configured to UTC-6: a local name
    renamed = AUDIOMOTH_COMMENT.replace("05:00:00 01/06/2024", "05:00:00 02/06/2024")
    wav(root / "AM-07" / "20240602_110000.WAV", comment=renamed)  # renamed since (the name is UTC)
    table = sites(tmp_path, "location,time_zone\nAM-07,America/Edmonton\n")
    rc, rows = chunk(root, "--layout", "audiomoth", "--sites", table)
    out = capsys.readouterr().out
    assert rc == 0
    assert place_time(rows) == {
        "AM-07~20240601_050000": ("AM-07", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
        "AM-07~20240602_110000": ("AM-07", "2024-06-02T11:00:00Z", "2024-06-02T05:00:00-06:00"),
    }
    assert (
        "1 recording(s) whose WAV header disagrees on the clock" in out and "renamed, so the name is read by --clock utc" in out
    )
    # a site table saying otherwise is named in the summary; the header wins
    rc, rows = chunk(
        root,
        "--layout",
        "audiomoth",
        "--sites",
        sites(tmp_path, "location,time_zone,utc_offset\nAM-07,America/Edmonton,-07:00\n"),
    )
    out = capsys.readouterr().out
    assert rc == 0 and rows["AM-07~20240601_050000"]["recording_start_utc"] == "2024-06-01T11:00:00Z"
    assert "AM-07/20240601_050000.WAV: its AudioMoth header says the clock kept UTC-6, the site table UTC-07:00" in out


# ------------------------------------------------------------------ WildTrax upload names
#: recording -> (file, location, study area, start UTC, start local): an AudioMoth UTC name, a name
#: already as WildTrax reads it, a WildTrax-form name kept in UTC (renamed as wildrtrax renames
#: AudioMoth files), an SM5 name
UPLOAD = {
    "m1": ("AM-07/20240601_110000.WAV", "AM-07", "A", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
    "w1": ("NWT-01_20240601_050000.wav", "NWT-01", "A", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
    "u1": ("NWT-02_20240601_110000.WAV", "NWT-02", "A", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
    "s1": ("S5A00032_AC_20240601_050000.wav", "S5A00032", "A", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
}
UPLOAD_CHUNKS = {f"{r}0": (r, 0, 60000, "success", [("AMRO", "American Robin", 0.9, 1.0, 4.0)]) for r in UPLOAD}


def wildtrax_reads(file_name: str) -> tuple[str, str]:
    """Location and date-time as wildRtrax's wt_audio_scanner reads an uploaded name."""
    stem = Path(file_name).stem
    location, rest = stem.split("_", 1)
    return location, datetime.strptime(rest, "%Y%m%d_%H%M%S").strftime("%Y-%m-%d %H:%M:%S")


def test_tasks_carry_the_time_wildtrax_reads_from_the_upload_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_export import _csv_rows, make_campaign

    manifest = make_campaign(tmp_path, UPLOAD_CHUNKS, recordings=UPLOAD)
    args = ["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg")]
    assert main([*args, "--output", str(tmp_path / "exp"), "--format", "wildtrax"]) == 0
    renames = {r["source_path"]: r for r in _csv_rows(tmp_path / "exp" / "wildtrax_rename.csv")}
    assert {src: (r["action"], r["wildtrax_file_name"]) for src, r in renames.items()} == {
        "audio/AM-07/20240601_110000.WAV": ("rename", "AM-07_20240601_050000.wav"),
        "audio/NWT-02_20240601_110000.WAV": ("rename", "NWT-02_20240601_050000.wav"),
        "audio/S5A00032_AC_20240601_050000.wav": ("rename", "S5A00032_20240601_050000.wav"),
    }  # NWT-01's own name is what WildTrax reads: not listed
    uploaded = {src: r["wildtrax_file_name"] for src, r in renames.items()}
    tasks = _csv_rows(tmp_path / "exp" / "wildtrax_tasks.csv")
    tags = _csv_rows(tmp_path / "exp" / "wildtrax_tags.csv")
    assert len(tasks) == 4 and len(tags) == 4
    for fname, *_ in UPLOAD.values():
        name = uploaded.get(f"audio/{fname}", Path(fname).name)
        read = wildtrax_reads(name)
        assert read in {(t["location"], t["recording_date_time"]) for t in tasks}, name
        assert read in {(t["location"], t["recording_date_time"]) for t in tags}, name
    assert "3 recording(s) must be uploaded under another name" in capsys.readouterr().err
    # two recordings that would be one WildTrax recording (one location, one start): refused, nothing written
    clash = dict(UPLOAD, u1=("NWT-01_20240601_110000.WAV", *UPLOAD["w1"][1:]))
    manifest = make_campaign(tmp_path / "clash", UPLOAD_CHUNKS, recordings=clash)
    args = [
        "export",
        str(manifest),
        "--telemetry-dir",
        str(tmp_path / "clash" / "tel"),
        "--dest",
        str(tmp_path / "clash" / "agg"),
    ]
    assert main([*args, "--output", str(tmp_path / "clash" / "exp"), "--format", "wildtrax"]) == 2
    err = capsys.readouterr().err
    assert "recordings 'u1' and 'w1'" in err or "recordings 'w1' and 'u1'" in err
    assert "NWT-01_20240601_050000.wav" in err and not (tmp_path / "clash" / "exp" / "wildtrax_tasks.csv").exists()


def test_a_gap_of_over_30_days_starts_a_new_deployment(tmp_path: Path) -> None:
    from badc_mpi.chunker.plan import split_deployments

    days = [datetime(2023, 5, 1), datetime(2023, 6, 30), datetime(2024, 3, 1), datetime(2024, 3, 20)]
    assert split_deployments(days[::-1]) == [days[:1], days[1:2], days[2:]]
    root = tmp_path / "seasons"
    # 2023 deployed in May (MDT), 2024 in early March (MST): each season keeps its own first offset
    for name in ("ST-1_20230501_050000", "ST-1_20230520_050000", "ST-1_20240301_050000", "ST-1_20240320_050000"):
        wav(root / "ST-1" / f"{name}.wav")
    rc, rows = chunk(root, "--layout", "wildtrax", "--time-zone", "America/Edmonton")
    assert rc == 0
    assert {rid.split("~")[1][5:13]: r["recording_start_local"][-6:] for rid, r in rows.items()} == {
        "20230501": "-06:00", "20230520": "-06:00", "20240301": "-07:00", "20240320": "-07:00",
    }  # fmt: skip


def test_a_header_keeping_the_deployments_offset_across_dst_is_not_a_disagreement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an AudioMoth configured to UTC-7 in Edmonton keeps UTC-7 after the spring change, as the fixed
    # clock does: nothing disagrees (the note named "the site table", which said nothing)
    root = tmp_path / "moths"
    for day in ("01/03/2024", "20/03/2024"):  # one deployment (no gap over 30 days), across 10 March
        d, m, y = day.split("/")
        comment = AUDIOMOTH_COMMENT.replace("05:00:00 01/06/2024 (UTC-6)", f"05:00:00 {day} (UTC-7)")
        wav(root / "AM-07" / f"{y}{m}{d}_050000.WAV", comment=comment)
    rc, rows = chunk(root, "--layout", "audiomoth", "--sites", sites(tmp_path, "location,time_zone\nAM-07,America/Edmonton\n"))
    out = capsys.readouterr().out
    assert rc == 0 and "says the clock kept" not in out, out
    assert rows["AM-07~20240320_050000"]["recording_start_utc"] == "2024-03-20T12:00:00Z"  # 05:00 at UTC-7
    # with --clock civil the zone's own offset at that instant is what a header is compared with
    rc, rows = chunk(
        root,
        "--layout",
        "audiomoth",
        "--clock",
        "civil",
        "--sites",
        sites(tmp_path, "location,time_zone\nAM-07,America/Edmonton\n"),
    )
    out = capsys.readouterr().out
    assert rc == 0 and "20240320_050000.WAV: its AudioMoth header says the clock kept UTC-7, the zone UTC-06:00" in out, out
