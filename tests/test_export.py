"""Science out: absolute times (across a DST change), the overlap merge (on, off, auto), the
WildTrax and Raven exports against golden files, the lab's tables, detection histories with
unsurveyed days, and a missing metadata column as a one-line error that writes nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from badc_mpi.cli import main
from badc_mpi.results.aggregate.dataset import aggregate
from badc_mpi.storage.atomic import jsonl_bytes
from badc_mpi.storage.detections import RawDetection, canonical_records
from badc_mpi.storage.ledger import LedgerWriter, entry_record, header_record

from ci_rules import check_golden
from helpers import make_chunk

GOLDEN = Path(__file__).parent / "golden"
RUN = "20240312T000000Z-eeee0001"
META = ("location", "study_area", "recording_start_utc", "recording_start_local")
#: recording -> (file, location, study area, start UTC, start local); 2024-03-10 is the DST change
#: in Mountain time: r1 starts at -07:00, r2 (after the change) at -06:00
RECORDINGS = {
    "r1": ("NWT-01_20240309_050000.wav", "NWT-01", "NWT", "2024-03-09T12:00:00Z", "2024-03-09T05:00:00-07:00"),
    "r2": ("NWT-01_20240311_050000.wav", "NWT-01", "NWT", "2024-03-11T11:00:00Z", "2024-03-11T05:00:00-06:00"),
    "r3": ("NWT-02_20240309_060000.wav", "NWT-02", "BOR", "2024-03-09T13:00:00Z", "2024-03-09T06:00:00-07:00"),
    "r4": ("NWT-02_20240311_060000.wav", "NWT-02", "BOR", "2024-03-11T12:00:00Z", "2024-03-11T06:00:00-06:00"),
}
#: chunk -> (recording, start_ms, end_ms, status, [(code, name, confidence, start_s, end_s)])
CHUNKS = {
    "a0": ("r1", 0, 60000, "success", [
        ("RUGR", "Ruffed Grouse", 0.9, 0.0, 3.0), ("OVEN", "Ovenbird", 0.4, 10.0, 13.0),
        ("FROG-WOOD", "Wood Frog", 0.8, 20.0, 23.0), ("AMRO", "American Robin", 0.7, 57.0, 60.0),
    ]),
    "a1": ("r1", 60000, 120000, "success", [("RUGR", "Ruffed Grouse", 0.6, 1.5, 4.5), ("AMRO", "American Robin", 0.5, 0.0, 2.0)]),
    "b0": ("r2", 0, 60000, "success", [("OVEN", "Ovenbird", 0.95, 5.0, 8.0)]),
    "b1": ("r2", 60000, 120000, "failed", []),
    "c0": ("r3", 0, 60000, "success", []),
    "d0": ("r4", 0, 60000, None, []),
}  # fmt: skip


def make_campaign(
    root: Path, chunks: dict = CHUNKS, *, meta: tuple[str, ...] = META, stem: str = "campaign", recordings: dict = RECORDINGS
) -> Path:
    """A manifest of virtual chunks (source_path: the whole recording) and one run's per-chunk outputs."""
    manifest = root / "manifests" / f"{stem}.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["recording_id", "chunk_id", "source_path", "start_ms", "end_ms", *meta])]
    made = {}
    for cid, (rid, start, end, _, _) in chunks.items():
        fname, *values = recordings[rid]
        extra = tuple((k, v) for k, v in zip(META, values) if k in meta)
        lines.append(",".join([rid, cid, f"audio/{fname}", str(start), str(end), *(v for _, v in extra)]))
        made[cid] = make_chunk(recording_id=rid, chunk_id=cid, source_path=f"audio/{fname}", input_path=str(manifest.parent / "audio" / fname),
                               start_ms=start, end_ms=end, extra=extra, manifest=str(manifest))  # fmt: skip
    manifest.write_text("\n".join(lines) + "\n")
    out, tel = root / "out", root / "tel"
    ledger = LedgerWriter(
        str(tel / f"{stem}_20240312T000000Z.ledger.jsonl"), header_record(RUN, [str(manifest)], str(out), "2024-03-12T00:00:00Z")
    )
    for cid, (rid, _, _, status, dets) in chunks.items():
        if status is None:
            continue
        if status == "success":
            raw = [RawDetection(code, code, name, s, e, conf, cid) for code, name, conf, s, e in dets]
            path = out / rid / f"{cid}.detections.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(
                jsonl_bytes(canonical_records(raw, made[cid], run_id=RUN, hawkears_version="2.3.0", model_version="m"))
            )
        ledger.append(entry_record(made[cid], status, run_id=RUN, attempts=1, failure_class=None if status == "success" else "exit",
                                   reason="" if status == "success" else "boom", finished_at="2024-03-12T00:01:00Z",
                                   has_outputs=status == "success"))  # fmt: skip
    ledger.close()
    return manifest


def _agg(root: Path, manifest: Path, **kwargs) -> Path:
    folder = root / "agg"
    aggregate([str(manifest)], str(folder), telemetry_dir=str(root / "tel"), **kwargs)
    return folder


def _csv_rows(path: Path, delimiter: str = ",") -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def test_absolute_times_follow_the_recording_offset_across_a_dst_change(tmp_path):
    folder = _agg(tmp_path, make_campaign(tmp_path))
    rows = {(r["chunk_id"], r["label_code"]): r for r in pq.read_table(folder / "detections.parquet").to_pylist()}
    before, after = rows[("a1", "RUGR")], rows[("b0", "OVEN")]
    assert before["detection_start_utc"].isoformat() == "2024-03-09T12:01:01.500000+00:00"
    assert before["detection_start_local"] == "2024-03-09T05:01:01.500-07:00"  # MST
    assert after["detection_start_utc"].isoformat() == "2024-03-11T11:00:05+00:00"
    assert after["detection_start_local"] == "2024-03-11T05:00:05.000-06:00"  # MDT: the offset differs by date
    assert after["detection_end_utc"].isoformat() == "2024-03-11T11:00:08+00:00"
    chunks = {r["chunk_id"]: r for r in pq.read_table(folder / "chunks.parquet").to_pylist()}
    assert chunks["d0"]["status"] == "not_analysed" and chunks["d0"]["location"] == "NWT-02"  # metadata of unanalysed chunks kept


def test_without_overlap_nothing_merges_even_when_detections_touch(tmp_path):
    folder = _agg(tmp_path, make_campaign(tmp_path))
    doc = json.loads((folder / "aggregate.json").read_text())
    assert doc["overlap_merge"]["applied"] is False and doc["overlap_merge"]["chunks_overlap"] is False
    amro = sorted(
        (r["start_ms"], r["end_ms"])
        for r in pq.read_table(folder / "detections.parquet").to_pylist()
        if r["label_code"] == "AMRO"
    )
    assert amro == [(57000, 60000), (60000, 62000)]  # touching at the chunk boundary, still two


OVERLAP = {
    "a0": ("r1", 0, 63000, "success", [("RUGR", "Ruffed Grouse", 0.6, 59.0, 62.0), ("OVEN", "Ovenbird", 0.4, 10.0, 13.0)]),
    "a1": ("r1", 60000, 123000, "success", [("RUGR", "Ruffed Grouse", 0.8, 0.0, 2.5), ("RUGR", "Ruffed Grouse", 0.7, 30.0, 33.0)]),
    "b0": ("r2", 0, 63000, "success", [("RUGR", "Ruffed Grouse", 0.5, 59.0, 62.0)]),  # another recording: never merged
}  # fmt: skip


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_overlapping_chunks_merge_a_label_across_the_boundary(tmp_path, mode):
    folder = _agg(tmp_path, make_campaign(tmp_path, OVERLAP), merge_overlaps=mode)
    rows = sorted(
        (
            r["recording_id"],
            r["label_code"],
            r["start_ms"],
            r["end_ms"],
            round(r["confidence"], 3),
            r["merged_count"],
            r["chunk_id"],
        )
        for r in pq.read_table(folder / "detections.parquet").to_pylist()
    )
    merge = json.loads((folder / "aggregate.json").read_text())["overlap_merge"]
    if mode == "off":
        assert len(rows) == 5 and merge == {"mode": "off", "chunks_overlap": True, "applied": False,
                                            "detections_before": 5, "detections_after": 5, "merged_groups": 0}  # fmt: skip
        return
    assert rows == [
        ("r1", "OVEN", 10000, 13000, 0.4, 1, "a0"),
        ("r1", "RUGR", 59000, 62500, 0.8, 2, "a0"),  # union span, best confidence, earliest row's chunk
        ("r1", "RUGR", 90000, 93000, 0.7, 1, "a1"),
        ("r2", "RUGR", 59000, 62000, 0.5, 1, "b0"),
    ]
    assert merge == {"mode": "auto", "chunks_overlap": True, "applied": True, "detections_before": 5, "detections_after": 4,
                     "merged_groups": 1}  # fmt: skip
    merged = next(r for r in pq.read_table(folder / "detections.parquet").to_pylist() if r["merged_count"] == 2)
    assert (
        merged["chunk_offset_end_ms"] == 62500 and merged["detection_end_utc"].isoformat() == "2024-03-09T12:01:02.500000+00:00"
    )


def _export(tmp_path: Path, *args: str) -> int:
    manifest = make_campaign(tmp_path)
    return main(["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"),
                 "--output", str(tmp_path / "exp"), *args])  # fmt: skip


def _golden(name: str, produced: Path) -> None:
    check_golden(GOLDEN / name, produced.read_text(), f"made as {produced}")


def test_wildtrax_and_raven_exports_match_the_golden_files(tmp_path, capsys):
    assert _export(tmp_path, "--format", "wildtrax,raven", "--min-confidence", "0.5") == 0
    exp = tmp_path / "exp"
    _golden("wildtrax_tags.csv", exp / "wildtrax_tags.csv")
    _golden("wildtrax_tasks.csv", exp / "wildtrax_tasks.csv")
    _golden("raven_r1.txt", exp / "raven" / "r1.HawkEars.selections.txt")
    tags = _csv_rows(exp / "wildtrax_tags.csv")
    assert [t["species_code"] for t in tags] == ["RUGR", "AMRO", "AMRO", "RUGR", "OVEN"]  # OVEN 0.4 below 0.5; no FROG-WOOD
    assert tags[0]["tag_start_time"] == "0.1" and tags[0]["recording_date_time"] == "2024-03-09 05:00:00"
    assert sorted(p.name for p in (exp / "raven").iterdir()) == [f"{r}.HawkEars.selections.txt" for r in ("r1", "r2", "r3")]
    assert (exp / "raven" / "r3.HawkEars.selections.txt").read_text().count("\n") == 1  # analysed, nothing: header only
    err = capsys.readouterr().err
    assert "FROG-WOOD (1)" in err  # no WildTrax code: left out and said
    assert json.loads((exp / "export.json").read_text())["options"]["min_confidence"] == 0.5


def test_wildtrax_1spt_and_task_duration_rules(tmp_path, capsys):
    assert _export(tmp_path, "--task-method", "1SPT", "--task-duration", "61") == 0
    tags = _csv_rows(tmp_path / "exp" / "wildtrax_tags.csv")
    # one tag per species per task: r1's AMRO at 60 s is its second; its RUGR at 61.5 s starts after the 61-s task
    assert [(t["location"], t["species_code"], t["tag_start_time"]) for t in tags] == [
        ("NWT-01", "RUGR", "0.1"), ("NWT-01", "OVEN", "10.0"), ("NWT-01", "AMRO", "57.0"), ("NWT-01", "OVEN", "5.0"),
    ]  # fmt: skip
    assert {t["task_duration"] for t in tags} == {"61"} and {t["task_method"] for t in tags} == {"1SPT"}
    assert "not the first of its species (1SPT)" in capsys.readouterr().err


def test_lab_tables_per_study_area_and_overall(tmp_path):
    assert _export(tmp_path, "--format", "tables") == 0
    all_rows = _csv_rows(tmp_path / "exp" / "tables" / "all.csv")
    assert list(all_rows[0]) == ["filename", "start_time", "end_time", "class_name", "class_code", "score", "study_area",
                                 "location", "recording_date_time"]  # fmt: skip
    assert all_rows[0] == {"filename": "NWT-01_20240309_050000.wav", "start_time": "0.000", "end_time": "3.000",
                           "class_name": "Ruffed Grouse", "class_code": "RUGR", "score": "0.900", "study_area": "NWT",
                           "location": "NWT-01", "recording_date_time": "2024-03-09 05:00:00"}  # fmt: skip
    assert len(all_rows) == 7 and len(_csv_rows(tmp_path / "exp" / "tables" / "NWT.csv")) == 7
    assert _csv_rows(tmp_path / "exp" / "tables" / "BOR.csv") == []


def test_detection_histories_tell_not_detected_from_not_surveyed(tmp_path):
    assert _export(tmp_path, "--format", "raven", "--focus-species", "RUGR,OVEN") == 0
    hist = tmp_path / "exp" / "histories"
    long = {(r["species"], r["location"], r["date"]): r for r in _csv_rows(hist / "detection_history_long.csv")}
    assert len(long) == 2 * 2 * 3  # species x locations x days of the calendar
    assert (
        long[("RUGR", "NWT-01", "2024-03-09")]["detected"] == "1" and long[("RUGR", "NWT-01", "2024-03-09")]["detections"] == "2"
    )
    assert long[("RUGR", "NWT-01", "2024-03-10")]["detected"] == "NA"  # no chunk at all that day
    assert long[("RUGR", "NWT-01", "2024-03-11")]["detected"] == "0"  # b0 analysed (b1 failed): surveyed, none
    assert long[("OVEN", "NWT-01", "2024-03-11")]["detected"] == "1"
    assert long[("RUGR", "NWT-02", "2024-03-09")]["detected"] == "0"  # analysed, nothing found
    assert long[("RUGR", "NWT-02", "2024-03-11")]["detected"] == "NA"  # its only chunk never analysed
    r = long[("RUGR", "NWT-01", "2024-03-11")]
    assert (r["minutes_analysed"], r["chunks_analysed"], r["chunks_failed"]) == ("1.0", "1", "1")
    assert (hist / "RUGR.csv").read_text() == "location,2024-03-09,2024-03-10,2024-03-11\nNWT-01,1,NA,0\nNWT-02,0,NA,NA\n"
    assert (hist / "effort_minutes.csv").read_text().splitlines()[1] == "NWT-01,2.0,NA,1.0"


def test_missing_metadata_is_one_line_naming_the_fix_and_nothing_is_written(tmp_path, capsys):
    dawn = {**RECORDINGS, "r1": ("dawn.wav", *RECORDINGS["r1"][1:])}  # r1: no location in the name either
    manifest = make_campaign(tmp_path, meta=("study_area",), recordings=dawn)
    (tmp_path / "audio").mkdir()
    code = main(["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"),
                 "--output", str(tmp_path / "exp"), "--format", "wildtrax"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "1 recording(s) have no location (r1)" in err[0] and "`location` column" in err[0] and "Fix:" in err[0]
    assert not (tmp_path / "exp").exists()
    # the others fall back to WildTrax's file-name form, and the raven export needs nothing
    assert main(["export", str(tmp_path / "agg"), "--output", str(tmp_path / "exp"), "--format", "raven"]) == 0


def test_bad_options_exit_2(tmp_path, capsys):
    assert _export(tmp_path / "a", "--format", "shapefile") == 2
    assert _export(tmp_path / "b", "--min-confidence", "1.5") == 2
    assert "outside 0..1" in capsys.readouterr().err and not (tmp_path / "a" / "exp").exists()


def test_bundle_report_has_the_site_panel_with_unsurveyed_days_apart(tmp_path):
    import duckdb
    import numpy as np

    from badc_mpi.results.bundle.build import build_bundle
    from badc_mpi.results.bundle.report import site_grid

    manifest = make_campaign(tmp_path)
    result = build_bundle([str(manifest)], telemetry_dir=str(tmp_path / "tel"), dest=str(tmp_path / "b"))
    page = Path(result.report).read_text()
    assert page.count("data:image/png;base64,") == 5 and 'id="chart-sites"' in page
    con = duckdb.connect(str(tmp_path / "b" / "bundle.duckdb"), read_only=True)
    try:
        locations, days, grid = site_grid(con, ["RUGR", "OVEN"])
    finally:
        con.close()
    assert locations == ["NWT-01", "NWT-02"] and days == ["2024-03-09", "2024-03-10", "2024-03-11"]
    assert np.array_equal(grid, np.array([[3, np.nan, 1], [0, np.nan, np.nan]]), equal_nan=True)


def test_record_datalad_outside_a_dataset_saves_nothing(tmp_path, capsys):
    """`make export` passes --record-datalad; outside a DataLad dataset it is a no-op (inside: `make demo`)."""
    assert _export(tmp_path, "--format", "raven", "--record-datalad") == 0
    out = capsys.readouterr().out
    assert "exports  " in out and "recording the exports" not in out


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_rows_built_as_text_are_the_bytes_the_csv_module_writes(delimiter):
    import io

    from badc_mpi.results.export.staging import field_text

    values = [
        "NWT-01",
        "Robin, American",
        'the "red" one',
        "a\tb",
        "two\nlines",
        "",
        None,
        0,
        12.5,
        3.0,
        48000,
        "Grive à dos olive",
    ]
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerow(values)
    assert delimiter.join(field_text(v, delimiter) for v in values) + "\n" == buf.getvalue()
    assert field_text("a\rb", delimiter) == '"a\rb"'  # quoted as Python 3.12's csv does (3.11 with "\n" lines did not)


def test_label_names_with_commas_and_quotes_read_back_whole(tmp_path):
    chunks = {"a0": ("r1", 0, 60000, "success", [("AMRO", 'Robin, "American"', 0.7, 5.0, 8.0)])}
    manifest = make_campaign(tmp_path, chunks)
    assert main(["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"),
                 "--output", str(tmp_path / "exp"), "--format", "tables,raven,wildtrax"]) == 0  # fmt: skip
    (row,) = _csv_rows(tmp_path / "exp" / "tables" / "all.csv")
    assert (row["class_name"], row["class_code"], row["start_time"], row["score"]) == (
        'Robin, "American"',
        "AMRO",
        "5.000",
        "0.700",
    )
    (sel,) = _csv_rows(tmp_path / "exp" / "raven" / "r1.HawkEars.selections.txt", "\t")
    assert (sel["Species"], sel["Begin Time (s)"], sel["End Time (s)"], sel["Score"]) == ("AMRO", "5.000", "8.000", "0.700")
    (tag,) = _csv_rows(tmp_path / "exp" / "wildtrax_tags.csv")
    assert (tag["tag_start_time"], tag["tag_duration"], tag["species_individual_comments"]) == (
        "5.0",
        "3.0",
        "HawkEars 2.3.0 Confidence: 0.70",
    )


def test_detections_tied_on_time_and_species_come_in_one_order_highest_score_first(tmp_path):
    # a sort that spills to disk is not stable: ties are broken by score, then chunk, so an export is
    # the same bytes whatever DuckDB's memory cap (and 1SPT keeps the best-scored of simultaneous tags)
    dets = [
        ("AMRO", "American Robin", 0.6, 5.0, 8.0),
        ("AMRO", "American Robin", 0.9, 5.0, 8.0),
        ("AMRO", "American Robin", 0.7, 5.0, 8.0),
    ]
    manifest = make_campaign(tmp_path, {"a0": ("r1", 0, 60000, "success", dets)})
    assert main(["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"),
                 "--output", str(tmp_path / "exp"), "--format", "tables,raven,wildtrax", "--task-method", "1SPT"]) == 0  # fmt: skip
    assert [r["score"] for r in _csv_rows(tmp_path / "exp" / "tables" / "all.csv")] == ["0.900", "0.700", "0.600"]
    assert [r["Score"] for r in _csv_rows(tmp_path / "exp" / "raven" / "r1.HawkEars.selections.txt", "\t")] == [
        "0.900",
        "0.700",
        "0.600",
    ]
    (tag,) = _csv_rows(tmp_path / "exp" / "wildtrax_tags.csv")
    assert tag["species_individual_comments"] == "HawkEars 2.3.0 Confidence: 0.90"
