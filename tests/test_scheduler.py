"""The coordinator's bookkeeping, in-process without MPI (unit and property tests)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from badc_mpi.coordinator.scheduler import BackoffPolicy, Scheduler


@dataclass(frozen=True)
class FakeChunk:
    recording_id: str
    chunk_id: str
    duration_s: float | None = None

    @property
    def key(self) -> str:
        return f"{self.recording_id}/{self.chunk_id}"


def chunks(n: int) -> list[FakeChunk]:
    return [FakeChunk("rec", f"c{i:04d}") for i in range(n)]


def test_manifest_order_and_success():
    scheduler = Scheduler(chunks(3), max_retries=2, policy=BackoffPolicy(0, 0, 0))
    got = scheduler.take(2, "w0", now=0)
    assert [c.chunk_id for c, _ in got] == ["c0000", "c0001"]
    assert all(a == 1 for _, a in got)
    assert scheduler.finish("rec/c0000", 1, "w0", ok=True).event == "success"
    assert scheduler.counts()["success"] == 1 and scheduler.in_flight_count == 1
    assert not scheduler.finished


def test_retry_backoff_then_failure():
    policy = BackoffPolicy(base_s=10, max_s=15, jitter=0)
    scheduler = Scheduler(chunks(2), max_retries=2, policy=policy)
    ((c, a),) = scheduler.take(1, "w0", now=0)
    d = scheduler.finish(c.key, a, "w0", ok=False, failure_class="exit", reason="boom", now=0)
    assert d.event == "retry" and d.backoff_s == 10
    # while it backs off, the worker takes other work; the retry is not due yet
    ((other, _),) = scheduler.take(1, "w0", now=1)
    assert other.chunk_id == "c0001"
    assert scheduler.take(1, "w0", now=5) == []
    assert scheduler.next_due_s(5) == pytest.approx(5)
    ((c2, a2),) = scheduler.take(1, "w1", now=10)
    assert (c2.key, a2) == (c.key, 2)
    d = scheduler.finish(c.key, 2, "w1", ok=False, failure_class="timeout", now=10)
    assert d.event == "retry" and d.backoff_s == 15  # doubled, capped
    ((c3, a3),) = scheduler.take(1, "w0", now=30)
    assert a3 == 3
    d = scheduler.finish(c.key, 3, "w0", ok=False, failure_class="crash", reason="signal 9", now=30)
    assert d.event == "failure"
    st_ = scheduler.states[c.key]
    assert st_.status == "failed" and st_.attempts == 3 and st_.retries == 2 and st_.failure_class == "crash"


def test_input_failures_are_not_retried():
    scheduler = Scheduler(chunks(1), max_retries=5)
    ((c, a),) = scheduler.take(1, "w0", now=0)
    assert scheduler.finish(c.key, a, "w0", ok=False, failure_class="input", now=0).event == "failure"
    assert scheduler.finished


def test_stale_and_duplicate_results_are_ignored():
    scheduler = Scheduler(chunks(1), max_retries=1, policy=BackoffPolicy(0, 0, 0))
    ((c, a),) = scheduler.take(1, "w0", now=0)
    assert scheduler.finish(c.key, a, "w1", ok=True).event == "stale"  # wrong worker
    assert scheduler.finish(c.key, a, "w0", ok=True).event == "success"
    assert scheduler.finish(c.key, a, "w0", ok=True).event == "stale"  # duplicate
    assert scheduler.counts()["success"] == 1


def test_jitter_stays_within_bounds():
    policy = BackoffPolicy(base_s=4, max_s=100, jitter=0.25)
    rng = random.Random(1)
    for retry in range(1, 6):
        raw = min(100, 4 * 2 ** (retry - 1))
        for _ in range(50):
            assert raw * 0.75 <= policy.delay_s(retry, rng) <= raw * 1.25


def test_drain_stops_dispatch_and_finishes_when_in_flight_ends():
    scheduler = Scheduler(chunks(5))
    ((c, a),) = scheduler.take(1, "w0", now=0)
    scheduler.drain()
    assert scheduler.take(3, "w0", now=0) == []
    assert not scheduler.finished
    scheduler.finish(c.key, a, "w0", ok=True)
    assert scheduler.finished and scheduler.counts()["pending"] == 4


def test_mark_failed_before_dispatch():
    scheduler = Scheduler(chunks(3))
    scheduler.mark_failed("rec/c0001", "input", "missing")
    got = scheduler.take(5, "w0", now=0)
    assert [c.chunk_id for c, _ in got] == ["c0000", "c0002"]


def test_duplicate_keys_rejected():
    with pytest.raises(ValueError):
        Scheduler([FakeChunk("r", "a"), FakeChunk("r", "a")])


# -- property: for any interleaving of requests, results, failures and retries -------------------
ops = st.lists(
    st.tuples(
        st.sampled_from(["take", "ok", "fail", "input", "tick", "dup"]),
        st.integers(0, 3),  # worker
        st.integers(1, 3),  # n to take
        st.integers(0, 1000),  # pick among in-flight
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 12), max_retries=st.integers(0, 3), script=ops, seed=st.integers(0, 10))
def test_property_every_chunk_ends_exactly_once(n, max_retries, script, seed):
    scheduler = Scheduler(chunks(n), max_retries=max_retries, policy=BackoffPolicy(1.0, 8.0, 0.25), seed=seed)
    now = 0.0
    inflight: dict[str, tuple[int, str]] = {}  # key -> (attempt, worker)
    dispatches: dict[str, int] = {}
    finals: dict[str, int] = {}
    workers = [f"w{i}" for i in range(4)]

    def step(kind: str, w: int, k: int, pick: int) -> None:
        nonlocal now
        if kind == "take":
            for chunk, attempt in scheduler.take(k, workers[w], now):
                assert chunk.key not in inflight, "dispatched while already in flight"
                assert finals.get(chunk.key, 0) == 0, "dispatched after its final outcome"
                dispatches[chunk.key] = dispatches.get(chunk.key, 0) + 1
                assert attempt == dispatches[chunk.key]
                assert attempt <= 1 + max_retries
                inflight[chunk.key] = (attempt, workers[w])
        elif kind == "tick":
            now += 1.0 + pick % 10
        elif inflight:
            key = sorted(inflight)[pick % len(inflight)]
            attempt, worker = inflight[key]
            if kind == "dup":
                assert scheduler.finish(key, attempt, "nobody", ok=True).event == "stale"
                return
            del inflight[key]
            ok = kind == "ok"
            cls = None if ok else ("input" if kind == "input" else "exit")
            d = scheduler.finish(key, attempt, worker, ok=ok, failure_class=cls, now=now)
            if d.event in ("success", "failure"):
                finals[key] = finals.get(key, 0) + 1
            if d.event == "retry":
                assert cls != "input" and attempt <= max_retries
            if d.event == "failure" and cls != "input":
                assert attempt == 1 + max_retries

    for op in script:
        step(*op)
        assert scheduler.counts() == scheduler.recount()
    # then drive to completion: every chunk must end exactly once
    guard = 0
    while not scheduler.finished:
        guard += 1
        assert guard < 10_000
        step("take", guard % 4, 3, 0)
        if inflight:
            step("fail" if guard % 3 else "ok", 0, 0, guard)
        else:
            now += 10.0
    assert sorted(finals) == sorted(c.key for c in chunks(n))
    assert all(v == 1 for v in finals.values())
    counts = scheduler.counts()
    assert counts["success"] + counts["failed"] == n
    for key, state in scheduler.states.items():
        assert state.attempts == dispatches[key] <= 1 + max_retries


def test_release_takes_back_a_lost_workers_chunks_without_counting_the_attempt():
    scheduler = Scheduler(chunks(4), max_retries=0)
    lost = scheduler.take(2, "w1", now=0)
    kept = scheduler.take(1, "w2", now=0)
    assert sorted(scheduler.release("w1")) == sorted(c.key for c, _ in lost)
    assert scheduler.in_flight() == {kept[0][0].key: "w2"}
    again = scheduler.take(3, "w2", now=0)
    assert [c.key for c, _ in again][:2] == [c.key for c, _ in lost]  # front of the queue
    assert all(a == 1 for _, a in again)  # the lost attempt did not count (max_retries=0 still allows one)
    assert scheduler.counts() == scheduler.recount()


def test_a_retry_goes_to_another_worker_when_one_is_free():
    sched = Scheduler(chunks(2), max_retries=2, policy=BackoffPolicy(0, 0, 0))
    (chunk, attempt), _ = sched.take(2, "gpu0@a", 0.0)
    assert sched.finish(chunk.key, attempt, "gpu0@a", ok=False, failure_class="crash").event == "retry"
    assert sched.take(1, "gpu0@a", 1.0, others_free=True) == []  # left for the others
    got = sched.take(1, "gpu1@b", 1.0, others_free=True)
    assert [(c.key, a) for c, a in got] == [(chunk.key, 2)]
    assert sched.finish(chunk.key, 2, "gpu1@b", ok=False, failure_class="crash").event == "retry"
    # nobody else is free: the same worker may take it rather than leave it waiting
    assert [(c.key, a) for c, a in sched.take(1, "gpu1@b", 2.0, others_free=False)] == [(chunk.key, 3)]
