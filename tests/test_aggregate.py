"""Aggregation: which result counts (pure), the three chunk states from a real run, files that
cannot be read (listed, never dropped silently), and exactly-once across a kill -9 and --resume."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_resume import SLOWER, kill_run, run_args, run_of

from badc_mpi.errors import BadcError
from badc_mpi.results.aggregate.dataset import aggregate
from badc_mpi.results.aggregate.verdicts import decide

from helpers import FAKE_CMD, make_chunk, make_dataset, run_badc, store_records, telemetry_files


def rec(
    status: str, sha: str | None = None, attempts: int = 1, fclass: str | None = None, run: str = "r", outputs: bool = True
) -> tuple:
    return (status, sha, status == "success" and outputs, attempts, fclass, "why" if fclass else "", "t", run)


def test_latest_success_wins_failures_and_never_run_are_distinct():
    chunks = [make_chunk(recording_id="r", chunk_id=c, sha256=("f" * 64 if c == "h" else None)) for c in "abcdehy"]
    ledgers = [
        ("run1", {"r/a": rec("success"), "r/b": rec("success"), "r/c": rec("failed", fclass="exit"), "r/h": rec("success", "0" * 64), "r/x": rec("success")}),
        ("run2", {"r/a": rec("success"), "r/b": rec("failed", fclass="crash"), "r/c": rec("failed", attempts=3, fclass="timeout")}),
        ("run3", {"r/d": rec("failed", fclass="input"), "r/y": rec("success", outputs=False)}),
    ]  # fmt: skip
    verdicts, duplicates = decide(chunks + chunks[:1], ledgers)
    got = {v.chunk_id: (v.status, v.run_id, v.failure_class, v.attempts, v.runs_tried, v.in_manifest) for v in verdicts}
    assert got == {
        "a": ("analysed", "run2", None, 1, 2, True),  # the latest success
        "b": ("analysed", "run1", None, 1, 2, True),  # a later failure does not undo a success
        "c": ("failed", "run2", "timeout", 3, 2, True),  # the latest failure
        "d": ("failed", "run3", "input", 1, 1, True),
        "e": ("not_analysed", None, None, None, 0, True),  # never run
        "h": ("not_analysed", None, None, None, 0, True),  # its sha256 changed since
        "x": ("analysed", "run1", None, 1, 1, False),  # in a ledger, no longer in the manifest
        "y": ("not_analysed", None, None, None, 1, True),  # a --dry-run "success": nothing analysed
    }
    assert "sha256 changed" in next(v.note for v in verdicts if v.chunk_id == "h")
    assert duplicates == ["r/a"]


def _counted(folder: Path) -> tuple[list[dict], dict[str, dict]]:
    det = pq.read_table(folder / "detections.parquet").to_pylist()
    chunks = {f"{r['recording_id']}/{r['chunk_id']}": r for r in pq.read_table(folder / "chunks.parquet").to_pylist()}
    return det, chunks


def _on_disk(out: Path, keys: set[str]) -> Counter:
    """(key, label, confidence, start_ms) of every detection in the final files of ``keys``."""
    found: Counter = Counter()
    for key in keys:
        rec_id, cid = key.split("/")
        for line in (out / rec_id / f"{cid}.detections.jsonl").read_text().splitlines():
            d = json.loads(line)
            found[(key, d["label"], round(d["confidence"], 4), d["start_ms"])] += 1
    return found


def _in_store(out: Path, winners: dict[str, str]) -> Counter:
    """(key, label, confidence, start_ms) of every detection the store holds for ``winners`` (key -> run id)."""
    found: Counter = Counter()
    stored = store_records(out)
    for key, run in winners.items():
        (record,) = stored[run][key]
        base = record["chunk_start_ms"] or 0
        for d in record["detections"]:
            found[(key, d["label"], round(d["confidence"], 4), base + round(d["start_s"] * 1000))] += 1
    return found


def test_three_chunk_states_and_unreadable_files_are_listed(tmp_path, monkeypatch):
    manifest = make_dataset(tmp_path, 2, 3, seconds=0.2)
    args = run_args(manifest, tmp_path, "--max-retries", "0", "--per-chunk-outputs")
    args[args.index("--runner-cmd") + 1] = FAKE_CMD + " --fail-on rec001_chunk_200_400"
    done = run_badc(args, np=2)
    assert done.returncode == 1, done.stderr[-2000:]  # one chunk failed
    with open(manifest, "a") as fh:  # a chunk added after the run: never run
        fh.write("rec002,rec002_chunk_0_200,../audio/none.wav,0,200,0,,,site2\n")
    monkeypatch.chdir(tmp_path)
    result = aggregate([str(manifest)], str(tmp_path / "agg"), telemetry_dir=str(tmp_path / "tel"))
    det, chunks = _counted(tmp_path / "agg")
    states = Counter(c["status"] for c in chunks.values())
    assert states == {"analysed": 5, "failed": 1, "not_analysed": 1}
    failed = chunks["rec001/rec001_chunk_200_400"]
    assert (failed["failure_class"], failed["attempts"], failed["detections"]) == ("exit", 1, None)
    never = chunks["rec002/rec002_chunk_0_200"]
    assert (never["run_id"], never["attempts"], never["detections"]) == (None, None, None)
    analysed = {k for k, c in chunks.items() if c["status"] == "analysed"}
    assert sum(c["detections"] for c in chunks.values() if c["status"] == "analysed") == len(det)
    assert Counter(
        (f"{d['recording_id']}/{d['chunk_id']}", d["label"], round(d["confidence"], 4), d["start_ms"]) for d in det
    ) == _on_disk(tmp_path / "out", analysed)
    assert {d["site"] for d in det} <= {"site0", "site1"} and result.problems == []
    # damage: a corrupt detections file, a stray one no ledger knows, a torn ledger line
    bad = tmp_path / "out" / "rec000" / "rec000_chunk_0_200.detections.jsonl"
    bad.write_text('{"recording_id": "rec000", "chunk_id": broken\n')
    stray = tmp_path / "out" / "rec001" / "rec001_chunk_9_10.detections.jsonl"
    stray.write_text("")
    (ledger,) = (tmp_path / "tel").glob("*.ledger.jsonl")
    with open(ledger, "a") as fh:
        fh.write('{"r":"rec000","c":"rec0')
    again = aggregate([str(manifest)], str(tmp_path / "agg"), telemetry_dir=str(tmp_path / "tel"), reuse=True)
    assert not again.reused
    problems = {(p.kind, p.path) for p in again.problems}
    assert (
        ("unreadable", str(bad)) in problems and ("orphan_output", str(stray)) in problems and ("torn", str(ledger)) in problems
    )
    det2, chunks2 = _counted(tmp_path / "agg")
    assert (
        chunks2["rec000/rec000_chunk_0_200"]["status"] == "not_analysed"
        and "unreadable" in chunks2["rec000/rec000_chunk_0_200"]["note"]
    )
    assert len(det2) == len(det) - chunks["rec000/rec000_chunk_0_200"]["detections"]
    meta = json.loads((tmp_path / "agg" / "aggregate.json").read_text())
    assert meta["counts"]["problems"] == len(meta["problems"]) == 3 and meta["counts"]["orphan_outputs"] == 1
    from badc_mpi.results.aggregate.dataset import iter_problem_lines

    said = list(iter_problem_lines(again.problems))  # what bundle/aggregate print: plain words, no "orphan"
    assert f"  output no finished chunk claims: {stray}: detections file" in "\n".join(said) and "orphan" not in "\n".join(said)


def test_no_run_found_is_a_one_line_error_with_a_fix(tmp_path):
    manifest = make_dataset(tmp_path, 1, 1, seconds=0.2)
    with pytest.raises(BadcError) as err:
        aggregate([str(manifest)], str(tmp_path / "agg"), telemetry_dir=str(tmp_path / "tel"))
    assert "no run found" in str(err.value) and "Fix:" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.timeout(400)
def test_exactly_once_across_a_killed_and_resumed_run(tmp_path, monkeypatch):
    manifest = make_dataset(tmp_path, 4, 30, seconds=0.2)
    keys = {f"rec{r:03d}/rec{r:03d}_chunk_{c * 200}_{c * 200 + 200}" for r in range(4) for c in range(30)}
    rng = random.Random(20261201)
    killed = [kill_run(manifest, tmp_path, target, rng.uniform(0.5, 1.5)) for target in ("rank0", "worker")]
    for tfile in killed:  # each kill hit chunks in flight: started, never recorded as finished
        events, entries = run_of(tfile)
        started = {f"{e['recording_id']}/{e['chunk_id']}" for e in events if e["event"] == "start"}
        assert started - {f"{e['r']}/{e['c']}" for e in entries}
    final_args = run_args(manifest, tmp_path, "--resume")
    final_args[final_args.index("--runner-cmd") + 1] = SLOWER  # the killed runs' settings (resume refuses a mix)
    final = run_badc(final_args, np=3, cwd=tmp_path, timeout_s=150)
    assert final.returncode == 0, final.stderr[-3000:]
    runs = telemetry_files(tmp_path / "tel")
    assert len(runs) == 3
    monkeypatch.chdir(tmp_path)
    result = aggregate([str(tmp_path / "tel")], str(tmp_path / "agg"))
    det, chunks = _counted(tmp_path / "agg")
    assert result.counts["runs"] == 3 and set(chunks) == keys
    assert {c["status"] for c in chunks.values()} == {"analysed"}
    # every chunk's detections exactly once: as many rows as its final file has lines, one run each
    per_chunk = Counter(f"{d['recording_id']}/{d['chunk_id']}" for d in det)
    for key, chunk in chunks.items():
        assert per_chunk.get(key, 0) == chunk["detections"], key
    runs_per_chunk = {}
    for d in det:
        runs_per_chunk.setdefault(f"{d['recording_id']}/{d['chunk_id']}", set()).add(d["run_id"])
    assert all(len(r) == 1 for r in runs_per_chunk.values())
    assert Counter(
        (f"{d['recording_id']}/{d['chunk_id']}", d["label"], round(d["confidence"], 4), d["start_ms"]) for d in det
    ) == _in_store(tmp_path / "out", {k: c["run_id"] for k, c in chunks.items()})
    # the work was spread over the three runs, and each chunk counts the run its ledger names
    assert len({c["run_id"] for c in chunks.values()}) >= 2
    assert all(c["runs_tried"] >= 1 for c in chunks.values())
    assert [p for p in result.problems if p.kind not in ("torn", "note")] == []


def test_jsonl_reader_counts_each_chunk_and_names_every_bad_file(tmp_path):
    from badc_mpi.results.aggregate.sources import DoneChunk, read_jsonl_detections

    out = tmp_path / "out"
    (out / "r").mkdir(parents=True)
    chunks = [DoneChunk("r", f"c{i}", "run", str(out)) for i in range(8)]
    for i, chunk in enumerate(chunks):
        lines = "".join(
            json.dumps({"recording_id": "r", "chunk_id": chunk.chunk_id, "label": "L", "confidence": 0.5, "x": i}) + "\n"
            for _ in range(i)
        )
        Path(chunk.detections_path).write_text(lines)
    Path(chunks[3].detections_path).write_text('{"recording_id": "r", "chunk_id": "c3"}\n{oops\n')  # corrupt
    Path(chunks[5].detections_path).write_text('{"recording_id": "r", "chunk_id": "c5"}')  # cut short
    Path(chunks[6].detections_path).unlink()  # missing
    for batch_bytes in (1, 200, 1 << 20):  # one file per batch, a few, all at once
        batches = list(read_jsonl_detections(chunks, batch_bytes=batch_bytes))
        counts = {c.chunk_id: n for b in batches for c, n in zip(b.chunks, b.counts)}
        assert counts == {"c0": 0, "c1": 1, "c2": 2, "c4": 4, "c7": 7}
        assert sum(b.table.num_rows for b in batches) == 14
        assert [r["chunk_id"] for b in batches for r in b.table.select(["chunk_id"]).to_pylist()] == [
            f"c{i}" for i in (1, 2, 2, 4, 4, 4, 4) + (7,) * 7
        ]
        bad = {c.chunk_id: why for b in batches for c, _, why in b.unreadable}
        assert set(bad) == {"c3", "c5", "c6"} and "cut short" in bad["c5"] and "missing" in bad["c6"] and "JSON" in bad["c3"]


def test_store_reader_counts_done_chunks_once_and_names_every_damage(tmp_path):
    from badc_mpi.results.aggregate.sources import DoneChunk
    from badc_mpi.results.aggregate.store_source import read_store_detections
    from badc_mpi.storage.store import StoreWriter, chunk_line, run_segments, versions_id

    out = tmp_path / "out"
    writer = StoreWriter(str(out), "run1", segment_bytes=600)  # small segments: several files
    vid = versions_id("2.3.0", "main=[a:1]")
    for i in range(8):
        chunk = make_chunk(recording_id="r", chunk_id=f"c{i}", start_ms=1000 * i, extra=(("site", f"s{i}"),))
        labels = [f"L{j}" for j in range(i)]
        line = chunk_line(chunk, "run1", vid, labels, labels, labels, [0.5] * i, [0.25 * j for j in range(i)], [3.0] * i)
        writer.append(line, vid, "2.3.0", "main=[a:1]")
    writer.close()
    segments = run_segments(out, "run1")
    assert len(segments) >= 3 and segments == writer.paths
    with open(segments[-1], "ab") as fh:  # rank 0 killed mid-write
        fh.write(b'{"recording_id":"r","chunk_id":"c9","n":1,"label":["L')
    damaged = segments[1]
    text = Path(damaged).read_text().splitlines(keepends=True)
    victim = next(i for i, t in enumerate(text) if '"chunk_id"' in t)
    victim_key = "r/" + json.loads(text[victim])["chunk_id"]
    text[victim] = "{not json\n"
    Path(damaged).write_text("".join(text))
    done = [DoneChunk("r", f"c{i}", "run1", str(out), "store") for i in range(8) if i != 6] + [
        DoneChunk("r", "c8", "run1", str(out), "store")  # the ledger says done; the store has no record
    ]
    for batch_bytes in (1, 200, 1 << 20):
        batches = list(read_store_detections(done, batch_bytes=batch_bytes))
        counts = {c.chunk_id: n for b in batches for c, n in zip(b.chunks, b.counts)}
        expected = {f"c{i}": i for i in range(8) if i != 6 and f"r/c{i}" != victim_key}
        assert counts == expected
        rows = [r for b in batches for r in b.table.to_pylist()]
        assert len(rows) == sum(expected.values())
        first = next(r for r in rows if r["chunk_id"] == "c3" and r["label"] == "L1")
        assert (first["start_ms"], first["chunk_start_ms"], first["model_version"], first["site"]) == (
            3250,
            3000,
            "main=[a:1]",
            "s3",
        )
        missing = {c.chunk_id for b in batches for c, _, _ in b.unreadable}
        assert missing == {"c8", victim_key.split("/")[1]}
        problems = [reason for b in batches for _, reason, _ in b.problems]
        assert any("torn last line at byte" in p for p in problems)
        assert any("damaged line at byte" in p for p in problems)
        assert any("1 chunk record(s)" in p and "not counted" in p for p in problems)  # c6: no ledger success
