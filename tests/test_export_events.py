"""Events and WildTrax/Raven values (issue 20): the overlap merge merges only one window scored
twice and never chains continuous presence (a 3,700-s recording), tags in every task and minute a
species was heard, incomplete tasks, the low-band box, the Nyquist cap (8 kHz), two-decimal task
durations (62.5 s) and a WildTrax project species list; through the real CLI on synthetic runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from test_export import _csv_rows, make_campaign

from badc_mpi.cli import main
from badc_mpi.results.aggregate.overlap import plan_events
from badc_mpi.results.export.wildtrax import MAX_TASK_MS, band_hz, parse_species_list

S = 1000
LOC = ("NWT-07_20240601_050000.wav", "NWT-07", "NWT", "2024-06-01T11:00:00Z", "2024-06-01T05:00:00-06:00")
CHUNK_S, OVERLAP_S, LENGTH_S = 300, 10, 3700


def _continuous() -> dict:
    """3,700 s in 300-s chunks overlapping by 10 s; OVEN heard in every second (one detection per
    chunk spanning it, as HawkEars labels continuous presence), RUGR once at a boundary (scored twice)."""
    chunks, start, k = {}, 0, 0
    while start < LENGTH_S:
        end = min(start + CHUNK_S, LENGTH_S)
        dets = [("OVEN", "Ovenbird", 0.9, 0.0, float(end - start))]
        if start == 290:  # the 290-300 s window seen by chunks 0 and 1: one drum
            dets.append(("RUGR", "Ruffed Grouse", 0.7, 2.0, 5.0))
        if start == 0:
            dets.append(("RUGR", "Ruffed Grouse", 0.6, 292.0, 295.5))
        chunks[f"c{k:02d}"] = ("r1", start * S, end * S, "success", dets)
        if end == LENGTH_S:
            break
        start, k = end - OVERLAP_S, k + 1
    return chunks


def _export(tmp_path: Path, chunks: dict, recordings: dict, *args: str, columns: dict | None = None) -> Path:
    manifest = make_campaign(tmp_path, chunks, recordings=recordings)
    if columns:  # extra manifest columns per recording (sample_rate, deploy_start, ...)
        rows = list(csv.DictReader(manifest.open()))
        names = list(rows[0]) + list(columns)
        with manifest.open("w", newline="") as fh:
            w = csv.DictWriter(fh, names)
            w.writeheader()
            for r in rows:
                w.writerow({**r, **{k: v.get(r["recording_id"], "") for k, v in columns.items()}})
    code = main(["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"),
                 "--output", str(tmp_path / "exp"), *args])  # fmt: skip
    assert code == 0
    return tmp_path / "exp"


def test_plan_events_merges_one_window_scored_twice_and_never_chains():
    # island of one label: A 0-300 (chunk 0 of 0-300), B 290-590 (chunk 1 of 290-590), C 580-880 (chunk 2)
    first = np.array([True, False, False])
    out = plan_events(first, np.array([0, 1, 2]), np.array([0, 290, 580]), np.array([300, 590, 880]),
                      np.array([0, 290, 580]), np.array([300, 590, 880]), np.array([0.5, 0.9, 0.4]),
                      np.array([1, 1, 1]))  # fmt: skip
    # A and B share the window 290-300: one event; C's chunk shares no time with A's: its own row
    assert out["row"].tolist() == [0, 1] and out["keep"].tolist() == [True, False]
    assert (out["lo"][0], out["hi"][0], out["best"][0], out["n"][0]) == (0, 590, 0.9, 2)
    # two rows of one chunk never merge, even overlapping
    same = plan_events(np.array([True, False]), np.array([3, 3]), np.array([0, 1]), np.array([5, 6]),
                       np.array([0, 0]), np.array([60, 60]), np.array([0.5, 0.6]), np.array([1, 1]))  # fmt: skip
    assert same["row"].tolist() == []


def test_continuous_presence_over_3700_s_keeps_selections_and_tags_in_every_task_and_minute(tmp_path, capsys):
    exp = _export(tmp_path, _continuous(), {"r1": LOC}, "--format", "wildtrax,raven", "--task-method", "1SPM")
    merge = json.loads((tmp_path / "agg" / "aggregate.json").read_text())["overlap_merge"]
    assert merge["applied"] is True
    raven = _csv_rows(exp / "raven" / "r1.HawkEars.selections.txt", "\t")
    oven = [(float(r["Begin Time (s)"]), float(r["End Time (s)"])) for r in raven if r["Species"] == "OVEN"]
    assert len(oven) > 1 and (0.0, 3700.0) not in oven  # never one 0-3,700 s selection
    assert max(e - s for s, e in oven) <= 2 * CHUNK_S - OVERLAP_S  # the documented bound
    assert min(s for s, _ in oven) == 0.0 and max(e for _, e in oven) == 3700.0  # nothing lost
    rugr = [r for r in raven if r["Species"] == "RUGR"]
    assert [(r["Begin Time (s)"], r["End Time (s)"]) for r in rugr] == [("292.000", "295.500")]  # the duplicate merged
    tags = _csv_rows(exp / "wildtrax_tags.csv")
    minutes = {(t["recording_date_time"], int(float(t["tag_start_time"]) // 60)) for t in tags if t["species_code"] == "OVEN"}
    expected = {("2024-06-01 05:00:00", m) for m in range(30)} | {("2024-06-01 05:30:00", m) for m in range(30)}
    expected |= {("2024-06-01 06:00:00", 0), ("2024-06-01 06:00:00", 1)}  # the 100-s last clip
    assert minutes == expected and len([t for t in tags if t["species_code"] == "OVEN"]) == 62  # one per minute
    tasks = _csv_rows(exp / "wildtrax_tasks.csv")
    assert [(t["task_duration"], t["task_is_complete"]) for t in tasks] == [("1799.99", "f"), ("1799.99", "f"), ("100", "f")]
    every = _export(tmp_path / "none", _continuous(), {"r1": LOC}, "--format", "wildtrax")
    per_task = {t["recording_date_time"] for t in _csv_rows(every / "wildtrax_tags.csv") if t["species_code"] == "OVEN"}
    assert per_task == {"2024-06-01 05:00:00", "2024-06-01 05:30:00", "2024-06-01 06:00:00"}  # every task has its tag


EIGHT_K = {
    "a0": ("r1", 0, 62500, "success", [("OVEN", "Ovenbird", 0.9, 1.0, 3.0), ("RUGR", "Ruffed Grouse", 0.8, 10.0, 13.0),
                                       ("SPGR", "Spruce Grouse", 0.7, 20.0, 21.0), ("AMRO", "American Robin", 0.6, 61.0, 62.4)]),
}  # fmt: skip


def test_8_khz_62_5_s_low_band_values_and_the_project_species_list(tmp_path, capsys):
    species = tmp_path / "species.csv"
    species.write_text("species_code,species_common_name\nOVEN,Ovenbird\nRUGR,Ruffed Grouse\nAMRO,American Robin\n")
    exp = _export(tmp_path, EIGHT_K, {"r1": LOC}, "--format", "wildtrax,raven", "--wildtrax-species", str(species),
                  columns={"sample_rate": {"r1": "8000"}})  # fmt: skip
    tags = {t["species_code"]: t for t in _csv_rows(exp / "wildtrax_tags.csv")}
    assert sorted(tags) == ["AMRO", "OVEN", "RUGR"]  # SPGR is not in the project's list
    assert (tags["OVEN"]["min_tag_freq"], tags["OVEN"]["max_tag_freq"], tags["OVEN"]["vocalization"]) == ("200", "4000", "SONG")
    assert (tags["RUGR"]["min_tag_freq"], tags["RUGR"]["max_tag_freq"], tags["RUGR"]["vocalization"]) == (
        "20",
        "120",
        "Non-vocal",
    )
    assert tags["AMRO"]["task_duration"] == "62.5" and tags["AMRO"]["tag_start_time"] == "61.0"  # the last tag kept
    assert tags["AMRO"]["recording_sample_frequency"] == "8000"
    task = _csv_rows(exp / "wildtrax_tasks.csv")[0]
    assert (task["task_duration"], task["task_is_complete"]) == ("62.5", "f")
    raven = {r["Species"]: r for r in _csv_rows(exp / "raven" / "r1.HawkEars.selections.txt", "\t")}
    assert raven["OVEN"]["High Freq (Hz)"] == "4000" and (raven["SPGR"]["Low Freq (Hz)"], raven["SPGR"]["High Freq (Hz)"]) == (
        "20",
        "120",
    )
    doc = json.loads((exp / "export.json").read_text())
    assert doc["left_out"]["not_in_wildtrax_species"] == {"SPGR": 1}
    assert "1 tag(s) of species not in the WildTrax project's species list left out: SPGR (1)" in capsys.readouterr().err


def test_band_and_species_list_rules():
    assert band_hz("OVEN", "8000") == (200, 4000) and band_hz("OVEN", None) == (200, 13000)
    assert band_hz("SPGR", "") == (20, 120) and band_hz("OVEN", "200") == (100, 100)
    assert parse_species_list("OVEN\nrugr\n", "x") == frozenset({"OVEN", "RUGR"})
    assert MAX_TASK_MS == 1_799_990


def test_bad_species_list_and_task_values_exit_2_and_write_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,common\nOVEN,Ovenbird\n")
    manifest = make_campaign(tmp_path, EIGHT_K, recordings={"r1": LOC})
    base = ["export", str(manifest), "--telemetry-dir", str(tmp_path / "tel"), "--dest", str(tmp_path / "agg"), "--output",
            str(tmp_path / "exp")]  # fmt: skip
    assert main([*base, "--wildtrax-species", str(bad)]) == 2
    assert "no species_code column" in capsys.readouterr().err
    assert main([*base, "--task-duration", "1800"]) == 2  # wildrtrax refuses 1800 itself
    assert "1..1799.99" in capsys.readouterr().err
    assert not (tmp_path / "exp" / "wildtrax_tags.csv").exists()
