"""Real HawkEars (tiny random-weight model) through the real runner under a real mpiexec.

Needs ``make hawkears hawkears-tiny`` (``make test`` builds them); with BADC_MPI_SKIP_HAWKEARS=1
these tests are skipped instead of failing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from badc_mpi.runners.hawkears import env as hawkears_env
from badc_mpi.storage.ledger import read_ledger

from ci_rules import skip_or_fail
from helpers import (
    MPIEXEC,
    PYTHON,
    ProcessTree,
    cmdline,
    descendants,
    make_dataset,
    read_jsonl,
    read_telemetry,
    run_badc,
    run_own,
    sidecar,
    stop_tree,
    store_records,
    telemetry_files,
)

pytestmark = pytest.mark.hawkears


@pytest.fixture(scope="module", autouse=True)
def hawkears_ready():
    from badc_mpi.errors import BadcError

    try:
        python = hawkears_env.find_hawkears_python()
        hawkears_env.describe_data_root(hawkears_env.tiny_data_root(python=python), "cli")
    except BadcError as exc:
        if os.environ.get("BADC_MPI_SKIP_HAWKEARS") == "1":
            skip_or_fail(f"HawkEars not set up: {exc}")
        pytest.fail(f"HawkEars not set up: {exc}")


def hawkears_args(manifest: Path, root: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(manifest),
        "--models",
        "1",
        "--hawkears-data-root",  # pinned: the tests must not pick up real models staged on this machine
        str(hawkears_env.tiny_data_root()),
        "--output-dir",
        str(root / "out"),
        "--telemetry-dir",
        str(root / "tel"),
        "--progress-interval-s",
        "3600",
        "--backoff-s",
        "0.1",
        *extra,
    ]


def test_two_ranks_score_every_chunk_with_one_resident_worker_each(tmp_path):
    manifest = make_dataset(tmp_path, recordings=2, chunks_per_recording=8, seconds=6.0, sample_rate=22050)
    # one corrupt chunk: HawkEars exits 0 writing nothing; badc-mpi must call it an input failure
    lines = manifest.read_text().splitlines()
    bad = tmp_path / "audio" / "corrupt.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + os.urandom(3000))
    lines.append("rec001,rec001_corrupt,../audio/corrupt.wav,99000,105000,0,,,site9")
    manifest.write_text("\n".join(lines) + "\n")
    proc = run_badc(hawkears_args(manifest, tmp_path), np=2)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "TINY" in proc.stderr.upper()  # the loud banner: detections from random weights are meaningless
    stages = [ln.split("HawkEars start-up: ", 1)[1].split()[0] for ln in proc.stderr.splitlines() if "HawkEars start-up: " in ln]
    assert sorted(stages) == sorted(["importing", "loading", "ready"] * 2), stages  # each rank names its start-up
    progress = [ln for ln in proc.stderr.splitlines() if "badc-mpi progress: " in ln]
    assert progress[0].endswith("ETA --:--:--") and "0/17 chunks" in progress[0]  # a log sees the total at once
    (tfile,) = telemetry_files(tmp_path / "tel")
    events = read_telemetry(tfile)
    finals = {f"{e['recording_id']}/{e['chunk_id']}": e for e in events if e["event"] in ("success", "failure")}
    assert len(finals) == 17
    # HawkEars' constant facts are written once per rank, in its worker event, never per chunk
    lines = [(x, json.loads(x)) for x in tfile.read_text().splitlines()]
    workers = [e for _, e in lines if e["event"] == "worker"]
    assert sorted(w["rank"] for w in workers) == [0, 1] and all(w["model_version"].startswith("tiny:") for w in workers)
    per_chunk = [x for x, e in lines if e["event"] in ("start", "success", "failure", "retry")]
    assert len(per_chunk) == 34 and not [x for x in per_chunk if "model_version" in x or "<resident>" in x]
    failure = finals.pop("rec001/rec001_corrupt")
    assert failure["event"] == "failure" and failure["failure_class"] == "input" and failure["attempt"] == 1
    assert failure["reason"]  # HawkEars' own message
    (stored,) = store_records(tmp_path / "out").values()
    assert set(stored) == set(finals) and sum(e["detections"] for e in finals.values()) > 0
    (versions,) = {
        json.loads(x)["model_version"]
        for x in next((tmp_path / "out" / "detections").glob("*.jsonl")).read_text().splitlines()
        if '"versions"' in x
    }
    assert versions.startswith("tiny:")
    pids_by_rank = defaultdict(set)
    for key, e in finals.items():
        assert e["event"] == "success", e
        rec, chunk = key.split("/")
        (record,) = stored[key]  # the detection store: one record per success, none for the failure
        assert record["n"] == e["detections"] and record["meta"]["site"] and record["chunk_start_ms"] == int(chunk.split("_")[-2])
        for d in record["detections"]:
            assert 0.0 <= d["confidence"] <= 1.0 and 0.0 <= d["start_s"] <= d["end_s"] <= 6.0
            # HawkEars wrote one label form; the data root's classes.csv gives both code and name
            assert d["label"] and d["label_code"] and d["label_name"] and d["label_code"] != d["label_name"]
        assert e["model_version"] and e["hawkears_version"]
        assert e["worker_starts"] == 1
        pids_by_rank[e["rank"]].add(e["worker_pid"])
        assert e["command"][0].startswith("<resident") and "input={input}" in e["command"]
        assert e["device"] == "cpu"  # what HawkEars itself reports, in its rank's worker event
        assert not {"decode_s", "score_s", "worker_pid"} & set(e.get("metrics", {}))  # not per chunk (<= 400 B)
    assert set(pids_by_rank) == {0, 1}, "both ranks worked"
    assert all(len(p) == 1 for p in pids_by_rank.values()), "one HawkEars worker per rank, not one per chunk"


@pytest.mark.timeout(420)  # its runs' own limits: 150 + 30 + 200 s
def test_kill_a_rank_mid_run_then_resume_with_real_hawkears(tmp_path):
    manifest = make_dataset(tmp_path, recordings=2, chunks_per_recording=6, seconds=6.0, sample_rate=22050)
    cmd = [MPIEXEC, "-n", "2", PYTHON, "-m", "badc_mpi", *hawkears_args(manifest, tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree = ProcessTree(proc.pid)  # this run's processes, the resident HawkEars workers included
    try:
        deadline = time.monotonic() + 150
        tfile = None
        while time.monotonic() < deadline and proc.poll() is None:  # kill once some chunks are done and others in flight
            files = telemetry_files(tmp_path / "tel") if (tmp_path / "tel").exists() else []
            if files and sum(1 for e in read_jsonl_safe(files[0]) if e["event"] == "success") >= 3:
                tfile = files[0]
                break
            time.sleep(0.2)
        assert tfile is not None, "the first run never got going"
        tree.refresh()
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and its ranks (their own session)
        proc.wait(timeout=30)
    finally:
        tree.kill_all()  # what the ranks left behind (resident workers in their own groups), as a scheduler would
        tree.close()
        stop_tree(proc)
    time.sleep(1.0)
    resumed = run_badc(hawkears_args(manifest, tmp_path, "--resume"), np=2, timeout_s=200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first = read_jsonl_safe(tfile)
    done_first = {e["c"] for e in read_ledger(sidecar(tfile, ".ledger.jsonl")).entries if e["s"] == "success"}
    in_flight = {e["chunk_id"] for e in first if e["event"] == "start"} - done_first
    assert len(done_first) >= 3 and in_flight, "the kill hit no chunk in flight"
    newest = max(telemetry_files(tmp_path / "tel"), key=lambda p: p.stat().st_mtime_ns)
    second = read_jsonl(newest)
    rerun = {e["chunk_id"] for e in second if e["event"] == "start"}
    everything = {f"rec{r:03d}_chunk_{c * 6000}_{c * 6000 + 6000}" for r in range(2) for c in range(6)}
    assert not (rerun & done_first), "chunks done before the kill ran again"
    assert rerun == everything - done_first and in_flight <= rerun, (
        "the chunks in flight at the kill, and only the unfinished, ran again"
    )
    summary = json.loads(sidecar(newest, ".summary.json").read_text())
    assert summary["counts"]["success"] == 12
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and ".tmp-" in p.name]
    assert not leftovers


def read_jsonl_safe(path: Path) -> list[dict]:
    data = path.read_bytes()
    return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].decode().splitlines() if x.strip()]


def resident_pids(root: int) -> list[int]:
    """The resident HawkEars processes started under ``root`` (this test's own mpiexec), not any
    process such a resident started itself."""
    found = {pid for pid in descendants(root) if "runners/hawkears/resident.py" in cmdline(pid)}
    return sorted(pid for pid in found if parent(pid) not in found)


def parent(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@pytest.mark.timeout(420)  # its run's own limits: 150 + 200 s
def test_a_killed_hawkears_worker_is_restarted_and_its_chunk_retried(tmp_path):
    manifest = make_dataset(tmp_path, recordings=2, chunks_per_recording=5, seconds=20.0, sample_rate=22050)
    keys = {f"rec{r:03d}/rec{r:03d}_chunk_{c * 20000}_{c * 20000 + 20000}" for r in range(2) for c in range(5)}
    cmd = [MPIEXEC, "-n", "2", PYTHON, "-m", "badc_mpi", *hawkears_args(manifest, tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not killed and proc.poll() is None:
            files = telemetry_files(tmp_path / "tel") if (tmp_path / "tel").exists() else []
            # once both ranks have started a chunk, both resident workers are up: kill them mid-work
            if files and {e["rank"] for e in read_jsonl_safe(files[0]) if e["event"] == "start"} == {0, 1}:
                for pid in resident_pids(proc.pid):
                    os.kill(pid, signal.SIGKILL)  # mid-chunk (or between chunks): the rank must survive it
                    killed.append(pid)
            time.sleep(0.05)
        assert killed, "no HawkEars worker to kill"
        out, err = proc.communicate(timeout=200)
    except BaseException:
        stop_tree(proc)
        raise
    assert proc.returncode == 0, err[-3000:]
    (tfile,) = telemetry_files(tmp_path / "tel")
    events = read_telemetry(tfile)
    # every chunk exactly one success, none failed
    successes = Counter(f"{e['recording_id']}/{e['chunk_id']}" for e in events if e["event"] == "success")
    assert successes == Counter(keys), successes
    assert not [e for e in events if e["event"] == "failure"]
    # each killed worker crashed exactly one attempt (the chunk it was scoring, or the next one sent
    # to its rank), which was retried as a crash and then succeeded on a restarted worker
    retries = [e for e in events if e["event"] == "retry"]
    assert all(e["failure_class"] == "crash" for e in retries), retries
    assert sorted(e["worker_pid"] for e in retries) == sorted(killed), (retries, killed)
    finals = {f"{e['recording_id']}/{e['chunk_id']}": e for e in events if e["event"] == "success"}
    for e in retries:
        final = finals[f"{e['recording_id']}/{e['chunk_id']}"]
        assert final["attempt"] == e["attempt"] + 1 == 2
        assert final["worker_starts"] == 2 and final["worker_pid"] not in killed
    # a restarted HawkEars worker is a new worker event of its rank (its pid and start count changed)
    restarts = [w for w in read_jsonl(tfile) if w["event"] == "worker" and w.get("worker_starts") == 2]
    assert {w["rank"] for w in restarts} == {e["rank"] for e in retries} and len(restarts) == len({w["rank"] for w in restarts})
    retried = {f"{e['recording_id']}/{e['chunk_id']}" for e in retries}
    assert all(e["attempt"] == 1 for k, e in finals.items() if k not in retried)


def test_a_rank_whose_hawkears_cannot_start_is_left_out_and_the_others_finish(tmp_path):
    manifest = make_dataset(tmp_path, recordings=1, chunks_per_recording=4, seconds=6.0, sample_rate=22050)
    args = ["-m", "badc_mpi", *hawkears_args(manifest, tmp_path)]
    # MPMD launch: rank 1 gets a HawkEars python that does not exist
    cmd = [
        MPIEXEC,
        "-n",
        "1",
        PYTHON,
        *args,
        ":",
        "-n",
        "1",
        "-env",
        "BADC_MPI_HAWKEARS_PYTHON",
        str(tmp_path / "no-such-python"),
        PYTHON,
        *args,
    ]
    proc = run_own(cmd, cwd=tmp_path, timeout_s=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 on" in proc.stderr and "continuing on the other 1 rank(s)" in proc.stderr
    (tfile,) = telemetry_files(tmp_path / "tel")
    finals = [e for e in read_jsonl(tfile) if e["event"] == "success"]
    assert len(finals) == 4 and {e["rank"] for e in finals} == {0}


def test_hawkears_on_the_cpu_of_a_gpu_rank_is_refused(tmp_path):
    """The binding says GPU (fake NVML), torch in HawkEars' env has no CUDA: the rank must not score
    on the CPU without a word; with every rank so, the run stops with exit 2 naming the mismatch."""
    from fakes.nvml import fake_env

    manifest = make_dataset(tmp_path, recordings=1, chunks_per_recording=2, seconds=6.0, sample_rate=22050)
    proc = run_badc(hawkears_args(manifest, tmp_path), np=None, env=fake_env("one"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("badc-mpi: error")]
    assert len(errors) == 1 and "HawkEars runs on cpu although" in errors[0] and "is bound to GPU" in errors[0]


def test_results_made_on_another_device_kind_are_results_of_other_settings(tmp_path):
    """HawkEars picks models and the low-band classifier by device: the run's device kind is in its
    fingerprint, from the ranks' bindings. A CPU run records ``cpu`` (its resident reports the CPU);
    a resume that finds chunks done on CUDA stops naming the device, unless --rerun-changed."""
    manifest = make_dataset(tmp_path, recordings=1, chunks_per_recording=3, seconds=6.0, sample_rate=22050)
    first = run_badc(hawkears_args(manifest, tmp_path), np=2, timeout_s=200)
    assert first.returncode == 0, first.stderr[-3000:]
    (ledger,) = (tmp_path / "tel").glob("*.ledger.jsonl")
    header, *records = ledger.read_text().splitlines(keepends=True)
    head = json.loads(header)
    assert head["fingerprint"]["device"] == "cpu"
    (tfile,) = telemetry_files(tmp_path / "tel")
    assert {e["device"] for e in read_jsonl(tfile) if e["event"] == "worker"} == {"cpu"}  # what the residents report
    head["fingerprint"]["device"] = "cuda"  # as a GPU run into the same folder would have recorded it
    ledger.write_text(json.dumps(head) + "\n" + "".join(records))
    refused = run_badc(hawkears_args(manifest, tmp_path, "--resume"), np=2, timeout_s=200)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "device: 'cuda' -> 'cpu'" in refused.stderr and "--rerun-changed" in refused.stderr
    rerun = run_badc(hawkears_args(manifest, tmp_path, "--resume", "--rerun-changed"), np=2, timeout_s=200)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "3 rerun because they were done with other settings" in rerun.stdout + rerun.stderr
