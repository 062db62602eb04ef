"""A chunk counts as done only when its store record is there and whole (issue: results you can
trust). Real runs under ``mpiexec`` with the command runner; a full disk is a real small tmpfs.

- A record torn or lost after the ledger called its chunk done (a node crash whose kernel wrote
  the ledger's page first; a disk that filled mid-write): resume runs the chunk again, the bundle
  does not count it and names it.
- Rank 0's disk fills during a run: an orderly stop (exit 75, summary ``stopped``, the resume
  command, the lock released), every success the ledger names verifiable, and the resume, once
  there is room, finishes every chunk with every detection.
"""

from __future__ import annotations

import json
import os
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from badc_mpi.cli import main
from badc_mpi.storage.ledger import read_ledger
from badc_mpi.storage.store_check import StoreCheck

from helpers import FAKE_CMD, make_dataset, read_jsonl, run_badc, store_records, telemetry_files


def _args(manifest: Path, out: Path, tel: Path, scratch: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(manifest),
        "--runner",
        "command",
        "--runner-cmd",
        FAKE_CMD,
        "--output-dir",
        str(out),
        "--telemetry-dir",
        str(tel),
        "--scratch-dir",
        str(scratch),
        "--backoff-s",
        "0.05",
        "--backoff-max-s",
        "0.1",
        *extra,
    ]


def _successes(tel: Path) -> dict[str, tuple]:
    """Every ledger success of every run: key -> (run, segment, offset, length, crc)."""
    out: dict[str, tuple] = {}
    for ledger in sorted(tel.glob("*.ledger.jsonl")):
        for line in ledger.read_text().splitlines()[1:]:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if rec["s"] == "success":
                out[f"{rec['r']}/{rec['c']}"] = (rec["run"], rec.get("g"), rec.get("x"), rec.get("l"), rec.get("k"))
    return out


def _whole(out: Path, run: str, seq: int, offset: int, length: int, crc: int) -> bool:
    """The record is in its segment, whole, ending in a newline, with its CRC (checked fully here)."""
    path = out / "detections" / f"{run}.{seq:06d}.jsonl"
    data = path.read_bytes() if path.exists() else b""
    line = data[offset : offset + length]
    return len(line) == length and data[offset + length : offset + length + 1] == b"\n" and zlib.crc32(line) == crc


def _bundle(manifest: Path, tel: Path, dest: Path) -> dict:
    assert main(["bundle", str(manifest), "--telemetry-dir", str(tel), "--dest", str(dest)]) == 0
    return json.loads((dest / "aggregate.json").read_text())


def _chunk_states(dest: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    table = pq.read_table(dest / "chunks.parquet", columns=["recording_id", "chunk_id", "status"]).to_pylist()
    return {f"{r['recording_id']}/{r['chunk_id']}": r["status"] for r in table}


@pytest.mark.slow
def test_a_record_lost_after_its_ledger_line_runs_again_and_the_bundle_names_it(tmp_path):
    manifest = make_dataset(tmp_path, 2, 5, seconds=0.2)
    out, tel, scratch = tmp_path / "out", tmp_path / "tel", tmp_path / "scratch"
    proc = run_badc(_args(manifest, out, tel, scratch), np=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = _successes(tel)
    assert len(done) == 10 and all(ref[1] is not None for ref in done.values())  # every success names its record
    assert all(_whole(out, *ref) for ref in done.values())
    # a node crash: the ledger's page reached the disk, the store's last one did not (the last
    # record torn), and a record in the middle reads back as other bytes (its CRC no longer matches)
    by_offset = sorted(done.items(), key=lambda kv: kv[1][2])
    last_key, last = by_offset[-1]
    segment = out / "detections" / f"{last[0]}.{last[1]:06d}.jsonl"
    data = bytearray(segment.read_bytes())
    scored = [(k, r) for k, r in by_offset[:-1] if b'"confidence":[0.' in data[r[2] : r[2] + r[3]]]
    mid_key, mid = scored[len(scored) // 2]  # a record with a score: one digit changed, still JSON
    digit = data.index(b'"confidence":[0.', mid[2]) + len(b'"confidence":[0.')
    data[digit] = ord("1") if data[digit] != ord("1") else ord("2")
    del data[last[2] + last[3] // 2 :]
    segment.write_bytes(bytes(data))

    meta = _bundle(manifest, tel, tmp_path / "b1")  # the bundle: neither counts; both named
    states = _chunk_states(tmp_path / "b1")
    assert states[last_key] == states[mid_key] == "not_analysed"
    assert sum(s == "analysed" for s in states.values()) == 8
    problems = json.dumps(meta["problems"])
    assert mid_key in problems and "not the one its ledger line names" in problems
    assert last_key in problems or "torn last line" in problems

    again = run_badc(_args(manifest, out, tel, scratch, "--resume"), np=2)
    assert again.returncode == 0, again.stderr[-3000:]
    text = again.stdout + again.stderr
    assert "8 skipped" in text and "2 rerun because their detection-store record is torn or missing" in text
    (_, second) = sorted(telemetry_files(tel))
    rerun = {f"{e['recording_id']}/{e['chunk_id']}" for e in read_jsonl(second) if e.get("event") == "success"}
    assert rerun == {last_key, mid_key}
    states = _chunk_states(tmp_path / "b2") if _bundle(manifest, tel, tmp_path / "b2") else {}
    assert set(states.values()) == {"analysed"}


def _require_root_mount() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("a full disk needs a real small file system: run the tests as root (CI does)")
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")


def _mount(path: Path, size_kib: int) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)], check=True)


def _fill(disk: Path, leave_kib: int) -> Path:
    """A filler file leaving about ``leave_kib`` KiB free on ``disk``."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave_kib * 1024))
    return filler


@pytest.mark.slow
@pytest.mark.parametrize(
    "np_,full", [(1, "output"), (2, "output"), (2, "telemetry")], ids=["1rank-store", "2ranks-store", "2ranks-ledger"]
)
def test_rank_0_disk_filling_up_stops_in_order_and_resume_finishes(tmp_path, np_, full):
    _require_root_mount()
    manifest = make_dataset(tmp_path, 4, 10, seconds=0.2)
    disk = tmp_path / "disk"
    _mount(disk, 512)
    try:
        out = disk / "out" if full == "output" else tmp_path / "out"
        tel = disk / "tel" if full == "telemetry" else tmp_path / "tel"
        scratch = tmp_path / "scratch"
        filler = _fill(disk, 12)
        proc = run_badc(_args(manifest, out, tel, scratch), np=np_)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 75, text[-3000:]
        assert "Traceback" not in text and "resume with:" in proc.stdout
        assert "ENOSPC" in text
        assert not (out / ".badc-mpi.lock").exists()
        if full == "output":  # the summary could be written: it says why the run stopped
            (summary,) = tel.glob("*.summary.json")
            doc = json.loads(summary.read_text())
            assert doc["state"] == "stopped" and 0 < doc["counts"]["success"] < 40
        done = _successes(tel)
        assert all(_whole(out, *ref) for ref in done.values()), "the ledger calls done a chunk whose record is torn"
        if full == "output":
            ledger = read_ledger(next(tel.glob("*.ledger.jsonl")))
            refs = np.array([[v[8], v[9], v[10], v[11]] for v in ledger.records.values() if v[0] == "success"], np.int64)
            run = ledger.header["run_id"]
            assert StoreCheck(str(out)).verify(run, *refs.T).all()
        filler.unlink()  # room again
        again = run_badc(_args(manifest, out, tel, scratch, "--resume"), np=np_)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        finished = _successes(tel)
        assert len(finished) == 40 and all(_whole(out, *ref) for ref in finished.values())
        stored = store_records(out)
        counted = {k: v for run in stored.values() for k, v in run.items()}
        assert set(finished) <= set(counted)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
