"""WildTrax for recordings longer than 1800 s: split into 1800-s clips (a task each, starting at
the clip's own second 0), every tag in the clip its start falls in, never straddling two tasks,
none lost (golden files); and the exports read recording by recording, whatever the batch size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_export import _csv_rows, _golden, make_campaign

from badc_mpi.cli import main
from badc_mpi.results.export import stream as export_stream
from badc_mpi.results.export.meta import Recording
from badc_mpi.results.export.wildtrax import plan_clips

#: recording -> (file, location, study area, start UTC, start local)
LONG = {
    "r1": ("NWT-03_20240601_050000.flac", "NWT-03", "NWT", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
    "r2": ("NWT-04_20240601_050000.wav", "NWT-04", "NWT", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
    "r3": ("NWT-05_20240601_050000.wav", "NWT-05", "NWT", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00"),
}
S = 1000
#: r1: 4000 s in chunks of 1200 s (the second straddles the 1800-s clip boundary; the third failed);
#: r2: 3700 s, its second clip never analysed (no task); r3: 3600.5 s (a 0.5-s tail: no clip)
CHUNKS = {
    "a0": ("r1", 0, 1200 * S, "success", [("RUGR", "Ruffed Grouse", 0.9, 0.0, 3.0), ("OVEN", "Ovenbird", 0.8, 100.0, 103.0)]),
    "a1": ("r1", 1200 * S, 2400 * S, "success", [
        ("RUGR", "Ruffed Grouse", 0.7, 599.0, 602.0),   # 1799-1802 s: cut at 1800, stays in clip 0
        ("RUGR", "Ruffed Grouse", 0.6, 600.0, 603.0),   # 1800 s: clip 1's second 0 -> 0.1
        ("OVEN", "Ovenbird", 0.5, 900.0, 903.0),        # 2100 s: clip 1 at 300 s
    ]),
    "a2": ("r1", 2400 * S, 3600 * S, "failed", []),
    "a3": ("r1", 3600 * S, 4000 * S, "success", [("RUGR", "Ruffed Grouse", 0.8, 5.5, 8.5), ("OVEN", "Ovenbird", 0.9, 399.0, 400.0)]),
    "b0": ("r2", 0, 1800 * S, "success", [("WIPT", "Willow Ptarmigan", 0.9, 1797.0, 1800.0)]),
    "b1": ("r2", 1800 * S, 3700 * S, "failed", []),
    "c0": ("r3", 0, 1800 * S, "success", []),
    "c1": ("r3", 1800 * S, 3600 * S + 500, "success", [("RUGR", "Ruffed Grouse", 0.9, 1800.2, 1800.5)]),  # in the 0.5-s tail
}  # fmt: skip


def _run(tmp_path: Path, *args: str) -> Path:
    manifest = make_campaign(tmp_path, CHUNKS, recordings=LONG)
    code = main(["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"),
                 "--output", str(tmp_path / "exp"), *args])  # fmt: skip
    assert code == 0
    return tmp_path / "exp"


def test_clips_of_a_long_recording_are_1800_s_wildtrax_recordings():
    rec = Recording("r", "x/NWT-03_20240601_050000.flac", "NWT-03", duration_ms=4000 * S)
    rec.start_local = __import__("datetime").datetime(2024, 6, 1, 5, 0, 0)
    clips = plan_clips(rec)
    assert [(c.start_ms, c.end_ms, c.task_duration_s, c.recording_date_time, c.file_name) for c in clips] == [
        (0, 1800 * S, "1799.99", "2024-06-01 05:00:00", "NWT-03_20240601_050000.flac"),  # wildrtrax: under 1800
        (1800 * S, 3600 * S, "1799.99", "2024-06-01 05:30:00", "NWT-03_20240601_053000.flac"),
        (3600 * S, 4000 * S, "400", "2024-06-01 06:00:00", "NWT-03_20240601_060000.flac"),
    ]
    assert [c.task_duration_s for c in plan_clips(rec, 600)] == ["600", "600", "400"]  # --task-duration, capped at the clip
    rec.duration_ms = 62500
    assert [c.task_duration_s for c in plan_clips(rec)] == ["62.5"]  # two decimals kept
    rec.duration_ms = 1800 * S
    assert len(plan_clips(rec)) == 1
    rec.duration_ms = 3600 * S + 999
    assert len(plan_clips(rec)) == 2  # a tail under 1 s is no clip


def test_recordings_longer_than_1800_s_split_into_tasks_golden(tmp_path, capsys):
    exp = _run(tmp_path, "--format", "wildtrax")
    _golden("wildtrax_split_tags.csv", exp / "wildtrax_tags.csv")
    _golden("wildtrax_split_tasks.csv", exp / "wildtrax_tasks.csv")
    _golden("wildtrax_split_clips.csv", exp / "wildtrax_clips.csv")
    tags = _csv_rows(exp / "wildtrax_tags.csv")
    for t in tags:  # every tag inside its task
        assert 0 < float(t["tag_start_time"]) < float(t["task_duration"]) < 1800
        assert float(t["tag_start_time"]) + float(t["tag_duration"]) <= float(t["task_duration"]) + 1e-9
    r1 = [
        (t["recording_date_time"], t["species_code"], t["tag_start_time"], t["tag_duration"])
        for t in tags
        if t["location"] == "NWT-03"
    ]
    assert r1 == [
        ("2024-06-01 05:00:00", "RUGR", "0.1", "3.0"), ("2024-06-01 05:00:00", "OVEN", "100.0", "3.0"),
        ("2024-06-01 05:00:00", "RUGR", "1799.0", "0.99"),  # cut at the task's end (1799.99 s)
        ("2024-06-01 05:30:00", "RUGR", "0.1", "2.0"),  # ... and continued in the next task: heard there too
        ("2024-06-01 05:30:00", "RUGR", "0.1", "3.0"), ("2024-06-01 05:30:00", "OVEN", "300.0", "3.0"),
        ("2024-06-01 06:00:00", "RUGR", "5.5", "3.0"), ("2024-06-01 06:00:00", "OVEN", "399.0", "1.0"),
    ]  # fmt: skip
    tasks = {(t["location"], t["recording_date_time"]): (t["task_duration"], t["task_is_complete"])
             for t in _csv_rows(exp / "wildtrax_tasks.csv")}  # fmt: skip
    assert tasks[("NWT-03", "2024-06-01 05:30:00")] == ("1799.99", "f")  # its 2400-3600 s chunk failed
    assert tasks[("NWT-03", "2024-06-01 06:00:00")] == ("400", "f")  # incomplete by default, as wildrtrax writes
    assert ("NWT-04", "2024-06-01 05:30:00") not in tasks  # no analysed chunk: no task
    err = capsys.readouterr().err
    assert "3 recording(s) longer than 1800 s split into 8 clips (2 without an analysed chunk" in err
    assert "2 detection(s) cut at their task's end (1 continued into the next task" in err
    assert "1 tag(s) left out: in a tail under 1 s" in err
    complete = _run(tmp_path / "complete", "--format", "wildtrax", "--task-status", "complete")
    states = {
        (t["location"], t["recording_date_time"]): t["task_is_complete"] for t in _csv_rows(complete / "wildtrax_tasks.csv")
    }
    assert states[("NWT-03", "2024-06-01 05:00:00")] == "t" and states[("NWT-03", "2024-06-01 05:30:00")] == "f"
    doc = json.loads((exp / "export.json").read_text())
    assert "wildtrax_clips.csv" in doc["files"]


def test_1spt_keeps_one_tag_per_species_per_clip(tmp_path):
    exp = _run(tmp_path, "--format", "wildtrax", "--task-method", "1SPT")
    tags = [
        (t["recording_date_time"], t["species_code"]) for t in _csv_rows(exp / "wildtrax_tags.csv") if t["location"] == "NWT-03"
    ]
    assert tags == [("2024-06-01 05:00:00", "RUGR"), ("2024-06-01 05:00:00", "OVEN"), ("2024-06-01 05:30:00", "RUGR"),
                    ("2024-06-01 05:30:00", "OVEN"), ("2024-06-01 06:00:00", "RUGR"), ("2024-06-01 06:00:00", "OVEN")]  # fmt: skip


@pytest.mark.parametrize("batch_rows", [1, 2, 3])
def test_streamed_export_is_the_same_whatever_the_batch_size(tmp_path, monkeypatch, batch_rows):
    reference = _run(tmp_path / "ref", "--format", "all", "--focus-species", "RUGR,OVEN")
    monkeypatch.setattr(export_stream, "BATCH_ROWS", batch_rows)
    small = _run(tmp_path / "small", "--format", "all", "--focus-species", "RUGR,OVEN")
    names = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file() and p.name != "export.json")
    assert names == sorted(p.relative_to(small) for p in small.rglob("*") if p.is_file() and p.name != "export.json")
    assert (
        len(names) == 4 + 3 + 2 + 4
    )  # wildtrax 4 (tags, tasks, clips, rename), raven 3, tables all + NWT, histories long/effort/2 species
    for name in names:
        assert (reference / name).read_bytes() == (small / name).read_bytes(), name
    assert not [p for p in small.iterdir() if p.name.startswith(".")]  # the staging folder is gone


def test_recording_groups_merge_two_sorted_streams():
    import duckdb

    con = duckdb.connect()
    chunks = con.cursor().sql("SELECT * FROM (VALUES ('a', 0, 'a0'), ('b', 0, 'b0'), ('b', 5, 'b1'), ('d', 0, 'd0')) "
                              "t(recording_id, start_ms, chunk_id)").order("recording_id, start_ms")  # fmt: skip
    dets = con.cursor().sql("SELECT * FROM (VALUES ('b', 1), ('c', 2), ('d', 3), ('d', 4), ('e', 5)) "
                            "t(recording_id, start_ms)").order("recording_id, start_ms")  # fmt: skip
    groups = [(g.recording_id, [c["chunk_id"] for c in g.chunks], [d["start_ms"] for d in g.detections])
              for g in export_stream.recording_groups(chunks, dets, batch_rows=1)]  # fmt: skip
    assert groups == [("a", ["a0"], []), ("b", ["b0", "b1"], [1]), ("d", ["d0"], [3, 4])]  # c, e: no chunk rows
