"""The chunk-status guard: each status, missing and unreadable files, refusal and warning."""

from __future__ import annotations

import json
import logging
import os

import pytest

from badc_mpi.errors import ChunkStatusError, ExitCode
from badc_mpi.inputs.chunk_status import (
    STATUS_FILE,
    GuardReport,
    RecordingStatus,
    check_chunk_status,
    enforce_chunk_status,
    parse_status,
)
from badc_mpi.inputs.manifest import load_manifest


def manifest_for(folder, recordings, name="m.csv"):
    rows = "".join(f"{rec},{rec}_chunk_{i},x.wav\n" for rec in recordings for i in range(2))
    path = folder / name
    path.write_text("recording_id,chunk_id,source_path\n" + rows)
    return load_manifest(path, check_sources=False)


def write_status(chunks, recording, content):
    folder = chunks / recording
    folder.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / STATUS_FILE).write_text(text)


@pytest.fixture
def chunks(tmp_path):
    folder = tmp_path / "chunks"
    write_status(folder, "done", {"recording_id": "done", "status": "completed", "manifest_rows": 2})
    write_status(folder, "busy", {"status": "in_progress", "updated_at": "2025-06-01T10:00:00Z"})
    write_status(folder, "broke", {"status": "failed", "error": "ffmpeg: invalid data\nfound"})
    write_status(folder, "garbled", "{not json")
    write_status(folder, "nokey", {"state": "completed"})
    write_status(folder, "odd", {"status": "done"})
    write_status(folder, "list", "[1, 2]")
    return folder


def test_every_status(tmp_path, chunks):
    names = ["done", "busy", "broke", "absent", "garbled", "nokey", "odd", "list"]
    report = check_chunk_status(manifest_for(tmp_path, names), str(chunks))
    assert report.chunks_dir == str(chunks)
    got = {s.recording_id: (s.status, s.detail) for s in report.statuses}
    assert [s.recording_id for s in report.statuses] == names  # manifest order, once each
    assert got["done"] == ("completed", "")
    assert got["busy"] == ("in_progress", "last update 2025-06-01T10:00:00Z")
    assert got["broke"] == ("failed", "ffmpeg: invalid data found")
    assert got["absent"][0] == "missing" and STATUS_FILE in got["absent"][1]
    assert got["garbled"][0] == "unreadable" and "not valid JSON" in got["garbled"][1]
    assert got["nokey"] == ("invalid", 'no "status" key')
    assert got["odd"][0] == "invalid" and "unknown status 'done'" in got["odd"][1]
    assert got["list"][0] == "invalid" and "JSON object" in got["list"][1]
    assert report.statuses[0].path == str(chunks / "done" / STATUS_FILE)
    assert not report.ok and [s.recording_id for s in report.offending] == names[1:]
    assert report.counts() == {
        "completed": 1,
        "in_progress": 1,
        "failed": 1,
        "missing": 1,
        "unreadable": 1,
        "invalid": 3,
    }


def test_format_is_a_table(tmp_path, chunks):
    report = check_chunk_status(manifest_for(tmp_path, ["done", "busy", "absent"]), str(chunks))
    lines = report.format().splitlines()
    assert lines[0] == (f"chunk status in {chunks}: 3 recording(s): 1 completed, 1 in_progress, 1 missing")
    assert lines[1].split() == ["busy", "in_progress", "last", "update", "2025-06-01T10:00:00Z"]
    assert lines[2].startswith("  absent  missing ")
    assert len(lines) == 3
    assert report.format(limit=1).splitlines()[-1] == "  ... and 1 more"


def test_unreadable_file(tmp_path):
    chunks = tmp_path / "chunks"
    (chunks / "rec" / STATUS_FILE).mkdir(parents=True)  # a folder where the file should be
    (status,) = check_chunk_status(manifest_for(tmp_path, ["rec"]), str(chunks)).statuses
    assert status.status == "unreadable" and status.detail
    assert parse_status("r", "p", b"\xff\xfe").status == "unreadable"


def test_all_completed_passes(tmp_path, caplog):
    chunks = tmp_path / "chunks"
    for rec in ("a", "b"):
        write_status(chunks, rec, {"status": "completed"})
    report = check_chunk_status(
        [manifest_for(tmp_path, ["a"], "1.csv"), manifest_for(tmp_path, ["b", "a"], "2.csv")], str(chunks)
    )
    assert report.ok and [s.recording_id for s in report.statuses] == ["a", "b"]
    with caplog.at_level(logging.DEBUG, logger="badc_mpi"):
        enforce_chunk_status(report, allow_partial=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_refusal_lists_recordings_and_the_fix(tmp_path, chunks):
    report = check_chunk_status(manifest_for(tmp_path, ["done", "busy", "broke", "absent"]), str(chunks))
    with pytest.raises(ChunkStatusError) as info:
        enforce_chunk_status(report, allow_partial=False)
    text = str(info.value)
    assert info.value.exit_code == ExitCode.CHUNKS_NOT_READY == 3
    assert text.startswith(
        "3 of 4 recordings are not fully chunked (1 in_progress, 1 failed, "
        f"1 missing) in {chunks}: busy (in_progress: last update"
    )
    assert "broke (failed: ffmpeg: invalid data found)" in text and "absent (missing" in text
    assert "done" not in text.split(":", 1)[1].replace("chunked", "")
    assert "Fix: finish chunking" in text and "--allow-partial-chunks" in text
    assert "\n" not in text


def test_refusal_caps_the_list_at_20(tmp_path):
    recordings = [f"rec{i:02d}" for i in range(25)]
    report = check_chunk_status(manifest_for(tmp_path, recordings), str(tmp_path / "nowhere"))
    with pytest.raises(ChunkStatusError) as info:
        enforce_chunk_status(report, allow_partial=False)
    text = str(info.value)
    assert "rec19 (missing" in text and "rec20 (" not in text and "; and 5 more" in text
    assert "does not exist" in text


def test_allow_partial_warns(tmp_path, chunks, caplog):
    report = check_chunk_status(manifest_for(tmp_path, ["done", "broke"]), str(chunks))
    with caplog.at_level(logging.WARNING, logger="badc_mpi"):
        enforce_chunk_status(report, allow_partial=True)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "1 of 2 recordings are not fully chunked" in record.getMessage()
    assert "broke (failed" in record.getMessage()


def test_default_chunks_dir_is_the_dataset_chunks_folder(tmp_path):
    (tmp_path / "ds" / ".datalad").mkdir(parents=True)
    (tmp_path / "ds" / "manifests").mkdir()
    write_status(tmp_path / "ds" / "artifacts" / "chunks", "r", {"status": "completed"})
    manifest = manifest_for(tmp_path / "ds" / "manifests", ["r"])
    report = check_chunk_status(manifest)
    assert report.chunks_dir == os.path.join(tmp_path, "ds", "artifacts", "chunks") and report.ok


def test_recording_status_describe():
    assert RecordingStatus("r", "completed", "p", "").describe() == "r (completed)"
    assert GuardReport("/c", []).ok and GuardReport("/c", []).format().endswith("none")
