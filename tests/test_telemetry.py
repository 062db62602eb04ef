"""Telemetry 2: a worker's constant facts once, in its ``worker`` event (again when one changes),
compact per-chunk lines, and the readers' join (``with_facts``, the aggregate's attempts)."""

from __future__ import annotations

import json

from badc_mpi.records import Binding
from badc_mpi.results.aggregate.schema import parse_attempts
from badc_mpi.runners.base import AttemptResult, Runner, Task
from badc_mpi.storage import telemetry as tel
from badc_mpi.transport.messages import StartEvent, WireTask, WorkerConfig, WorkerEvent
from badc_mpi.worker.supervisor import Supervisor

from helpers import make_chunk


class VersionedRunner(Runner):
    """An inline runner whose model changes after two attempts, with HawkEars-like metrics."""

    name = "fake"
    inline = True
    produces_outputs = False
    static_metrics = frozenset({"worker_pid", "load_s"})

    def __init__(self) -> None:
        self.runs = 0

    def duration_s(self, chunk) -> float:  # noqa: ANN001
        return 0.0

    def command(self, chunk, scratch_dir: str = "") -> list[str]:  # noqa: ANN001
        return ["fake", "--model", "m1", chunk.input_path, scratch_dir]

    def describe(self) -> dict:
        return {"runner": self.name, "model_version": "m1", "worker_pid": 77, "load_s": 1.5, "device": "cpu"}

    def run(self, task: Task) -> AttemptResult:
        self.runs += 1
        model = "m1" if self.runs <= 2 else "m2"
        metrics = {
            "worker_pid": 77,
            "load_s": 1.5,
            "wall_s": 0.5,
            "decode_s": 0.1,
            "rows": 0.12345,
            "detections": 3,
            "peak": None,
        }
        return AttemptResult(ok=True, exit_code=0, pid=77, model_version=model, metrics=metrics)


def test_worker_event_once_then_again_when_the_model_changes():
    binding = Binding("node1", 3, 0, "gpu0@node1", "GPU-x", 0, "GPU-x", "Fake GPU", 16000)
    sup = Supervisor(WorkerConfig("run1", "fake", None, "/out", None), binding, VersionedRunner())
    sup.start()
    chunks = [make_chunk(chunk_id=f"c{i}", input_path=f"/x/c{i}.wav") for i in range(4)]
    sup.submit([WireTask(c, 1, 60.0) for c in chunks])
    events = sup.drain_events(1000.0)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["WorkerEvent"] + ["StartEvent", "ResultEvent"] * 2 + ["StartEvent", "WorkerEvent", "ResultEvent"] + [
        "StartEvent",
        "ResultEvent",
    ]
    first, second = (json.loads(e.line) for e in events if isinstance(e, WorkerEvent))
    assert first["event"] == "worker" and (first["rank"], first["worker"], first["host"]) == (3, "gpu0@node1", "node1")
    assert (first["gpu_uuid"], first["model_version"], first["worker_pid"], first["load_s"]) == ("GPU-x", "m1", 77, 1.5)
    assert first["command"] == ["fake", "--model", "m1", "{input}", "{output_dir}"]
    assert {**first, "model_version": "m2", "at": second["at"]} == second  # only the model changed
    start = json.loads(next(e for e in events if isinstance(e, StartEvent)).line)
    assert set(start) == {"event", "rank", "recording_id", "chunk_id", "attempt", "started_at"}
    result = json.loads(tel.result_line("success", None, events[2].body))
    # constant metrics (in the worker event), NOT_PER_CHUNK ones and nulls are left out; the pid is the worker's
    assert result["metrics"] == {"rows": 0.123, "detections": 3} and "runner_pid" not in result
    assert set(result) == {
        "event",
        "rank",
        "recording_id",
        "chunk_id",
        "attempt",
        "finished_at",
        "runtime_s",
        "exit_code",
        "metrics",
    }


def test_with_facts_joins_the_latest_worker_event_of_each_rank_and_keeps_schema_1_lines():
    lines = [
        {"schema": tel.SCHEMA, "event": "run", "run_id": "r1", "at": "t"},
        {"event": "worker", "at": "t", "rank": 0, "worker": "gpu0@a", "host": "a", "model_version": "m1"},
        {"event": "worker", "at": "t", "rank": 1, "worker": "gpu0@b", "host": "b", "model_version": "m1"},
        {"event": "start", "rank": 1, "chunk_id": "c1"},
        {"event": "worker", "at": "t", "rank": 1, "worker": "gpu0@b", "host": "b", "model_version": "m2"},
        {"event": "success", "rank": 1, "chunk_id": "c1"},
        {"event": "success", "rank": 0, "chunk_id": "c0"},
        {"schema": "badc-mpi.telemetry/1", "run_id": "old", "event": "success", "rank": 0, "host": "z", "chunk_id": "c2"},
    ]
    got = [(e["run_id"], e["event"], e["chunk_id"], e["host"], e.get("model_version")) for e in tel.with_facts(lines)]
    assert got == [
        ("r1", "start", "c1", "b", "m1"),
        ("r1", "success", "c1", "b", "m2"),
        ("r1", "success", "c0", "a", "m1"),
        ("old", "success", "c2", "z", "m1"),
    ]


def test_attempts_join_worker_facts_in_order_and_derive_the_start():
    lines = [
        {"schema": tel.SCHEMA, "event": "run", "run_id": "r1", "at": "2026-12-01T00:00:00.000Z"},
        # a chunk failed before dispatch precedes rank 0's worker event: it gets that rank's first facts
        {"event": "failure", "rank": 0, "recording_id": "r", "chunk_id": "m", "attempt": 0, "failure_class": "input"},
        {"event": "worker", "rank": 0, "worker": "cpu0@a", "host": "a", "model_version": "m1", "hawkears_version": "2.3"},
        {"event": "worker", "rank": 1, "worker": "gpu0@b", "host": "b", "gpu_index": 0, "gpu_name": "G", "model_version": "m1"},
        {
            "event": "start",
            "rank": 1,
            "recording_id": "r",
            "chunk_id": "c1",
            "attempt": 1,
            "started_at": "2026-12-01T00:00:01.000Z",
        },
        {
            "event": "retry",
            "backoff_s": 1.0,
            "rank": 1,
            "recording_id": "r",
            "chunk_id": "c1",
            "attempt": 1,
            "finished_at": "2026-12-01T00:00:03.500Z",
            "runtime_s": 2.5,
            "failure_class": "oom",
            "reason": "x",
        },  # fmt: skip
        {"event": "worker", "rank": 1, "worker": "gpu0@b", "host": "b", "gpu_index": 0, "gpu_name": "G", "model_version": "m2"},
        {
            "event": "success",
            "rank": 1,
            "recording_id": "r",
            "chunk_id": "c1",
            "attempt": 2,
            "finished_at": "2026-12-01T00:00:09.000Z",
            "runtime_s": 1.25,
            "gpu_util_pct_mean": 50.0,
        },  # fmt: skip
        {
            "event": "success",
            "rank": 0,
            "recording_id": "r",
            "chunk_id": "c2",
            "attempt": 1,
            "finished_at": "2026-12-01T00:00:09.000Z",
            "runtime_s": 1.0,
        },  # fmt: skip
    ]
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    rows = parse_attempts(body).to_pylist()
    got = [(r["run_id"], r["event"], r["worker"], r["host"], r["gpu_name"], r["model_version"], r["started_at"]) for r in rows]
    assert got == [
        ("r1", "failure", "cpu0@a", "a", None, "m1", None),
        ("r1", "retry", "gpu0@b", "b", "G", "m1", "2026-12-01T00:00:01.000Z"),
        ("r1", "success", "gpu0@b", "b", "G", "m2", "2026-12-01T00:00:07.750Z"),
        ("r1", "success", "cpu0@a", "a", None, "m1", "2026-12-01T00:00:08.000Z"),
    ]
    assert rows[0]["hawkears_version"] == "2.3" and rows[2]["gpu_util_pct_mean"] == 50.0
