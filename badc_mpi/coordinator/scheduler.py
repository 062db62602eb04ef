"""The scheduler: rank 0's pure bookkeeping of which chunk goes next, retries with back-off, outcomes.

Pure logic, no MPI and no I/O: the coordinator's run feeds it requests and results and turns its decisions
into messages and telemetry. Time is passed in (``now``), so tests drive it with a fake clock.

Invariants (checked by ``test_property_every_chunk_ends_exactly_once`` in ``tests/test_scheduler.py``):

- a chunk is in flight on at most one worker at a time;
- every chunk is dispatched until it succeeds or has used ``1 + max_retries`` attempts
  (``input`` failures are final at once);
- each chunk ends exactly once, as ``success`` or ``failed``.

Memory: rank 0 of a 10,000,000-chunk run keeps no object per chunk. Chunks are known by their
index in the run's queue (``chunks``: a :class:`~badc_mpi.inputs.chunk_table.ChunkSet`, or any
sequence of :class:`Chunk`); status, attempts, retries, last worker, last runtime and failure class
live in numpy arrays (12 bytes per chunk); the chunks in flight (a few per worker) and the last
error of chunks that failed an attempt live in small dicts, the backed-off ones in a heap. A
:class:`ChunkState` is built on demand (:meth:`Scheduler.state`, :attr:`Scheduler.states`).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from badc_mpi.records import BACKOFF, FAILED, IN_FLIGHT, NOT_RETRIED, PENDING, SUCCESS, Chunk, ChunkState

#: status codes of the per-chunk ``int8`` array, in this order
STATUSES = (PENDING, IN_FLIGHT, BACKOFF, SUCCESS, FAILED)
_PENDING, _IN_FLIGHT, _BACKOFF, _SUCCESS, _FAILED = range(len(STATUSES))
MAX_ATTEMPTS = 30_000  #: attempts are counted in int16
STATE_BLOCK = 1 << 16  #: states built at a time when many are listed
PREFETCH = 256  #: chunks built at a time ahead of the queue


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
    """The queue and retry policy over a fixed sequence of chunks (keys must be unique)."""

    def __init__(
        self,
        chunks: Sequence[Chunk],
        *,
        max_retries: int = 2,
        policy: BackoffPolicy | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0 <= max_retries < MAX_ATTEMPTS:
            raise ValueError(f"max_retries must be between 0 and {MAX_ATTEMPTS - 1}")
        self.max_retries = max_retries
        self.policy = policy or BackoffPolicy()
        self._rng = random.Random(seed)
        self.chunks = chunks
        n = len(chunks)
        if isinstance(chunks, list) and len({c.key for c in chunks}) != n:  # tables are checked on load
            raise ValueError("duplicate chunk key")
        self._status = np.zeros(n, dtype=np.int8)
        self._attempts = np.zeros(n, dtype=np.int16)
        self._retries = np.zeros(n, dtype=np.int16)
        self._worker = np.full(n, -1, dtype=np.int16)  #: code in self._labels
        self._runtime = np.zeros(n, dtype=np.float32)
        self._class = np.full(n, -1, dtype=np.int8)  #: code in self._classes
        self._labels: list[str] = []
        self._classes: list[str] = []
        self._errors: dict[int, str] = {}  #: last error of chunks whose last attempt failed
        self._backoffs: dict[int, float] = {}  #: last back-off of retried chunks
        self._next = 0  #: the queue: chunks[_next:] not yet taken, behind the _front
        self._front: deque[int] = deque()  #: released chunks, taken first
        self._delayed: list[tuple[float, int, int]] = []  # (due, seq, index)
        self._seq = 0
        self._in_flight: dict[str, tuple[int, str, Chunk]] = {}  # key -> (index, worker, chunk)
        self._index: dict[str, int] | None = None  #: every key's index, built only if asked
        self._ahead: dict[int, Chunk] = {}  #: chunks built ahead of the queue (at most PREFETCH)
        self._final = 0
        self._counts = {PENDING: n, IN_FLIGHT: 0, BACKOFF: 0, SUCCESS: 0, FAILED: 0}
        self.draining = False

    def _move(self, i: int, code: int) -> None:
        self._counts[STATUSES[self._status[i]]] -= 1
        self._counts[STATUSES[code]] += 1
        self._status[i] = code

    @staticmethod
    def _code(names: list[str], name: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            names.append(name)
            return len(names) - 1

    # -- queries -------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self._status)

    @property
    def final_count(self) -> int:
        return self._final

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def in_flight(self) -> dict[str, str]:
        return {key: worker for key, (_, worker, _) in self._in_flight.items()}

    @property
    def finished(self) -> bool:
        """All chunks final, or draining with nothing left in flight."""
        if self._final == self.total:
            return True
        return self.draining and not self._in_flight

    def has_ready(self, now: float) -> bool:
        return not self.draining and (
            bool(self._front) or self._next < self.total or bool(self._delayed and self._delayed[0][0] <= now)
        )  # may be True for a queue holding only pre-failed chunks: take() then returns []

    def next_due_s(self, now: float) -> float | None:
        """Seconds until the earliest backed-off chunk is due (None when none waits)."""
        if not self._delayed:
            return None
        return max(0.0, self._delayed[0][0] - now)

    def recount(self) -> dict[str, int]:
        """Counts by scanning every chunk (O(n)); tests compare it with :meth:`counts`."""
        counted = np.bincount(self._status, minlength=len(STATUSES)).tolist()
        return dict(zip(STATUSES, counted))

    def counts(self) -> dict[str, int]:
        """Chunks per status (kept up to date at each transition: O(1))."""
        return dict(self._counts)

    def indices(self, *statuses: str, retried: bool = False) -> np.ndarray:
        """Indices of the chunks in any of ``statuses`` (and, with ``retried``, those retried)."""
        mask = np.isin(self._status, [STATUSES.index(s) for s in statuses])
        if retried:
            mask |= self._retries > 0
        return np.flatnonzero(mask)

    def in_flight_chunk(self, key: str) -> Chunk | None:
        """The chunk in flight under ``key`` (None when it is not: a stale or unknown key). Cheap:
        rank 0 asks for every event."""
        entry = self._in_flight.get(key)
        return None if entry is None else entry[2]

    def in_flight_state(self, key: str) -> ChunkState | None:
        """The state of a chunk in flight (None when it is not: a stale or unknown key)."""
        entry = self._in_flight.get(key)
        return None if entry is None else self._state(entry[0], entry[2])

    def state(self, key: str) -> ChunkState:
        """Any chunk's state by key (a chunk not in flight costs an index of every key, once)."""
        entry = self._in_flight.get(key)
        if entry is not None:
            return self._state(entry[0], entry[2])
        if self._index is None:
            self._index = {chunk.key: i for i, chunk in enumerate(self.chunks)}
        return self.states_at([self._index[key]])[0]

    def states_at(self, indices: Sequence[int] | np.ndarray) -> list[ChunkState]:
        """The states of these chunks (built now; changing them changes nothing here)."""
        indices = np.asarray(indices, dtype=np.int64)
        at = getattr(self.chunks, "chunks_at", None)
        chunks = at(indices) if at is not None else [self.chunks[i] for i in indices.tolist()]
        return [self._state(i, c) for i, c in zip(indices.tolist(), chunks)]

    def iter_states(self, indices: np.ndarray) -> Iterator[ChunkState]:
        """:meth:`states_at` block by block (for long lists: failed chunks of a large run)."""
        for start in range(0, len(indices), STATE_BLOCK):
            yield from self.states_at(indices[start : start + STATE_BLOCK])

    def _state(self, i: int, chunk: Chunk) -> ChunkState:
        worker, failure = int(self._worker[i]), int(self._class[i])
        return ChunkState(
            chunk,
            status=STATUSES[self._status[i]],
            attempts=int(self._attempts[i]),
            retries=int(self._retries[i]),
            worker=self._labels[worker] if worker >= 0 else None,
            runtime_s=float(self._runtime[i]),
            last_backoff_s=self._backoffs.get(i, 0.0),
            failure_class=self._classes[failure] if failure >= 0 else None,
            last_error=self._errors.get(i, ""),
        )

    @property
    def states(self) -> Mapping[str, ChunkState]:
        """Every chunk's state by key, built on access (tests, small runs; rank 0 never iterates it)."""
        return _States(self)

    def worst(self, limit: int = 10) -> list[ChunkState]:
        """Failed chunks first, then the most retried (ties by key), for the end-of-run warning."""
        candidates = self.indices(FAILED, retried=True)
        if not len(candidates):
            return []
        order = np.lexsort((-self._retries[candidates], self._status[candidates] != _FAILED))
        ranked = candidates[order]
        cut = ranked[min(limit, len(ranked)) - 1]
        boundary = (self._status[cut] != _FAILED, -self._retries[cut])
        groups = np.stack(((self._status[ranked] != _FAILED), -self._retries[ranked]), axis=1)
        worse = ranked[(groups[:, 0] < boundary[0]) | ((groups[:, 0] == boundary[0]) & (groups[:, 1] <= boundary[1]))]
        states = self.states_at(worse)  # the ranked groups up to the limit's, whole: ties go by key
        states.sort(key=lambda s: (s.status != FAILED, -s.retries, s.chunk.key))
        return states[:limit]

    # -- transitions ---------------------------------------------------------------------
    def take(self, n: int, worker: str, now: float, *, others_free: bool = False) -> list[tuple[Chunk, int]]:
        """Up to ``n`` chunks for ``worker`` as ``(chunk, attempt)``: due retries first. With
        ``others_free`` (another worker can work: alive and not held, even if busy now), a retry
        never goes back to the worker whose attempt failed: it waits for another, so a chunk's
        retries decide whose fault its failure was (``coordinator/blame.py``)."""
        if self.draining:
            return []
        code = self._code(self._labels, worker)
        taken: list[int] = []
        kept: list[tuple[float, int, int]] = []
        status = self._status
        while len(taken) < n:
            if self._delayed and self._delayed[0][0] <= now:
                item = heapq.heappop(self._delayed)
                i = item[2]
                if others_free and self._worker[i] == code:
                    kept.append(item)
                    continue
            elif self._front:
                i = self._front.popleft()
            elif self._next < len(status):
                i = self._next
                self._next += 1
            else:
                break
            if status[i] == _PENDING or status[i] == _BACKOFF:
                taken.append(i)  # else: failed before dispatch (mark_failed)
        for item in kept:
            heapq.heappush(self._delayed, item)
        if not taken:
            return []
        out = []
        for i, chunk in zip(taken, self._built(taken)):
            self._move(i, _IN_FLIGHT)
            self._attempts[i] += 1
            self._worker[i] = code
            self._in_flight[chunk.key] = (i, worker, chunk)
            out.append((chunk, int(self._attempts[i])))
        return out

    def is_current(self, key: str, attempt: int, worker: str) -> bool:
        """Whether a report of ``attempt`` from ``worker`` would count (not stale)."""
        entry = self._in_flight.get(key)
        return entry is not None and entry[1] == worker and self._attempts[entry[0]] == attempt

    def _built(self, taken: list[int]) -> list[Chunk]:
        """The chunks of ``taken``: those next in the queue are built a block ahead (building
        costs about the same for one chunk as for a few hundred)."""
        at = getattr(self.chunks, "chunks_at", None)
        if at is None:
            return [self.chunks[i] for i in taken]
        ahead = self._ahead
        if any(i not in ahead for i in taken):
            stop = min(self.total, max(taken) + PREFETCH)
            block = [i for i in range(self._next, stop) if i not in ahead] if taken[-1] < self._next else []
            wanted = sorted({i for i in taken if i not in ahead} | set(block))
            ahead.update(zip(wanted, at(wanted)))
        return [ahead.pop(i) for i in taken]

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
        if not self.is_current(key, attempt, worker):
            return Decision("stale")  # a duplicate or late report: never counted twice
        i = self._in_flight.pop(key)[0]
        self._runtime[i] = runtime_s
        if ok:
            self._move(i, _SUCCESS)
            self._class[i] = -1
            self._errors.pop(i, None)
            self._backoffs.pop(i, None)
            self._final += 1
            return Decision("success")
        failure = failure_class or "exit"
        self._class[i] = self._code(self._classes, failure)
        self._errors[i] = reason
        if failure not in NOT_RETRIED and self._attempts[i] <= self.max_retries:
            self._retries[i] += 1
            delay = self.policy.delay_s(int(self._retries[i]), self._rng)
            self._backoffs[i] = delay
            self._move(i, _BACKOFF)
            self._seq += 1
            heapq.heappush(self._delayed, (now + delay, self._seq, i))
            return Decision("retry", delay)
        self._move(i, _FAILED)
        self._final += 1
        return Decision("failure")

    def release(self, worker: str) -> list[str]:
        """Take back every chunk in flight on a worker that can no longer work (its runner died
        for good): they go to the front of the queue, and the lost attempt is not counted."""
        keys = [key for key, (_, w, _) in self._in_flight.items() if w == worker]
        for key in reversed(keys):
            i = self._in_flight.pop(key)[0]
            self._attempts[i] -= 1
            self._worker[i] = -1
            self._move(i, _PENDING)
            self._front.appendleft(i)
        return keys

    def reopen(self, keys: Sequence[str]) -> None:
        """Successes whose records could not be written (rank 0's disk): unfinished again, so
        the summary and resume run them."""
        for key in keys:
            i = self._key_index(key)
            if self._status[i] == _SUCCESS:
                self._move(i, _PENDING)
                self._final -= 1

    def drain(self) -> None:
        """Stop dispatching; chunks already in flight may still finish."""
        self.draining = True

    def mark_failed(self, which: int | str, failure_class: str, reason: str) -> None:
        """Fail a chunk before it is dispatched (e.g. its input is missing): by index, or key."""
        i = which if isinstance(which, int) else self._key_index(which)
        if self._status[i] != _PENDING:
            raise ValueError(f"chunk {which} is {STATUSES[self._status[i]]}, not pending")
        self._move(i, _FAILED)
        self._ahead.pop(i, None)
        self._class[i] = self._code(self._classes, failure_class)
        self._errors[i] = reason
        self._final += 1

    def _key_index(self, key: str) -> int:
        if self._index is None:
            self._index = {chunk.key: i for i, chunk in enumerate(self.chunks)}
        return self._index[key]


class _States(Mapping[str, ChunkState]):
    """:attr:`Scheduler.states`: a read-only view, each state built when asked for."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler

    def __getitem__(self, key: str) -> ChunkState:
        return self._s.state(key)

    def __iter__(self) -> Iterator[str]:
        return (chunk.key for chunk in self._s.chunks)

    def __len__(self) -> int:
        return self._s.total

    def values(self) -> Any:
        return self._s.iter_states(np.arange(self._s.total))

    def items(self) -> Any:
        return ((state.chunk.key, state) for state in self.values())
