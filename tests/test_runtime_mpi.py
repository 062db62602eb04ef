"""The MPI runtime end to end: real mpiexec, real ranks, the fake HawkEars through the command runner.

Each test starts its own ``mpiexec`` in a subprocess under a timeout, so an abort or hang can
never take the test runner down.
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

from fakes.nvml import fake_env
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


def test_fake_nvml_telemetry_carries_gpu_facts_and_cpu_ranks_see_no_gpu(tmp_path):
    manifest = make_dataset(tmp_path, 2, 6)
    probe_log = tmp_path / "cvd.log"
    probe = tmp_path / "probe_runner.py"
    probe.write_text(
        "import os, sys, time\n"
        "inp, out = sys.argv[1], sys.argv[2]\n"
        "time.sleep(0.3)  # alive long enough to be sampled\n"
        "with open(os.environ['PROBE_LOG'], 'a') as fh:\n"
        "    fh.write(os.path.basename(inp) + '\\t' + repr(os.environ.get('CUDA_VISIBLE_DEVICES')) + '\\n')\n"
        "open(os.path.join(out, 'scores.csv'), 'w').write('recording,name,start_time,end_time,score\\n')\n"
    )
    tel = tmp_path / "tel"
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--runner",
            "command",
            "--runner-cmd",
            f"{PYTHON} {probe} {{input}} {{output_dir}}",
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tel),
            "--cpu-workers",
            "2",
        ],
        np=3,
        env={**fake_env("one"), "PROBE_LOG": str(probe_log)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tfile,) = telemetry_files(tel)
    finals = [e for e in read_telemetry(tfile) if e["event"] == "success"]
    assert len(finals) == 12
    gpu_events = [e for e in finals if e["worker"].startswith("gpu")]
    cpu_events = [e for e in finals if e["worker"].startswith("cpu")]
    assert gpu_events and cpu_events
    fake = json.loads((REPO / "tests" / "fake_nvml" / "one.json").read_text())["devices"][0]
    for e in gpu_events:
        assert e["rank"] == 0
        assert (e["gpu_index"], e["gpu_uuid"], e["gpu_name"]) == (fake["index"], fake["uuid"], fake["name"])
        assert e["vram_used_mib"] is not None and "vram_device_mib" not in e  # device-wide: not per chunk
        assert e["gpu_util_pct_mean"] is not None and e["runtime_s"] >= 0
    for e in cpu_events:
        assert e["gpu_uuid"] is None and e.get("vram_used_mib") is None
    seen = dict(line.split("\t") for line in probe_log.read_text().splitlines())
    assert set(seen) == {f"{e['chunk_id']}.wav" for e in finals}  # every chunk's environment was probed
    cpu_chunks = {e["chunk_id"] for e in cpu_events}
    for name, cvd in seen.items():
        expected = "''" if name[:-4] in cpu_chunks else repr(fake["uuid"])
        assert cvd == expected, (name, cvd)
    assert "binding table" in proc.stderr


def test_bad_manifest_exits_2_and_writes_nothing(tmp_path):
    manifest = make_dataset(tmp_path, 1, 2)
    manifest.write_text(manifest.read_text() + "rec000,bad/id,../audio/x.wav,0,500,0,,,s\n")
    tel = tmp_path / "tel"
    proc = run_badc(["run", str(manifest), "--dry-run", "--telemetry-dir", str(tel), "--output-dir", str(tmp_path / "out")], np=3)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "chunks.csv" in errors[0] and "chunk_id" in errors[0]
    assert not tel.exists() and not (tmp_path / "out").exists()


def test_chunk_status_guard_refuses_with_exit_3(tmp_path):
    manifest = make_dataset(tmp_path, 2, 2, status="in_progress")
    proc = run_badc(["run", str(manifest), "--dry-run", "--telemetry-dir", str(tmp_path / "tel")], np=2)
    assert proc.returncode == 3, proc.stderr
    assert "in_progress" in proc.stderr and "rec000" in proc.stderr
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--dry-run",
            "--telemetry-dir",
            str(tmp_path / "tel"),
            "--output-dir",
            str(tmp_path / "out"),
            "--allow-partial-chunks",
        ],
        np=2,
    )
    assert proc.returncode == 0, proc.stderr


def test_several_manifests_form_one_queue_and_stub_dry_run(tmp_path):
    m1 = make_dataset(tmp_path / "a", 2, 5)
    m2 = make_dataset(tmp_path / "b", 2, 5)
    lines = m2.read_text().splitlines()
    renamed = [lines[0]] + [
        ",".join([f[0].replace("rec0", "recB"), f[1].replace("rec0", "recB"), *f[2:]])
        for f in (line.split(",") for line in lines[1:])
    ]
    m2.write_text("\n".join(renamed) + "\n")  # distinct recordings in the second manifest
    tel = tmp_path / "tel"
    proc = run_badc(
        [
            "run",
            str(m1),
            str(m2),
            "--dry-run",
            "--stub-sleep-s",
            "0.01",
            "--telemetry-dir",
            str(tel),
            "--output-dir",
            str(tmp_path / "out"),
            "--no-chunk-check",
        ],
        np=3,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tfile,) = telemetry_files(tel)
    assert tfile.name.startswith("chunks+1_")
    finals = [e for e in read_jsonl(tfile) if e["event"] == "success"]
    assert len(finals) == 20 and {e["chunk_id"][:4] for e in finals} == {"rec0", "recB"}
    assert not any((tmp_path / "out").rglob("*.detections.jsonl"))  # the stub writes telemetry only


def test_allow_missing_turns_absent_audio_into_input_failures(tmp_path):
    manifest = make_dataset(tmp_path, 2, 4, seconds=0.3)
    gone = tmp_path / "audio" / "rec001_chunk_600_900.wav"
    gone.unlink()
    refused = run_badc(
        [
            "run",
            str(manifest),
            "--dry-run",
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tmp_path / "tel"),
        ],
        np=2,
    )
    assert refused.returncode == 2 and "rec001_chunk_600_900.wav" in refused.stderr and "--allow-missing" in refused.stderr
    assert not (tmp_path / "tel").exists()
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--runner",
            "command",
            "--runner-cmd",
            FAKE_CMD,
            "--allow-missing",
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tmp_path / "tel"),
        ],
        np=2,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    (tfile,) = telemetry_files(tmp_path / "tel")
    finals = {e["chunk_id"]: e for e in read_jsonl(tfile) if e["event"] in ("success", "failure")}
    assert len(finals) == 8
    miss = finals["rec001_chunk_600_900"]
    assert miss["event"] == "failure" and miss["failure_class"] == "input" and "not found" in miss["reason"]
    with open(sidecar(tfile, ".failed.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["chunk_id"] for r in rows] == ["rec001_chunk_600_900"] and rows[0]["badc_failure_class"] == "input"


def test_telemetry_is_compact_static_facts_once_per_worker(tmp_path):
    """Issue 10: per-chunk lines carry no fact that is the same for every chunk of a worker; those
    are in one ``worker`` event per rank (and the run's in the header); start + final lines stay
    under 400 bytes per chunk on average (stub runner)."""
    manifest = make_dataset(tmp_path, 3, 100, seconds=0.05)
    tel = tmp_path / "tel"
    args = ["run", str(manifest), "--dry-run", "--stub-sleep-s", "0.002", "--no-chunk-check"]
    proc = run_badc([*args, "--telemetry-dir", str(tel), "--output-dir", str(tmp_path / "out")], np=3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tfile,) = telemetry_files(tel)
    raw = tfile.read_bytes().splitlines()
    records = [json.loads(line) for line in raw]
    assert records[0]["event"] == "run" and records[0]["schema"] == "badc-mpi.telemetry/2" and records[0]["run_id"]
    workers = [r for r in records if r["event"] == "worker"]
    assert sorted(w["rank"] for w in workers) == [0, 1, 2], "one worker event per rank"
    for w in workers:
        assert w["host"] and w["pid"] and w["worker"] and w["runner"] == "stub" and w["command"][0] == "<stub>"
    chunk_lines = [(line, r) for line, r in zip(raw, records) if r["event"] in ("start", "retry", "success", "failure")]
    assert sum(r["event"] == "success" for _, r in chunk_lines) == 300
    static = {"schema", "run_id", "host", "pid", "worker", "gpu_uuid", "gpu_name", "gpu_index", "command", "model_version"}
    for line, r in chunk_lines:
        assert not static & set(r), line
        assert {"rank", "recording_id", "chunk_id", "attempt"} <= set(r), line
        assert ("started_at" if r["event"] == "start" else "finished_at") in r, line
    per_chunk = sum(len(line) + 1 for line, _ in chunk_lines) / 300
    assert per_chunk <= 400, f"{per_chunk:.0f} bytes of telemetry per chunk"
    pid_of = {w["rank"]: w["pid"] for w in workers}
    joined = read_telemetry(tfile)
    assert len(joined) == len(chunk_lines) and all(e["pid"] == pid_of[e["rank"]] and e["worker"] for e in joined)


def test_no_launcher_runs_as_one_rank(tmp_path):
    manifest = make_dataset(tmp_path, 1, 5, seconds=0.3)
    proc = run_badc(
        [
            "run",
            str(manifest),
            "--runner",
            "command",
            "--runner-cmd",
            FAKE_CMD,
            "--output-dir",
            str(tmp_path / "out"),
            "--telemetry-dir",
            str(tmp_path / "tel"),
        ],
        np=None,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "5 chunks on 1 rank;" in proc.stdout
    (stored,) = store_records(tmp_path / "out").values()
    assert len(stored) == 5
