"""The detection store's writer: segments, versions lines, and the order of writes and fsyncs that
makes "the ledger calls it done" imply "its detections are on disk", observed on the coordinator's
real wiring (a real run; tests/fakes/store_order.py)."""

from __future__ import annotations

import json
import os

import pytest

from badc_mpi.storage.store import STORE_SCHEMA, StoreWriter, chunk_line, run_segments, segment_path, versions_id

from fakes.store_order import order_violations
from helpers import FAKE_CMD, PYTHON, REPO, make_chunk, make_dataset, run_own, store_records

OBSERVER = REPO / "tests" / "fakes" / "store_order.py"


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


def _observed_run(tmp_path, mutate: str | None = None) -> tuple[list[dict], list[str]]:
    """A real one-rank run (rank 0: coordinator and worker) of 2 x 2 chunks with the fake
    HawkEars, its store and ledger writes and fsyncs observed (tests/fakes/store_order.py)."""
    manifest = make_dataset(tmp_path / "ds", 2, 2, seconds=0.5)
    log = tmp_path / "order.jsonl"
    # 0.3 s a chunk: the ledger's periodic fsync (every 0.1 s) certainly falls between two chunks,
    # not only at the close (which syncs the store first whatever the wiring)
    args = ["run", str(manifest), "--runner", "command", "--runner-cmd", f"{FAKE_CMD} --sleep-s 0.3", "--output-dir", str(tmp_path / "out"),
            "--telemetry-dir", str(tmp_path / "tel"), "--scratch-dir", str(tmp_path / "scratch")]  # fmt: skip
    cmd = [PYTHON, str(OBSERVER), str(log), *(["--mutate", mutate] if mutate else []), "--", *args]
    proc = run_own(cmd, timeout_s=120, cwd=manifest.parent.parent, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    successes = [k for ev in events if ev["file"] == "ledger" and ev["op"] == "write" for k in ev["keys"]]
    assert sorted(successes) == sorted(store_records(tmp_path / "out").popitem()[1]) and len(successes) == 4
    return events, order_violations(events)


def test_the_coordinator_s_store_reaches_the_os_and_the_disk_before_its_ledger(tmp_path):
    """Rank 0's real wiring (the Recorder the coordinator builds, its StoreWriter and LedgerWriter):
    every ledger success line reaches the OS after its chunk's store line, and its fsync follows
    the store's."""
    events, violations = _observed_run(tmp_path)
    assert violations == []
    assert any(ev["file"] == "store" and ev["op"] == "fsync" for ev in events)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [("swap", "reached the OS before its store line"), ("no-store-sync", "fsynced before its store line")],
)
def test_the_order_check_catches_a_swapped_or_missing_store_step(tmp_path, mutate, needle):
    """The same run with the order broken on purpose in the real Recorder/LedgerWriter: the check
    above would fail."""
    _, violations = _observed_run(tmp_path, mutate)
    assert violations and all(needle in v for v in violations), violations


def test_the_order_check_reads_a_hand_made_history():
    store = {"op": "write", "file": "store", "keys": ["r/c1"]}
    ledger = {"op": "write", "file": "ledger", "keys": ["r/c1"]}
    sync = [{"op": "fsync", "file": f, "keys": []} for f in ("store", "ledger")]
    assert order_violations([store, ledger, *sync]) == []
    assert order_violations([ledger, store, *sync]) == ["event 0: ledger line of r/c1 reached the OS before its store line"]
    assert order_violations([store, ledger, sync[1], sync[0]]) == ["event 2: ledger line of r/c1 fsynced before its store line"]
