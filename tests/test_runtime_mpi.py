"""The MPI runtime end to end under faults: real mpiexec, real ranks, the fake HawkEars through
the command runner failing, crashing, hanging and flaking on purpose; every chunk ends exactly once,
the failed chunks rerun as a manifest, and an exception on a rank aborts the job.

Each test starts its own ``mpiexec`` in a subprocess under a timeout, so an abort or hang can
never take the test runner down. What a run accepts: ``test_runtime_inputs.py``; what its
telemetry says: ``test_runtime_telemetry.py``.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from badc_mpi.storage.ledger import read_ledger

from helpers import (
    FAKE_CMD,
    MPIEXEC,
    PYTHON,
    REPO,
    make_dataset,
    read_jsonl,
    read_telemetry,
    run_badc,
    run_own,
    sidecar,
    store_records,
    telemetry_files,
)

FAULTS = {
    "fail": ["rec001_chunk_2000_2500", "rec004_chunk_0_500"],
    "crash": ["rec002_chunk_1000_1500"],
    "hang": ["rec003_chunk_500_1000"],
    "silent": ["rec005_chunk_1500_2000"],
    "flaky": ["rec006_chunk_0_500", "rec007_chunk_3000_3500"],
}
EXPECTED_FAILED = {
    "rec001/rec001_chunk_2000_2500": "exit",
    "rec004/rec004_chunk_0_500": "exit",
    "rec002/rec002_chunk_1000_1500": "crash",
    "rec003/rec003_chunk_500_1000": "timeout",
    "rec005/rec005_chunk_1500_2000": "no_output",
}


def run_fault_scenario(tmp_path: Path, np: int | None, *extra: str) -> tuple[object, Path, Path]:
    manifest = make_dataset(tmp_path, recordings=10, chunks_per_recording=20, seconds=0.5)
    faults = dict(FAULTS, attempt_dir=str(tmp_path / "attempts"))
    out, tel = tmp_path / "out", tmp_path / "tel"
    proc = run_badc(
        [
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
            "--max-retries",
            "2",
            "--backoff-s",
            "0.05",
            "--backoff-max-s",
            "0.2",
            "--timeout-s",
            "2",
            "--seed",
            "7",
            *extra,
        ],
        np=np,
        env={"FAKE_HAWKEARS_FAULTS": json.dumps(faults)},
    )
    return proc, out, tel


@pytest.mark.parametrize("np,layout", [(3, "store"), (1, "per-chunk")])
def test_fake_runner_with_faults_every_chunk_ends_exactly_once(tmp_path, np, layout):
    proc, out, tel = run_fault_scenario(tmp_path, np, *(["--per-chunk-outputs"] if layout == "per-chunk" else []))
    assert proc.returncode == 1, proc.stderr[-3000:]
    (tfile,) = telemetry_files(tel)
    events = read_telemetry(tfile)
    keys = {f"rec{r:03d}/rec{r:03d}_chunk_{c * 500}_{c * 500 + 500}" for r in range(10) for c in range(20)}
    assert len(keys) == 200
    starts: Counter[tuple[str, int]] = Counter()
    finals: dict[str, dict] = {}
    attempts_seen: defaultdict[str, set[int]] = defaultdict(set)
    started_at: dict[tuple[str, int], str] = {}
    for e in events:
        key = f"{e['recording_id']}/{e['chunk_id']}"
        assert e["schema"] == "badc-mpi.telemetry/2" and e["run_id"]
        for field in ("rank", "host", "pid", "worker", "attempt"):
            assert e[field] is not None, (field, e)
        if e["event"] == "start":
            starts[(key, e["attempt"])] += 1
            attempts_seen[key].add(e["attempt"])
            started_at[(key, e["attempt"])] = e["started_at"]
        elif e["event"] in ("success", "failure"):
            assert key not in finals, f"two final events for {key}"
            finals[key] = e
        else:
            assert e["event"] == "retry" and e["backoff_s"] > 0 and e["failure_class"]
    assert set(finals) == keys
    assert all(n == 1 for n in starts.values()), "one start per attempt"
    for key, e in finals.items():
        assert attempts_seen[key] == set(range(1, e["attempt"] + 1))
        assert e["attempt"] <= 3
        assert e["runtime_s"] >= 0 and started_at[(key, e["attempt"])] <= e["finished_at"]
    failed = {k: e["failure_class"] for k, e in finals.items() if e["event"] == "failure"}
    assert failed == EXPECTED_FAILED
    for key in EXPECTED_FAILED:
        assert finals[key]["attempt"] == 3
    assert finals["rec003/rec003_chunk_500_1000"]["reason"].startswith("timed out")
    for flaky in ("rec006/rec006_chunk_0_500", "rec007/rec007_chunk_3000_3500"):
        assert finals[flaky]["event"] == "success" and finals[flaky]["attempt"] == 2
    # outputs: every success has its store record (or scores.csv and detections.jsonl); failures none
    if layout == "store":
        (stored,) = store_records(out).values()
        assert set(stored) == {k for k, e in finals.items() if e["event"] == "success"}
        for key, records in stored.items():
            assert len(records) == 1 and records[0]["n"] == finals[key]["detections"]
            assert records[0]["meta"]["site"] and records[0]["sha256"] is None
        assert sorted(p.name for p in out.iterdir()) == ["detections"]  # no per-chunk files, no folders
    for key, e in finals.items() if layout == "per-chunk" else ():
        rec, chunk = key.split("/")
        det = out / rec / f"{chunk}.detections.jsonl"
        assert det.exists() == (e["event"] == "success"), key
        if e["event"] == "success":
            assert (out / rec / f"{chunk}.scores.csv").exists()
            lines = [json.loads(x) for x in det.read_text().splitlines()]
            assert len(lines) == e["detections"]
            assert all(d["chunk_id"] == chunk and d["site"] for d in lines)
    # summary agrees with telemetry
    summary = json.loads(sidecar(tfile, ".summary.json").read_text())
    assert summary["state"] == "finished"
    assert summary["counts"]["success"] == 195 and summary["counts"]["failed"] == 5
    # summary/2 lists the failed chunks only (a finished run has none unfinished); the ledger has every one
    assert set(summary["chunks"]) == {key for key, e in finals.items() if e["event"] != "success"}
    for key, entry in summary["chunks"].items():
        assert entry["status"] == "failed" and entry["attempts"] == finals[key]["attempt"]
        assert entry["retries"] == finals[key]["attempt"] - 1 and entry["failure_class"] == finals[key]["failure_class"]
    ledger = {f"{r['r']}/{r['c']}": r for r in read_ledger(sidecar(tfile, ".ledger.jsonl")).entries}
    assert set(ledger) == set(finals)
    for key, e in finals.items():
        assert ledger[key]["s"] == ("success" if e["event"] == "success" else "failed")
        assert ledger[key]["a"] == e["attempt"]
    # workers CSV agrees with telemetry
    with open(sidecar(tfile, ".workers.csv"), newline="") as fh:
        rows = {r["worker"]: r for r in csv.DictReader(fh)}
    assert len(rows) == (np or 1)
    by_worker = Counter((e["worker"], e["event"]) for e in events)
    for worker, row in rows.items():
        assert int(row["success"]) == by_worker[(worker, "success")]
        assert int(row["failure"]) == by_worker[(worker, "failure")]
        assert int(row["retries"]) == by_worker[(worker, "retry")]
    assert sum(int(r["success"]) for r in rows.values()) == 195
    # the failed chunks as a manifest, with their last class and reason
    with open(sidecar(tfile, ".failed.csv"), newline="") as fh:
        failed_rows = {f"{r['recording_id']}/{r['chunk_id']}": r for r in csv.DictReader(fh)}
    assert {k: r["badc_failure_class"] for k, r in failed_rows.items()} == EXPECTED_FAILED
    assert all(os.path.isabs(r["source_path"]) and r["site"] for r in failed_rows.values())
    # the end-of-run report names the files and warns about the worst chunks
    assert str(tfile) in proc.stdout and "succeeded" in proc.stdout
    assert "rec003/rec003_chunk_500_1000" in proc.stderr
    # no runner process survives (the hung one was killed with its process group); only this test's
    # own runners count (their command lines name its tmp_path), not those of another session's run
    assert not [
        p for p in Path("/proc").glob("[0-9]*") if _cmdline_has(p, "rec003_chunk_500_1000") and _cmdline_has(p, str(tmp_path))
    ]


def _cmdline_has(proc_dir: Path, needle: str) -> bool:
    try:
        return needle in (proc_dir / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_failed_csv_reruns_as_a_manifest(tmp_path):
    proc, out, tel = run_fault_scenario(tmp_path, 2)
    assert proc.returncode == 1
    (tfile,) = telemetry_files(tel)
    failed_csv = sidecar(tfile, ".failed.csv")
    proc2 = run_badc(
        [
            "run",
            str(failed_csv),
            "--runner",
            "command",
            "--runner-cmd",
            FAKE_CMD,
            "--no-chunk-check",
            "--output-dir",
            str(out),
            "--telemetry-dir",
            str(tel),
            "--max-retries",
            "0",
        ],
        np=2,
    )
    assert proc2.returncode == 0, proc2.stderr[-2000:]  # no faults configured this time
    newest = max(telemetry_files(tel), key=lambda p: p.stat().st_mtime_ns)
    finals = [e for e in read_telemetry(newest) if e["event"] == "success"]
    assert len(finals) == 5
    # the failed CSV's annotations are not chunk metadata: not in telemetry, not in detections
    assert "badc_failure" not in newest.read_text() and "badc_reason" not in newest.read_text()
    (header,) = [e for e in read_jsonl(newest) if e["event"] == "run"]
    stored = store_records(out)[header["run_id"]]
    assert len(stored) == 5
    for e in finals:
        (record,) = stored[f"{e['recording_id']}/{e['chunk_id']}"]
        assert set(record["meta"]) == {"site"} and record["meta"]["site"]


def test_exception_on_a_rank_aborts_the_job_promptly(tmp_path):
    manifest = make_dataset(tmp_path, 2, 3)
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "import badc_mpi.worker.loop as engine\n"
        "if MPI.COMM_WORLD.Get_rank() == 1:\n"
        "    def boom(*a, **k):\n"
        "        raise RuntimeError('injected failure')\n"
        "    engine.worker_main = boom\n"
        "from badc_mpi.__main__ import _main\n"
        "sys.exit(_main())\n"
    )
    t0 = time.monotonic()
    proc = run_own(
        [
            MPIEXEC,
            "-n",
            "3",
            PYTHON,
            str(driver),
            "run",
            str(manifest),
            "--dry-run",
            "--stub-sleep-s",
            "0.2",
            "--output-dir",
            str(tmp_path / "o"),
            "--telemetry-dir",
            str(tmp_path / "t"),
        ],
        cwd=REPO,
        timeout_s=60,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 70, proc.stderr[-2000:]  # a rank crashed: the job aborted with 70 (README)
    assert elapsed < 30
    line = f"badc-mpi: rank 1 on {socket.gethostname()}: unexpected RuntimeError: injected failure; aborting the job"
    assert line in proc.stderr.splitlines(), proc.stderr[-2000:]
