"""The detection store's writer: segments, versions lines, and the order of writes and fsyncs that
makes "the ledger calls it done" imply "its detections are on disk"."""

from __future__ import annotations

import json
import os

import pytest

from badc_mpi.storage import ledger as ledger_mod
from badc_mpi.storage.store import STORE_SCHEMA, StoreWriter, chunk_line, run_segments, segment_path, versions_id

from helpers import make_chunk


def _line(i: int, run: str = "run1", vid: str = "v1") -> str:
    chunk = make_chunk(recording_id="r", chunk_id=f"c{i}", start_ms=0)
    return chunk_line(chunk, run, vid, ["AMRO"] * 3, ["AMRO"] * 3, ["American Robin"] * 3, [0.9] * 3, [1.0, 2.0, 3.0], [4.0] * 3)


def test_segments_rotate_by_size_and_each_names_its_versions_once(tmp_path):
    writer = StoreWriter(str(tmp_path), "run1", segment_bytes=1000)
    vid = versions_id("2.3.0", "main=[x:1]")
    for i in range(12):
        writer.append(_line(i, vid=vid), vid, "2.3.0", "main=[x:1]")
    writer.close()
    paths = run_segments(tmp_path, "run1")
    assert len(paths) > 2 and paths == writer.paths and paths[0] == segment_path(tmp_path, "run1", 1)
    chunks = []
    for seq, path in enumerate(paths, start=1):
        lines = [json.loads(x) for x in open(path, encoding="utf-8")]
        assert lines[0] == {"store": STORE_SCHEMA, "run_id": "run1", "segment": seq}
        assert [x for x in lines if "versions" in x] == [
            {"versions": vid, "hawkears_version": "2.3.0", "model_version": "main=[x:1]"}
        ]  # once per segment, before the first chunk line that names it
        assert "versions" in lines[1]
        chunks += [x["chunk_id"] for x in lines if "chunk_id" in x]
    assert chunks == [f"c{i}" for i in range(12)]
    record = json.loads(_line(0))
    assert record["label_code"] is None and record["label_name"] == ["American Robin"] * 3  # codes repeat labels


def test_run_segments_ignores_other_runs_and_other_files(tmp_path):
    for name in ("run1.000002.jsonl", "run1.000001.jsonl", "run10.000001.jsonl", "run1.x.jsonl", "run1.000001.jsonl.tmp"):
        (tmp_path / "detections").mkdir(exist_ok=True)
        (tmp_path / "detections" / name).write_text("")
    assert [os.path.basename(p) for p in run_segments(tmp_path, "run1")] == ["run1.000001.jsonl", "run1.000002.jsonl"]
    assert run_segments(tmp_path / "nowhere", "run1") == []


def test_a_bad_run_id_never_becomes_a_path(tmp_path):
    with pytest.raises(ValueError):
        segment_path(tmp_path, "../escape", 1)


def test_the_store_reaches_the_os_and_the_disk_before_the_ledger(tmp_path, monkeypatch):
    """Rank 0's order: store lines are written and fsynced before the ledger's are."""
    store = StoreWriter(str(tmp_path / "out"), "run1")
    ledger = ledger_mod.LedgerWriter(
        tmp_path / "run.ledger.jsonl", ledger_mod.header_record("run1", [], "/out", "t0"), store.sync
    )
    names: dict[int, str] = {}
    order: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        order.append(("fsync", names.get(fd, "?")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.append(_line(1), "v1", None, None)
    names[store._fh.fileno()] = "store"
    names[ledger._fd] = "ledger"
    ledger.append({"r": "r", "c": "c1", "s": "success"})
    ledger_text = (tmp_path / "run.ledger.jsonl").read_text()
    assert '"c1"' not in ledger_text  # the ledger's large buffer holds it until the flush
    store.flush()  # what Recorder.flush does first
    assert '"c1"' in open(store.paths[0], encoding="utf-8").read()
    order.clear()
    ledger.sync()
    assert order == [("fsync", "store"), ("fsync", "ledger")]
    store.close()
    ledger.close()
