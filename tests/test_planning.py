"""Pure planning pieces: order, timeouts, option checks, the resume command, ledger, lock, telemetry."""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time

import pytest

from badc_mpi.cli.parser import build_parser
from badc_mpi.cli.resume import resume_command
from badc_mpi.coordinator.planning import order_chunks, slurm_meta
from badc_mpi.errors import LockError, StateError, UsageError
from badc_mpi.options import RunOptions
from badc_mpi.records import Chunk
from badc_mpi.storage import ledger as ledger_mod
from badc_mpi.storage import lock as lock_mod
from badc_mpi.storage import telemetry as tel


def chunk(cid: str, start: int | None, end: int | None, rec: str = "r") -> Chunk:
    return Chunk(rec, cid, "a.wav", "/d/a.wav", start, end, 0, None, "", (("site", "s1"),), "/d/m.csv", 2)


def test_longest_first_keeps_manifest_order_for_ties_and_unknowns_last():
    cs = [chunk("a", 0, 10), chunk("b", None, None), chunk("c", 0, 60), chunk("d", 0, 10)]
    assert [c.chunk_id for c in order_chunks(cs, "manifest")] == ["a", "b", "c", "d"]
    assert [c.chunk_id for c in order_chunks(cs, "longest-first")] == ["c", "a", "d", "b"]


@pytest.mark.parametrize("big", [False, True])
def test_longest_first_positions_match_the_chunk_order(tmp_path, monkeypatch, big):
    """The vectorised order (an integer key per row, built in blocks) equals order_chunks, for a
    set of two manifests, with unknown durations, ties, values past int32, and a resume subset."""
    import random

    import numpy as np

    from badc_mpi.coordinator import planning
    from badc_mpi.inputs.chunk_table import ChunkSet
    from badc_mpi.inputs.manifest import load_manifest

    monkeypatch.setattr(planning, "BLOCK_ROWS", 7)
    rng = random.Random(2)
    tables = []
    for name in ("a", "b"):
        lines = ["recording_id,chunk_id,source_path,start_ms,end_ms"]
        for i in range(60):
            start = rng.choice([0, 5, 3 * 10**9 if big else 7])
            end = "" if i % 9 == 0 else str(start + rng.choice([10, 20, 30]))
            lines.append(f"r,{name}{i},a.wav,{start},{end}")
        path = tmp_path / f"{name}.csv"
        path.write_text("\n".join(lines) + "\n")
        tables.append(load_manifest(str(path), check_sources=False).chunks)
    catalog = ChunkSet(tables)
    everything = list(catalog)
    want = [c.key for c in order_chunks(everything, "longest-first")]
    assert [c.key for c in ChunkSet(tables, planning.order_positions(catalog, None, "longest-first"))] == want
    subset = np.array(sorted(rng.sample(range(120), 50)))
    got = catalog.subset(planning.order_positions(catalog, subset, "longest-first"))
    assert [c.key for c in got] == [c.key for c in order_chunks([everything[i] for i in subset], "longest-first")]
    assert planning.order_positions(catalog, None, "manifest") is None


def test_timeout_scales_with_duration():
    o = RunOptions()
    assert o.timeout_for(None) == o.timeout_default_s
    assert o.timeout_for(10.0) == o.timeout_min_s
    assert o.timeout_for(60.0) == 300.0
    assert RunOptions(timeout_s=7).timeout_for(600.0) == 7


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_retries=-1),
        dict(inflight=0),
        dict(inflight=9),
        dict(order="random"),
        dict(runner="command"),
        dict(workers_per_gpu=0),
        dict(timeout_s=0),
    ],
)
def test_impossible_options_are_usage_errors_with_a_fix(bad):
    with pytest.raises(UsageError) as err:
        RunOptions(**bad).validate()
    assert "Fix:" in str(err.value)


DIRS = {"output_dir": "/abs/out", "telemetry_dir": "/abs/tel", "chunks_dir": "/abs/chunks"}


def parsed_run(*words: str):  # noqa: ANN201
    return build_parser().parse_args(["run", "/d/m one.csv", *words])


def test_resume_command_pins_folders_and_keeps_the_other_options():
    args = parsed_run(
        "--runner",
        "command",
        "--runner-cmd",
        "python fake.py --input {input}",
        "--output-dir",
        "rel/out",
        "--telemetry-dir=rel/tel",
        "--resume",
        "--max-retries",
        "3",
        "--no-low-band",
        "--resume-summary",
        "a.json",
        "--resume-summary",
        "b.json",
        "--skip-failed",
    )
    words = shlex.split(resume_command(args, DIRS, 4, env={"BADC_MPI_VIA_MAKE": "1"}))
    assert words[:3] == ["make", "-C", words[2]] and words[3] == "resume"
    assert "MANIFEST=/d/m one.csv" in words and "NP=4" in words
    flags = shlex.split(next(w for w in words if w.startswith("ARGS="))[5:])
    assert flags == [
        "--runner",
        "command",
        "--runner-cmd",
        "python fake.py --input {input}",
        "--no-low-band",
        "--max-retries",
        "3",
        "--resume-summary",
        "a.json",
        "--resume-summary",
        "b.json",
        "--skip-failed",
        "--output-dir",
        "/abs/out",
        "--telemetry-dir",
        "/abs/tel",
        "--chunks-dir",
        "/abs/chunks",
    ]


def test_resume_command_follows_the_launcher():
    args = parsed_run("--dry-run")
    srun = shlex.split(resume_command(args, DIRS, 8, env={"SLURM_JOB_ID": "42"}))
    assert srun[:3] == ["srun", "-n", "8"] and srun[3:7] == [sys.executable, "-m", "badc_mpi", "run"]
    assert srun[7] == "/d/m one.csv" and srun[-1] == "--resume" and "--dry-run" in srun
    pmi2 = shlex.split(resume_command(args, DIRS, 4, env={"SLURM_JOB_ID": "42", "SLURM_MPI_TYPE": "pmi2"}))
    assert pmi2[:4] == ["srun", "-n", "4", "--mpi=pmi2"]  # the step's plugin: the MPICH wheel needs pmi2
    mpi = shlex.split(resume_command(args, DIRS, 3, env={}))
    assert mpi[0].endswith("mpiexec") and mpi[1:3] == ["-n", "3"]
    one = shlex.split(resume_command(args, DIRS, 1, env={}))
    assert one[0] == sys.executable and one[-1] == "--resume"
    assert parsed_run(*one[5:]).resume and parsed_run(*one[5:]).output_dir == "/abs/out"


def test_ledger_round_trip_torn_line_and_corruption(tmp_path):
    path = tmp_path / "run.ledger.jsonl"
    w = ledger_mod.LedgerWriter(path, ledger_mod.header_record("run1", ["/m.csv"], "/out", "t0"))
    for i in range(5):
        w.append(
            ledger_mod.entry_record(
                chunk(f"c{i}", 0, 1),
                "success" if i % 2 == 0 else "failed",
                run_id="run1",
                attempts=1,
                failure_class=None if i % 2 == 0 else "exit",
                reason="boom",
                finished_at="t",
                has_outputs=i % 2 == 0,
            )
        )
    w.close()
    got = ledger_mod.read_ledger(path)
    assert got.header["run_id"] == "run1" and not got.torn and got.lines == 5
    assert got.records["r/c0"][ledger_mod.STATUS] == "success" and got.records["r/c1"][ledger_mod.FAILURE_CLASS] == "exit"
    with open(path, "ab") as fh:
        fh.write(b'{"r":"r","c":"c9","s":"succ')
    torn = ledger_mod.read_ledger(path)
    assert torn.torn and "r/c9" not in torn.records and len(torn.records) == 5
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"r": "r", "c": 5'
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StateError) as err:
        ledger_mod.read_ledger(path)
    assert f"{path}, line 3" in str(err.value) and "Fix:" in str(err.value)
    path.write_bytes(b"")
    with pytest.raises(StateError):
        ledger_mod.read_ledger(path)


def test_lock_refuses_live_holder_and_takes_over_dead_one(tmp_path):
    held = lock_mod.acquire(tmp_path, "run-a")
    with pytest.raises(LockError) as err:
        lock_mod.acquire(tmp_path, "run-b")
    assert "run-a" in str(err.value) and str(os.getpid()) in str(err.value)
    held.release()
    assert not (tmp_path / lock_mod.LOCK_NAME).exists()
    (tmp_path / lock_mod.LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "run_id": "dead", "started_at": "x"})
    )
    again = lock_mod.acquire(tmp_path, "run-c")
    assert json.loads((tmp_path / lock_mod.LOCK_NAME).read_text())["run_id"] == "run-c"
    again.release()


def test_stale_reason_rules():
    now = time.time()
    host = socket.gethostname()
    assert lock_mod.stale_reason({"host": host, "pid": os.getpid()}, now, host, now, False) is None
    assert lock_mod.stale_reason({"host": "elsewhere", "pid": 1}, now, host, now, False) is None
    assert lock_mod.stale_reason({"host": "elsewhere", "pid": 1}, now, host, now, True) == "--force-unlock"
    assert "heartbeat" in lock_mod.stale_reason(
        {"host": "elsewhere", "pid": 1}, now - 2 * lock_mod.STALE_AFTER_S, host, now, False
    )


def test_telemetry_writer_lines_are_valid_json_and_torn_tail_is_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    w = tel.TelemetryWriter(path)
    w.write({"event": "start", "x": 'é\n"q"'})
    w.write_line(tel.result_line("success", None, tel.dumps({"recording_id": "r", "chunk_id": "c"})))
    w.write_line(tel.result_line("retry", 2.5, tel.dumps({"recording_id": "r", "chunk_id": "d"})))
    w.close()
    with open(path, "ab") as fh:
        fh.write(b'{"event": "succ')
    events = list(tel.read_events(path))
    assert events[0]["x"] == 'é\n"q"' and events[1]["event"] == "success" and "backoff_s" not in events[1]
    assert events[2] == {"event": "retry", "backoff_s": 2.5, "recording_id": "r", "chunk_id": "d"}
    assert len(events) == 3
    assert tel.utc_iso(0.25) == "1970-01-01T00:00:00.250Z"
    assert tel.sidecar(path, ".summary.json").name == "t.summary.json"


def test_resume_refuses_a_ledger_without_fingerprint_unless_told(tmp_path):
    from badc_mpi.coordinator.resume import ResumeState, decide
    from badc_mpi.errors import StateError

    from helpers import make_chunk

    chunk = make_chunk()
    rec = ("success", None, False, 1, None, "", "2026-11-01T00:00:00Z", "old-run")
    state = ResumeState(records={chunk.key: rec}, sources=["old.ledger.jsonl"], fingerprints={"old-run": None})
    now = {"runner": "hawkears", "min_score": 0.5}
    with pytest.raises(StateError, match="older badc-mpi"):
        decide([chunk], state, output_dir=str(tmp_path), skip_failed=False, fingerprint=now)
    assert decide([chunk], state, output_dir=str(tmp_path), skip_failed=False, fingerprint=now, on_change="accept").skipped == 1
    rerun = decide([chunk], state, output_dir=str(tmp_path), skip_failed=False, fingerprint=now, on_change="rerun")
    assert rerun.to_run.tolist() == [0] and rerun.changed_settings == 1
    same = ResumeState(records={chunk.key: rec}, sources=["x"], fingerprints={"old-run": dict(now)})
    assert decide([chunk], same, output_dir=str(tmp_path), skip_failed=False, fingerprint=now).skipped == 1


def test_slurm_meta_names_the_job_and_step_only_inside_slurm():
    assert slurm_meta({}) is None and slurm_meta({"SLURM_STEP_ID": "0"}) is None
    env = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "2", "SLURM_CLUSTER_NAME": "sockeye", "SLURM_ARRAY_TASK_ID": ""}
    assert slurm_meta(env) == {"job_id": "77", "step_id": "2", "cluster": "sockeye"}
    assert slurm_meta({"SLURM_JOBID": "9"}) == {"job_id": "9"}


def test_resume_keeps_the_latest_record_and_counts_orphans_and_changed_hashes(tmp_path):
    from badc_mpi.coordinator.resume import ResumeState, decide

    from helpers import make_chunk

    a, b, c = (make_chunk(chunk_id=f"c{i}", sha256=("ab" * 32 if i == 2 else None)) for i in range(3))
    older = {a.key: ("failed", None, False, 1, "exit", "x", None, "r1"), b.key: ("success", None, False, 1, None, "", None, "r1")}
    newer = {a.key: ("success", None, False, 2, None, "", None, "r2"), b.key: ("failed", None, False, 2, "exit", "y", None, "r2")}
    newer[c.key] = ("success", "cd" * 32, False, 1, None, "", None, "r2")  # done with another sha256: runs again
    newer["rec1/gone"] = ("success", None, False, 1, None, "", None, "r2")
    state = ResumeState(sources=["x"])
    state.add_records(older)
    state.add_records(newer)
    got = decide([a, b, c], state, output_dir=str(tmp_path), skip_failed=False)
    assert got.to_run.tolist() == [1, 2] and got.skipped == 1 and got.carried_counts == {"success": 1}
    assert got.orphans == 1 and got.changed_hash == 1
    skip = decide([a, b, c], state, output_dir=str(tmp_path), skip_failed=True)
    assert skip.to_run.tolist() == [2] and skip.carried_counts == {"success": 1, "failed": 1}


def test_scheduler_lists_failed_and_unfinished_states_for_the_summary():
    from badc_mpi.coordinator.scheduler import BackoffPolicy, Scheduler

    from helpers import make_chunk

    chunks = [make_chunk(chunk_id=f"c{i}") for i in range(5)]
    sched = Scheduler(chunks, max_retries=1, policy=BackoffPolicy(10, 10, 0))
    taken = sched.take(3, "w0", now=0)
    sched.finish(taken[0][0].key, 1, "w0", ok=True)
    sched.finish(taken[1][0].key, 1, "w0", ok=False, failure_class="input", reason="gone")
    sched.finish(taken[2][0].key, 1, "w0", ok=False, failure_class="exit", reason="boom", now=0)
    listed = sched.states_at(sched.indices("failed", "in_flight", "backoff"))
    assert [(s.chunk.chunk_id, s.status, s.last_error) for s in listed] == [("c1", "failed", "gone"), ("c2", "backoff", "boom")]
    assert [s.chunk.chunk_id for s in sched.worst()] == ["c1", "c2"]
    assert sched.counts() == sched.recount() == {"pending": 2, "in_flight": 0, "backoff": 1, "success": 1, "failed": 1}


def test_the_device_kind_of_a_run_comes_from_its_ranks_bindings():
    from badc_mpi.coordinator.planning import device_kind
    from badc_mpi.storage.ledger import entry_record

    assert device_kind(["cuda", "cuda", "cuda", "cuda"]) == "cuda"
    assert device_kind(["cpu"]) == "cpu"
    assert device_kind(["cuda", "cpu", "cuda"]) == "cpu+cuda"  # --cpu-workers beside GPU ranks
    assert device_kind([]) is None  # the API without ranks' bindings: nothing claimed
    from helpers import make_chunk

    assert (
        entry_record(
            make_chunk(),
            "success",
            run_id="r",
            attempts=1,
            failure_class=None,
            reason="",
            finished_at=None,
            has_outputs=True,
            device="cpu",
        )["d"]
        == "cpu"
    )
    assert "d" not in entry_record(
        make_chunk(), "success", run_id="r", attempts=1, failure_class=None, reason="", finished_at=None, has_outputs=True
    )
