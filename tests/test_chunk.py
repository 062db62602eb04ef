"""`badc-mpi chunk`: a tree of recordings (a DataLad-like dataset) into a manifest of virtual chunks,
chunk-status files the guard accepts, failures listed, bad names refused with nothing written."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from badc_mpi.chunker.bounds import chunk_bounds
from badc_mpi.cli import main
from badc_mpi.inputs.chunk_status import check_chunk_status
from badc_mpi.inputs.manifest import load_manifest
from badc_mpi.inputs.recordings import find_recordings, recording_id_for
from badc_mpi.runners.hawkears.options import HawkearsOptions, chunk_options, resolve_location

RATE = 8000
SITES = (
    "location,latitude,longitude,region,time_zone,study_area\n"
    "NWT-01,61.5,-117.25,CA-NT,America/Yellowknife,Dehcho\n"
    "NWT-02,53.5,-113.5,CA-AB,America/Edmonton,\n"
)


def tone(path: Path, seconds: float, fmt: str = "WAV") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.sin(np.arange(int(seconds * RATE)) * 0.05) * 8000).astype(np.int16)
    sf.write(path, data, RATE, subtype="PCM_16", format=fmt)
    return path


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outside a dataset, chunk-status files go under the current folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    (ds / ".datalad").mkdir(parents=True)
    audio = ds / "audio"
    tone(audio / "NWT-01" / "NWT-01_20240601_050000.wav", 125)
    tone(audio / "NWT-02" / "NWT-02_20240310_023000.flac", 62.5, "FLAC")  # DST gap; tail 2.5 s merged
    tone(audio / "NWT-02" / "NWT-02_20241103_013000.WAV", 30)  # DST fold
    tone(ds / "artifacts" / "chunks" / "old" / "NWT-09_20240101_000000.wav", 5)  # an old chunk file: not a recording
    (tmp_path / "sites.csv").write_text(SITES)
    return ds


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_chunk_bounds_tail_rule() -> None:
    def pairs(*args: int) -> list[tuple[int, int]]:
        starts, ends = chunk_bounds(*args)
        return list(zip(starts.tolist(), ends.tolist(), strict=True))

    assert pairs(125000, 60000) == [(0, 60000), (60000, 120000), (120000, 125000)]
    assert pairs(122999, 60000) == [(0, 60000), (60000, 122999)]  # a 2.999-s tail joins the chunk before
    assert pairs(2999, 60000) == [] and pairs(3000, 60000) == [(0, 3000)]
    assert pairs(62000, 60000, 5000) == [(0, 60000), (55000, 62000)]  # overlap: the last chunk still ends at the end
    assert pairs(10000, 3000, 1000) == [(0, 3000), (2000, 5000), (4000, 7000), (6000, 10000)]  # 2-s tail merged


def test_recording_ids_come_from_the_path() -> None:
    assert recording_id_for("ST-1/20240601_050000.WAV") == "ST-1~20240601_050000"
    assert recording_id_for("ST-2/20240601_050000.flac") != recording_id_for("ST-1/20240601_050000.flac")


def test_chunk_writes_manifest_status_and_place_time(dataset: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    rc = main(
        ["chunk", str(dataset / "audio"), "--layout", "wildtrax", "--sites", str(tmp_path / "sites.csv"), "--clock", "civil"]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    manifest = dataset / "manifests" / "audio.csv"
    rows = read_rows(manifest)
    by_rec: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_rec.setdefault(row["recording_id"], []).append(row)
    assert sorted(by_rec) == ["NWT-01~NWT-01_20240601_050000", "NWT-02~NWT-02_20240310_023000", "NWT-02~NWT-02_20241103_013000"]
    first = by_rec["NWT-01~NWT-01_20240601_050000"]
    assert [(r["start_ms"], r["end_ms"]) for r in first] == [("0", "60000"), ("60000", "120000"), ("120000", "125000")]
    assert first[0]["chunk_id"] == "NWT-01~NWT-01_20240601_050000_chunk_0_60000"
    assert first[0]["source_path"] == "../audio/NWT-01/NWT-01_20240601_050000.wav" and first[0]["chunk_kind"] == "slice"
    assert (first[0]["recording_start_utc"], first[0]["recording_start_local"]) == (
        "2024-06-01T11:00:00Z",
        "2024-06-01T05:00:00-06:00",
    )
    assert (first[0]["date"], first[0]["region"], first[0]["lat"], first[0]["lon"], first[0]["study_area"]) == (
        "2024-06-01",
        "CA-NT",
        "61.5",
        "-117.25",
        "Dehcho",
    )
    gap = by_rec["NWT-02~NWT-02_20240310_023000"]
    assert [(r["start_ms"], r["end_ms"]) for r in gap] == [("0", "62500")]  # tail merged
    assert gap[0]["recording_start_utc"] == "2024-03-10T09:30:00Z" and gap[0]["study_area"] == ""
    assert "1 recording(s) start at a local time that is nonexistent" in out
    assert "1 recording(s) start at a local time that is ambiguous (DST change): read as the first occurrence" in out
    # the manifest loads, its chunks pass the guard, and the runner reads place and date per chunk
    loaded = load_manifest(str(manifest))
    chunks = list(loaded.chunks)
    assert len(chunks) == 5 and chunks[0].input_path == str(dataset / "audio" / "NWT-01" / "NWT-01_20240601_050000.wav")
    assert check_chunk_status(loaded).ok
    opts, bad = chunk_options(chunks[0])
    assert bad is None
    assert resolve_location(HawkearsOptions(), opts) == ("CA-NT", None, None, "2024-06-01")
    status = json.loads((dataset / "artifacts" / "chunks" / chunks[0].recording_id / ".chunk_status.json").read_text())
    assert (status["status"], status["manifest_rows"], status["duration_s"], status["sample_rate"]) == (
        "completed",
        3,
        125.0,
        RATE,
    )
    # a second run refuses to replace the manifest unless told
    assert main(["chunk", str(dataset / "audio"), "--layout", "wildtrax"]) == 2
    assert "--force" in capsys.readouterr().err


def test_failed_recordings_are_written_failed_and_listed(dataset: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    audio = dataset / "audio" / "NWT-01"
    (audio / "NWT-01_20240602_050000.wav").write_bytes(b"")
    good = tone(tmp_path / "t.wav", 10).read_bytes()
    (audio / "NWT-01_20240603_050000.wav").write_bytes(good[: len(good) // 2])  # truncated
    flac = tone(tmp_path / "t.flac", 10, "FLAC").read_bytes()
    (audio / "NWT-01_20240604_050000.flac").write_bytes(flac[: len(flac) // 2])
    tone(audio / "NWT-01_20240605_050000.wav", 2)  # too short for HawkEars
    os.symlink("../../.git/annex/objects/Xx/MD5E-s9--0.wav/MD5E-s9--0.wav", audio / "NWT-01_20240606_050000.wav")
    manifest = tmp_path / "m.csv"
    rc = main(
        ["chunk", str(dataset / "audio"), "--layout", "wildtrax", "--out", str(manifest), "--time-zone", "America/Edmonton"]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "8 recording(s): 3 chunked, 5 failed" in out
    for needle in ("empty file", "truncated: its header declares", "truncated or damaged", "too short: 2000 ms", "datalad get"):
        assert needle in out
    ids = {row["recording_id"] for row in read_rows(manifest)}
    assert len(ids) == 3
    chunks_dir = tmp_path / "artifacts" / "chunks"  # outside the dataset: as `badc-mpi run` would look from here
    statuses = {p.parent.name: json.loads(p.read_text()) for p in chunks_dir.glob("*/.chunk_status.json")}
    failed = {rid: s["error"] for rid, s in statuses.items() if s["status"] == "failed"}
    assert len(statuses) == 8 and len(failed) == 5
    assert failed["NWT-01~NWT-01_20240602_050000"] == "empty file (0 bytes)"


def test_unmatched_names_exit_2_and_write_nothing(dataset: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    tone(dataset / "audio" / "NWT-01" / "notes_recorder.wav", 5)
    tone(dataset / "audio" / "NWT-03" / "NWT-03_20240601_050000.wav", 5)  # not in the site table
    args = ["chunk", str(dataset / "audio"), "--layout", "wildtrax", "--sites", str(tmp_path / "sites.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "NWT-01/notes_recorder.wav: 'notes_recorder' is not LOCATION_YYYYMMDD_HHMMSS. Fix: rename" in err
    assert "location 'NWT-03' is not in the site table" in err and "Fix: add a row" in err
    assert "2 of 5 recordings give no usable place" in err
    assert (
        not (dataset / "manifests").exists() and not (dataset / "artifacts" / "chunks" / "NWT-01~NWT-01_20240601_050000").exists()
    )
    assert main([*args, "--skip-unmatched"]) == 0
    out = capsys.readouterr().out
    assert "left out (--skip-unmatched): 2" in out and "notes_recorder.wav" in out
    assert len({row["recording_id"] for row in read_rows(dataset / "manifests" / "audio.csv")}) == 3


def test_same_name_in_two_stations_never_collides_and_audiomoth_is_utc(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    root = tmp_path / "moths"
    tone(root / "AM-1" / "20240601_040000.WAV", 4)
    tone(root / "AM-2" / "20240601_040000.WAV", 4)
    (tmp_path / "s.csv").write_text("location,time_zone\nAM-1,America/Edmonton\nAM-2,America/Edmonton\n")
    out = tmp_path / "m.csv"
    assert main(["chunk", str(root), "--layout", "audiomoth", "--sites", str(tmp_path / "s.csv"), "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [r["recording_id"] for r in rows] == ["AM-1~20240601_040000", "AM-2~20240601_040000"]
    assert {(r["recording_start_local"], r["date"]) for r in rows} == {("2024-05-31T22:00:00-06:00", "2024-05-31")}


def test_bad_site_table_and_options_write_nothing(dataset: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "bad.csv").write_text("location,time_zone\nNWT-01,Mountain\n")
    assert main(["chunk", str(dataset / "audio"), "--layout", "wildtrax", "--sites", str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv, line 2, column 'time_zone'" in capsys.readouterr().err
    assert main(["chunk", str(dataset / "audio"), "--layout", "wildtrax", "--overlap-s", "60"]) == 2
    assert main(["chunk", str(dataset / "audio"), "--layout", "(?P<location>x"]) == 2
    assert main(["chunk", str(tmp_path / "nowhere"), "--layout", "wildtrax"]) == 2
    assert not (dataset / "manifests").exists()


def test_find_recordings_case_insensitive_skips_hidden_and_dataset_outputs(dataset: Path) -> None:
    tone(dataset / ".git" / "x" / "NWT-01_20240601_050000.wav", 1)
    (dataset / "audio" / "readme.txt").write_text("x")
    found = find_recordings(str(dataset), dataset_root=True)
    assert [f.rel for f in found] == [
        "audio/NWT-01/NWT-01_20240601_050000.wav",
        "audio/NWT-02/NWT-02_20240310_023000.flac",
        "audio/NWT-02/NWT-02_20241103_013000.WAV",
    ]
