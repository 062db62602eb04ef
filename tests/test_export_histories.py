"""Detection histories (issue 20): each location's occasions span its own deployment (a stray
2017 file adds one occasion, not years of columns), dates outside deploy_start/deploy_end are
listed and left out, an occasion needs --min-effort-min analysed to be surveyed (a 5-s tail after
midnight is NA), dawn and N-min occasions in a survey window, and wt_format_occupancy's doy/hr
covariates; through the real CLI on synthetic runs."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from test_export import _csv_rows
from test_export_events import _export

from badc_mpi.results.export.meta import ExportError
from badc_mpi.results.export.occasions import occasion_rule

S = 1000
RECS = {
    "r1": ("NWT-08_20240601_050000.wav", "NWT-08", "NWT", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
    "r2": ("NWT-08_20240602_235500.wav", "NWT-08", "NWT", "2024-06-03T05:55:00Z", "2024-06-02T23:55:00-06:00"),
    "r3": ("NWT-08_20170501_050000.wav", "NWT-08", "NWT", "2017-05-01T11:00:00Z", "2017-05-01T05:00:00-06:00"),  # stray
    "r4": ("NWT-09_20170501_050000.wav", "NWT-09", "NWT", "2017-05-01T11:00:00Z", "2017-05-01T05:00:00-06:00"),
}
CHUNKS = {
    "a0": ("r1", 0, 600 * S, "success", [("OVEN", "Ovenbird", 0.9, 10.0, 13.0)]),
    "a1": ("r1", 600 * S, 900 * S, "success", [("RUGR", "Ruffed Grouse", 0.8, 100.0, 103.0)]),  # 05:11:40
    "b0": ("r2", 0, 305 * S, "success", [("RUGR", "Ruffed Grouse", 0.9, 302.0, 304.0)]),  # 00:00:02 on 06-03, 5 s tail
    "c0": ("r3", 0, 60 * S, "success", [("RUGR", "Ruffed Grouse", 0.9, 1.0, 2.0)]),
    "d0": ("r4", 0, 60 * S, "success", []),
}
WINDOW = {
    "deploy_start": {r: "2024-05-25" for r in ("r1", "r2", "r3")},
    "deploy_end": {r: "2024-06-30" for r in ("r1", "r2", "r3")},
}


def _long(exp) -> dict:
    return {
        (r["species"], r["location"], r["occasion_start"]): r for r in _csv_rows(exp / "histories" / "detection_history_long.csv")
    }


def test_each_location_spans_its_own_deployment_and_strays_are_left_out(tmp_path, capsys):
    exp = _export(tmp_path, CHUNKS, RECS, "--format", "histories", "--focus-species", "RUGR", columns=WINDOW)
    rugr = (exp / "histories" / "RUGR.csv").read_text().splitlines()
    # NWT-08: 06-01..06-03 (r3 of 2017 outside its deployment window); NWT-09: its one 2017 day
    assert rugr == ["location,2017-05-01,2024-06-01,2024-06-02,2024-06-03", "NWT-08,NA,1,0,NA", "NWT-09,0,NA,NA,NA"]
    long = _long(exp)
    assert [k[2] for k in long if k[1] == "NWT-08"] == ["2024-06-01", "2024-06-02", "2024-06-03"]
    tail = long[("RUGR", "NWT-08", "2024-06-03")]
    assert (tail["minutes_analysed"], tail["detections"], tail["detected"]) == ("0.083", "1", "NA")  # 5 s < 1 min: NA
    day = long[("RUGR", "NWT-08", "2024-06-01")]
    assert (day["occasion"], day["doy"], day["doy2"], day["hr"], day["hr2"]) == ("1", "153", "23409", "5.0", "25.0")
    assert long[("RUGR", "NWT-08", "2024-06-02")]["hr"] == "23.917"  # 23:55
    doc = json.loads((exp / "export.json").read_text())
    assert doc["left_out"]["outside_deployment"] == {"r3": 1}
    assert "1 chunk(s) of 1 recording(s) outside their location's deployment (deploy_start..deploy_end) left out: r3" in (
        capsys.readouterr().err
    )
    lenient = _export(tmp_path / "low", CHUNKS, RECS, "--format", "histories", "--focus-species", "RUGR",
                      "--min-effort-min", "0.05", columns=WINDOW)  # fmt: skip
    assert _long(lenient)[("RUGR", "NWT-08", "2024-06-03")]["detected"] == "1"


def test_dawn_and_n_minute_occasions_in_a_survey_window(tmp_path):
    dawn = _export(tmp_path, CHUNKS, RECS, "--format", "histories", "--focus-species", "RUGR,OVEN", "--occasion", "dawn",
                   columns=WINDOW)  # fmt: skip
    long = _long(dawn)
    assert [k[2] for k in long if k[:2] == ("RUGR", "NWT-08")] == ["2024-06-01T04:00"]  # r2 (23:55) is outside 04:00-10:00
    assert long[("OVEN", "NWT-08", "2024-06-01T04:00")]["minutes_analysed"] == "15.0"
    blocks = _export(tmp_path / "b", CHUNKS, RECS, "--format", "histories", "--focus-species", "RUGR,OVEN", "--occasion",
                     "10-min", "--survey-window", "05:00-05:20", "--min-effort-min", "6", columns=WINDOW)  # fmt: skip
    long = _long(blocks)
    assert [k[2] for k in long if k[:2] == ("RUGR", "NWT-08")] == ["2024-06-01T05:00", "2024-06-01T05:10"]
    assert long[("OVEN", "NWT-08", "2024-06-01T05:00")]["detected"] == "1"
    assert long[("RUGR", "NWT-08", "2024-06-01T05:00")]["detected"] == "0"
    assert long[("RUGR", "NWT-08", "2024-06-01T05:10")]["detected"] == "NA"  # 5 min analysed < 6
    assert (blocks / "histories" / "RUGR.csv").read_text().splitlines()[0] == (
        "location,2017-05-01T05:00,2024-06-01T05:00,2024-06-01T05:10"  # NWT-09: its one 60-s file
    )


def test_occasion_rules():
    rule = occasion_rule("15-min", "04:00-10:00", 1.0)
    start = dt.datetime(2024, 6, 1, 3, 50)
    pieces = list(rule.pieces(start, start + dt.timedelta(minutes=30)))
    assert [(k.strftime("%H:%M"), a.strftime("%H:%M"), b.strftime("%H:%M")) for k, a, b in pieces] == [
        ("04:00", "04:00", "04:15"), ("04:15", "04:15", "04:20"),
    ]  # fmt: skip
    day = occasion_rule("day", None, 1.0)
    late = dt.datetime(2024, 6, 2, 23, 59)
    assert [k.isoformat() for k, _, _ in day.pieces(late, late + dt.timedelta(minutes=2))] == ["2024-06-02", "2024-06-03"]
    for bad in (("week", None, 1.0), ("day", "10:00-04:00", 1.0), ("5-min", None, 6.0), ("day", "4-10", 1.0)):
        with pytest.raises(ExportError):
            occasion_rule(*bad)


def test_the_site_tables_deployment_window_reaches_the_manifest(tmp_path, monkeypatch):
    import csv

    import numpy as np
    import soundfile as sf

    from badc_mpi.cli import main
    from badc_mpi.errors import RecordingsError
    from badc_mpi.inputs.sites import parse_site_table

    monkeypatch.chdir(tmp_path)
    wav = tmp_path / "ds" / "audio" / "NWT-08" / "NWT-08_20240601_050000.wav"
    wav.parent.mkdir(parents=True)
    sf.write(wav, (np.sin(np.arange(8000 * 5) * 0.05) * 8000).astype(np.int16), 8000, subtype="PCM_16")
    (tmp_path / "ds" / ".datalad").mkdir()
    sites = tmp_path / "sites.csv"
    sites.write_text("location,time_zone,deploy_start,deploy_end\nNWT-08,America/Edmonton,2024-05-25,2024-06-30\n")
    assert main(["chunk", str(tmp_path / "ds" / "audio"), "--layout", "wildtrax", "--sites", str(sites)]) == 0
    row = next(csv.DictReader((tmp_path / "ds" / "manifests" / "audio.csv").open()))
    assert (row["deploy_start"], row["deploy_end"]) == ("2024-05-25", "2024-06-30")  # as written: an end date includes its day
    for bad in ("2024-13-01", "2024-06-01T05:00:00-06:00"):
        with pytest.raises(RecordingsError, match="deploy_start"):
            parse_site_table(f"location,deploy_start\nNWT-08,{bad}\n", "sites.csv")
    with pytest.raises(RecordingsError, match="before deploy_start"):
        parse_site_table("location,deploy_start,deploy_end\nNWT-08,2024-06-02,2024-06-01\n", "sites.csv")


def test_recordings_known_only_by_their_date_count_each_detection_on_its_chunks_day():
    # no recording start (no recording_start_local, no time in the name): a chunk's `date` column is its
    # day, and a detection counts there; a detection in a chunk outside the deployment does not count
    from badc_mpi.results.export.histories import build_histories
    from badc_mpi.results.export.meta import Recording

    recs = {"r1": Recording("r1", "ARU-1/night.wav", "ARU-1")}
    window = {"deploy_start": "2024-06-01", "deploy_end": "2024-06-02"}
    chunks = [
        {"recording_id": "r1", "chunk_id": "c0", "start_ms": 0, "end_ms": 600 * S, "status": "success", "date": "2024-06-01", **window},
        {"recording_id": "r1", "chunk_id": "c1", "start_ms": 600 * S, "end_ms": 1200 * S, "status": "success", "date": "2024-06-02", **window},
        {"recording_id": "r1", "chunk_id": "c2", "start_ms": 1200 * S, "end_ms": 1800 * S, "status": "success", "date": "2024-06-05", **window},
    ]  # fmt: skip
    dets = [
        {"recording_id": "r1", "chunk_id": c, "label_code": "OVEN", "start_ms": s}
        for c, s in (("c0", 5 * S), ("c1", 700 * S), ("c1", 900 * S), ("c2", 1300 * S))
    ]
    hist = build_histories(chunks, recs, dets, ["OVEN"], occasion_rule("day", None, 1.0))
    assert {(sp, loc, key.isoformat()): n for (sp, loc, key), n in hist.counts.items()} == {
        ("OVEN", "ARU-1", "2024-06-01"): 1,
        ("OVEN", "ARU-1", "2024-06-02"): 2,
    }
    assert hist.outside == {"r1": 1}
