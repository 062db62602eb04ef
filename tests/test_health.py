"""Rank health as pure bookkeeping (time passed in): the quarantine rule (whose fault is a failed
attempt), deadlines of batched chunks, silence at start-up. The real runs are in
``tests/test_quarantine_mpi.py`` and ``tests/test_hardening.py``."""

from __future__ import annotations

import pytest

from badc_mpi.coordinator.health import Health
from badc_mpi.coordinator.scheduler import BackoffPolicy, Scheduler
from badc_mpi.records import EXIT, INPUT, OOM, TIMEOUT

from helpers import make_chunk


def simulate(
    n: int,
    ranks: int,
    fails,  # noqa: ANN001 - (rank, key) -> failure class or None
    *,
    max_retries: int = 2,
    quarantine_after: int = 3,
    window: int = 1,
    rounds: int = 10_000,
) -> tuple[Scheduler, dict[int, str], dict[str, set[int]]]:
    """Drive the scheduler and the health rule as rank 0 does: each round every live rank that may
    work takes up to ``window`` chunks (a retry prefers another working rank), then their attempts end."""
    chunks = [make_chunk(chunk_id=f"c{i:04d}") for i in range(n)]
    sched = Scheduler(chunks, max_retries=max_retries, policy=BackoffPolicy(base_s=1.0, max_s=1.0, jitter=0.0), seed=1)
    health = Health(quarantine_after=quarantine_after)
    dead: dict[int, str] = {}
    tried: dict[str, set[int]] = {}
    now = 0.0
    for _ in range(rounds):
        if sched.finished or len(dead) == ranks:
            break
        working = health.working([r for r in range(ranks) if r not in dead])
        taken = []
        for rank in sorted(working):
            for chunk, attempt in sched.take(window, f"w{rank}", now, others_free=len(working - {rank}) > 0):
                taken.append((rank, chunk, attempt))
        for rank, chunk, attempt in taken:
            if rank in dead:
                continue
            tried.setdefault(chunk.key, set()).add(rank)
            failure = fails(rank, chunk.key)
            decision = sched.finish(chunk.key, attempt, f"w{rank}", ok=failure is None, failure_class=failure, now=now)
            for blamed, why in health.attempt_ended(rank, chunk.key, failure is None, failure, decision.event == "failure"):
                if blamed not in dead:
                    dead[blamed] = why
                    sched.release(f"w{blamed}")
                    health.forget_rank(blamed)
        now += 0.5
    return sched, dead, tried


BAD = {f"rec1/c{i:04d}" for i in range(40, 60)}  # a block of 20 bad chunks: a damaged recording


@pytest.mark.parametrize("cls", [EXIT, OOM, TIMEOUT])
@pytest.mark.parametrize("window", [1, 3])
def test_a_block_of_bad_chunks_fails_them_and_sets_no_rank_aside(cls, window):
    sched, dead, tried = simulate(200, 3, lambda rank, key: cls if key in BAD else None, window=window)
    assert dead == {}  # no rank quarantined: the chunks' fault
    states = sched.states
    assert all(states[k].status == "failed" and states[k].failure_class == cls for k in BAD)
    assert sched.counts()["success"] == 180  # good chunks always run
    assert all(len(tried[k]) >= 2 for k in BAD)  # each bad chunk was tried on two ranks at least


def test_a_rank_whose_failed_chunks_succeed_elsewhere_is_set_aside():
    sched, dead, _ = simulate(100, 3, lambda rank, key: EXIT if rank == 1 else None)
    assert list(dead) == [1] and "3 chunks failed here and then succeeded on other ranks" in dead[1]
    assert sched.counts()["success"] == 100


def test_a_broken_rank_is_held_and_does_not_burn_the_queue():
    """Rank 1 fails every chunk at once; held after 3 undecided failures, it takes no more until
    they are retried elsewhere: at most 3 (+ its window) chunks ever see it."""
    _, dead, tried = simulate(300, 3, lambda rank, key: EXIT if rank == 1 else None, window=2)
    assert list(dead) == [1]
    assert sum(1 in ranks for ranks in tried.values()) <= 3 + 2


def test_bad_chunks_and_a_broken_rank_together():
    sched, dead, _ = simulate(200, 3, lambda rank, key: EXIT if rank == 2 or key in BAD else None)
    assert list(dead) == [2]
    states = sched.states
    assert all(states[k].status == "failed" for k in BAD)
    assert sched.counts()["success"] == 180


def test_one_rank_is_never_set_aside_for_chunks_nobody_else_tried():
    """With one rank (or --max-retries 0) nobody can tell the chunk's fault from the rank's: the
    chunks fail, the good ones run, the rank stays (setting it aside would stop every resume the same way)."""
    sched, dead, _ = simulate(100, 1, lambda rank, key: EXIT if key in BAD else None)
    assert dead == {} and sched.counts() == {**sched.counts(), "success": 80, "failed": 20}
    sched, dead, _ = simulate(100, 3, lambda rank, key: EXIT if key in BAD else None, max_retries=0)
    assert dead == {} and sched.counts()["success"] == 80


def test_verdicts_by_hand():
    h = Health(quarantine_after=2)
    # failed on two ranks, then succeeded on a third: the chunk's (flaky) fault, no strike
    assert h.attempt_ended(0, "a", False, EXIT) == []
    assert h.attempt_ended(1, "a", False, EXIT) == []
    assert h.attempt_ended(2, "a", True, None) == []
    assert h.blame.strikes(0) == h.blame.strikes(1) == 0
    # failed on 0, 0 succeeded at something since, then the chunk succeeded on 1: a passing fault
    assert h.attempt_ended(0, "b", False, OOM) == []
    assert h.attempt_ended(0, "c", True, None) == []
    assert h.attempt_ended(1, "b", True, None) == []
    assert h.blame.strikes(0) == 0
    # input failures are the chunk's: never counted
    assert h.attempt_ended(0, "d", False, INPUT, final=True) == []
    # two chunks failed on 0 succeed on 1 and 2: rank 0 is set aside, with the reason
    assert h.attempt_ended(0, "e", False, EXIT) == []
    assert h.attempt_ended(0, "f", False, EXIT) == []
    assert h.working([0, 1, 2]) == {1, 2}  # held: two undecided failures
    assert h.working([0]) == {0}  # nobody else to work: not held
    assert h.attempt_ended(1, "e", True, None) == []
    assert h.working([0, 1, 2]) == {0, 1, 2}
    ((rank, why),) = h.attempt_ended(2, "f", True, None)
    assert rank == 0 and "2 chunks failed here" in why and "(last: f)" in why
    h.forget_rank(0)
    assert h.attempt_ended(0, "g", False, EXIT) == [] and h.attempt_ended(1, "g", True, None) == []  # gone


def test_quarantine_after_zero_never_blames():
    h = Health(quarantine_after=0)
    for key in "abcdef":
        h.attempt_ended(0, key, False, EXIT)
        assert h.attempt_ended(1, key, True, None) == []
    assert h.working([0, 1]) == {0, 1}


# -- deadlines of a batch ------------------------------------------------------------------------


def test_a_short_chunk_of_a_slow_healthy_batch_is_not_overdue():
    """--hawkears-batch: the runner ends a batch within the longest of its chunks' timeouts, so rank
    0 gives every chunk of the batch that long (the short one's own timeout would mark a slow,
    healthy batch stuck)."""
    h = Health(margin_s=60.0)
    h.sent(1, "short", 30.0, now=0.0)
    h.sent(1, "long", 300.0, now=0.0)
    h.started(1, "short", 30.0, started_at=1.0)  # both start together: one batch
    h.started(1, "long", 300.0, started_at=1.0)
    assert h.overdue(200.0) == []  # the batch may legitimately run until 1 + 300
    assert h.overdue(362.0) == [(1, "short"), (1, "long")]  # past the longest timeout + margin: stuck
    h.ended("short", 30.0)
    h.ended("long", 300.0)
    assert h.overdue(1e6) == []
    h.sent(1, "alone", 30.0, now=400.0)  # a chunk alone: its own timeout
    h.started(1, "alone", 30.0, started_at=400.0)
    assert h.overdue(489.0) == [] and h.overdue(491.0) == [(1, "alone")]


# -- silence at start-up -------------------------------------------------------------------------


def test_start_up_is_governed_by_the_startup_timeout_alone():
    """A worker builds its runner (hashing every checkpoint: minutes on a slow shared file system)
    before its first heartbeat: the silence limit starts with that first message."""
    h = Health(silent_after_s=120.0, startup_timeout_s=600.0)
    h.starting(1, now=0.0)
    h.starting(2, now=0.0)
    assert h.silent(300.0) == []  # hashing for 5 minutes: not lost
    h.heard(1, now=310.0)  # rank 1 started: the silence limit applies from now on
    assert h.silent(400.0) == []
    assert h.silent(431.0) == [(1, "silent: no message for 120 s")]
    ((rank, why),) = [x for x in h.silent(601.0) if x[0] == 2]
    assert rank == 2 and "--startup-timeout-s 600" in why


def test_an_output_failure_is_the_rank_s_never_the_chunk_s():
    """A file-system error writing outputs (a full disk) strikes its rank at once, even when the
    chunk also fails so on another rank: a full disk everywhere sets every rank aside (the run then
    stops in order, exit 75) rather than failing every chunk of the campaign."""
    from badc_mpi.coordinator.blame import Blame
    from badc_mpi.records import OUTPUT

    blame = Blame(quarantine_after=2)
    assert blame.attempt_ended(0, "r/a", False, OUTPUT, False) == []
    assert blame.attempt_ended(1, "r/a", False, OUTPUT, False) == []  # the same chunk, another rank
    out0 = blame.attempt_ended(0, "r/b", False, OUTPUT, False)
    out1 = blame.attempt_ended(1, "r/b", False, OUTPUT, True)
    assert [r for r, _ in out0] == [0] and [r for r, _ in out1] == [1]
    assert "file-system errors writing outputs" in out0[0][1]
