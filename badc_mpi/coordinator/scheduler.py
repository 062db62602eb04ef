"""The scheduler: rank 0's pure bookkeeping of which chunk goes next, retries with back-off, outcomes.

Pure logic, no MPI and no I/O: the coordinator's run feeds it requests and results and turns its decisions
into messages and telemetry. Time is passed in (``now``), so tests drive it with a fake clock.

Invariants (checked by the property test in ``tests/test_coordinator.py``):

- a chunk is in flight on at most one worker at a time;
- every chunk is dispatched until it succeeds or has used ``1 + max_retries`` attempts
  (``input`` failures are final at once);
- each chunk ends exactly once, as ``success`` or ``failed``.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from badc_mpi.records import BACKOFF, FAILED, IN_FLIGHT, NOT_RETRIED, PENDING, SUCCESS, Chunk, ChunkState


@dataclass(frozen=True)
class BackoffPolicy:
    """Retry delay: ``base_s * 2**(retry-1)``, capped at ``max_s``, with +/- ``jitter`` fraction."""

    base_s: float = 5.0
    max_s: float = 300.0
    jitter: float = 0.25

    def delay_s(self, retry: int, rng: random.Random) -> float:
        raw = min(self.max_s, self.base_s * (2 ** max(0, retry - 1)))
        if self.jitter and raw > 0:
            raw *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return round(max(0.0, raw), 3)


@dataclass(frozen=True)
class Decision:
    """What happened to a chunk after an attempt ended."""

    event: str  #: ``success`` | ``retry`` | ``failure`` | ``stale``
    backoff_s: float = 0.0


class Scheduler:
    """The queue and retry policy over a fixed set of chunks (keys must be unique)."""

    def __init__(
        self,
        chunks: Iterable[Chunk],
        *,
        max_retries: int = 2,
        policy: BackoffPolicy | None = None,
        seed: int | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        self.policy = policy or BackoffPolicy()
        self._rng = random.Random(seed)
        self.states: dict[str, ChunkState] = {}
        self._queue: deque[str] = deque()
        for chunk in chunks:
            if chunk.key in self.states:
                raise ValueError(f"duplicate chunk key {chunk.key}")
            self.states[chunk.key] = ChunkState(chunk)
            self._queue.append(chunk.key)
        self._delayed: list[tuple[float, int, str]] = []  # (due, seq, key)
        self._seq = 0
        self._in_flight: dict[str, str] = {}  # key -> worker
        self._final = 0
        self._counts = {PENDING: len(self.states), IN_FLIGHT: 0, BACKOFF: 0, SUCCESS: 0, FAILED: 0}
        self.draining = False

    def _move(self, state: ChunkState, status: str) -> None:
        self._counts[state.status] -= 1
        self._counts[status] += 1
        state.status = status

    # -- queries -------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.states)

    @property
    def final_count(self) -> int:
        return self._final

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def in_flight(self) -> dict[str, str]:
        return dict(self._in_flight)

    @property
    def finished(self) -> bool:
        """All chunks final, or draining with nothing left in flight."""
        if self._final == len(self.states):
            return True
        return self.draining and not self._in_flight

    def has_ready(self, now: float) -> bool:
        return not self.draining and (
            bool(self._queue) or bool(self._delayed and self._delayed[0][0] <= now)
        )  # may be True for a queue holding only pre-failed keys: take() then returns []

    def next_due_s(self, now: float) -> float | None:
        """Seconds until the earliest backed-off chunk is due (None when none waits)."""
        if not self._delayed:
            return None
        return max(0.0, self._delayed[0][0] - now)

    def recount(self) -> dict[str, int]:
        """Counts by scanning every chunk (O(n)); tests compare it with :meth:`counts`."""
        out = {PENDING: 0, IN_FLIGHT: 0, BACKOFF: 0, SUCCESS: 0, FAILED: 0}
        for state in self.states.values():
            out[state.status] += 1
        return out

    def counts(self) -> dict[str, int]:
        """Chunks per status (kept up to date at each transition: O(1))."""
        return dict(self._counts)

    # -- transitions ---------------------------------------------------------------------
    def take(self, n: int, worker: str, now: float, *, others_free: bool = False) -> list[tuple[Chunk, int]]:
        """Up to ``n`` chunks for ``worker`` as ``(chunk, attempt)``: due retries first. With
        ``others_free`` (another worker can take work now), a retry never goes back to the worker
        whose attempt failed: it is left for the others."""
        out: list[tuple[Chunk, int]] = []
        if self.draining:
            return out
        kept: list[tuple[float, int, str]] = []
        while len(out) < n:
            if self._delayed and self._delayed[0][0] <= now:
                item = heapq.heappop(self._delayed)
                key = item[2]
                if others_free and self.states[key].worker == worker:
                    kept.append(item)
                    continue
            elif self._queue:
                key = self._queue.popleft()
                if self.states[key].status != PENDING:
                    continue  # failed before dispatch (mark_failed)
            else:
                break
            state = self.states[key]
            self._move(state, IN_FLIGHT)
            state.attempts += 1
            state.worker = worker
            self._in_flight[key] = worker
            out.append((state.chunk, state.attempts))
        for item in kept:
            heapq.heappush(self._delayed, item)
        return out

    def is_current(self, key: str, attempt: int, worker: str) -> bool:
        """Whether a report of ``attempt`` from ``worker`` would count (not stale)."""
        state = self.states.get(key)
        return state is not None and self._in_flight.get(key) == worker and state.attempts == attempt

    def finish(
        self,
        key: str,
        attempt: int,
        worker: str,
        *,
        ok: bool,
        failure_class: str | None = None,
        reason: str = "",
        runtime_s: float = 0.0,
        now: float = 0.0,
    ) -> Decision:
        """Record the end of an attempt and decide: success, retry (with back-off) or failure."""
        state = self.states[key]
        if self._in_flight.get(key) != worker or state.attempts != attempt:
            return Decision("stale")  # a duplicate or late report: never counted twice
        del self._in_flight[key]
        state.runtime_s = runtime_s
        if ok:
            self._move(state, SUCCESS)
            state.failure_class = None
            self._final += 1
            return Decision("success")
        state.failure_class = failure_class or "exit"
        state.last_error = reason
        retryable = state.failure_class not in NOT_RETRIED
        if retryable and state.attempts <= self.max_retries:
            state.retries += 1
            delay = self.policy.delay_s(state.retries, self._rng)
            state.last_backoff_s = delay
            self._move(state, BACKOFF)
            self._seq += 1
            heapq.heappush(self._delayed, (now + delay, self._seq, key))
            return Decision("retry", delay)
        self._move(state, FAILED)
        self._final += 1
        return Decision("failure")

    def release(self, worker: str) -> list[str]:
        """Take back every chunk in flight on a worker that can no longer work (its runner died
        for good): they go to the front of the queue, and the lost attempt is not counted."""
        keys = [key for key, w in self._in_flight.items() if w == worker]
        for key in reversed(keys):
            del self._in_flight[key]
            state = self.states[key]
            state.attempts -= 1
            state.worker = None
            self._move(state, PENDING)
            self._queue.appendleft(key)
        return keys

    def drain(self) -> None:
        """Stop dispatching; chunks already in flight may still finish."""
        self.draining = True

    def mark_failed(self, key: str, failure_class: str, reason: str) -> None:
        """Fail a chunk before it is dispatched (e.g. its input is missing)."""
        state = self.states[key]
        if state.status != PENDING:
            raise ValueError(f"{key} is {state.status}, not pending")
        self._move(state, FAILED)
        state.failure_class = failure_class
        state.last_error = reason
        self._final += 1
