"""Typed messages between ranks, one kind per purpose, and the MPI transport they travel on.

Every message is a small dataclass sent point-to-point with its own tag. Ranks never block in
MPI receives (a blocked receive burns a whole core, see ``shared/notes/mpi.md``): :class:`Mailbox`
polls with ``iprobe`` and sleeps with a capped exponential back-off (:class:`Backoff`).

Flow::

    worker                                   rank 0 (coordinator)
      Hello(binding)            ------------>   collects the binding table
                                <------------   Setup(config) | Stop(exit_code, message)
      Report(events, want=n)    ------------>   telemetry, bookkeeping, credit += n
                                <------------   Assign(tasks)
      ...                                       ...
                                <------------   Stop(exit_code)   (all chunks final, or drain)
      Goodbye(rank)             ------------>

A worker-side problem that prevents it from working at all (e.g. its runner cannot start) travels
as ``Fatal``; rank 0 then stops the job with exit code 2. Task-level failures are data inside
``Report.events``, never exceptions.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.runners.base import Binding

TAG_HELLO = 21
TAG_SETUP = 22
TAG_REPORT = 23
TAG_ASSIGN = 24
TAG_STOP = 25
TAG_FATAL = 26
TAG_GOODBYE = 27

BACKOFF_ENV = "BADC_MPI_BACKOFF_MAX_S"
DEFAULT_BACKOFF_MAX_S = 0.001


@dataclass(frozen=True)
class Hello:
    """A rank introduces itself: where it runs and what it is bound to."""

    rank: int
    pid: int
    binding: Binding


@dataclass(frozen=True)
class Setup:
    """Rank 0 tells a worker how to work: the run's options and identity."""

    run_id: str
    config: Any  #: :class:`badc_mpi.worker.WorkerConfig`


@dataclass(frozen=True)
class WireTask:
    """One attempt of one chunk, as sent to a worker."""

    chunk: Any  #: :class:`badc_mpi.manifest.Chunk`
    attempt: int
    timeout_s: float


@dataclass(frozen=True)
class Assign:
    tasks: list[WireTask]


@dataclass(frozen=True)
class StartEvent:
    """An attempt began on a worker (sent as it happens, not at the end)."""

    key: str
    attempt: int
    started_at: float  #: epoch seconds
    command: list[str] = field(default_factory=list)
    line: str = ""  #: the telemetry record, encoded by the worker


@dataclass
class ResultEvent:
    """An attempt ended. ``ok`` is the worker's verdict after validating outputs."""

    key: str
    attempt: int
    started_at: float
    finished_at: float
    ok: bool
    failure_class: str | None
    reason: str
    exit_code: int | None
    signal: int | None
    command: list[str]
    outputs: dict[str, str]
    detections: int | None
    runner_pid: int | None
    gpu: dict[str, Any]  #: vram_used_mib, vram_device_mib, gpu_util_pct_mean, gpu_util_pct_max
    metrics: dict[str, Any]
    model_version: str | None = None
    hawkears_version: str | None = None
    body: str = ""  #: the telemetry record body, encoded by the worker (see telemetry.result_line)

    @property
    def runtime_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True)
class Report:
    """A batch of events from one worker, plus how many more tasks it can take now."""

    rank: int
    events: list[StartEvent | ResultEvent]
    want: int


@dataclass(frozen=True)
class Stop:
    """Rank 0 ends the job for a worker; ``exit_code`` is the code every rank exits with."""

    exit_code: int
    message: str = ""


@dataclass(frozen=True)
class Fatal:
    """A worker cannot work at all (not a task failure)."""

    rank: int
    host: str
    message: str


@dataclass(frozen=True)
class Goodbye:
    rank: int


def backoff_cap_s(value: float | None = None) -> float:
    """The back-off cap: argument, then ``BADC_MPI_BACKOFF_MAX_S``, then 1 ms."""
    if value is not None:
        return float(value)
    env = os.environ.get(BACKOFF_ENV)
    return float(env) if env else DEFAULT_BACKOFF_MAX_S


class Backoff:
    """Exponential back-off sleep: 1 µs doubling to ``max_s``; ``reset()`` after any progress."""

    def __init__(self, max_s: float | None = None, min_s: float = 1e-6) -> None:
        self.max_s = backoff_cap_s(max_s)
        self.min_s = min(min_s, self.max_s)
        self.delay_s = self.min_s

    def reset(self) -> None:
        self.delay_s = self.min_s

    def sleep(self) -> None:
        time.sleep(self.delay_s)
        self.delay_s = min(self.delay_s * 2, self.max_s)


class Mailbox:
    """Non-blocking point-to-point transport over an mpi4py communicator."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.comm = comm
        self._status = MPI.Status()
        self._any_source = MPI.ANY_SOURCE
        self._any_tag = MPI.ANY_TAG
        self._pending: list[Any] = []

    def send(self, dest: int, tag: int, message: object) -> None:
        """Buffered non-blocking send; completed requests are reaped on later calls."""
        self._pending.append(self.comm.isend(message, dest=dest, tag=tag))
        if len(self._pending) > 64:
            self._reap()

    def _reap(self) -> None:
        self._pending = [req for req in self._pending if not req.Test()]

    def poll(self, source: int | None = None) -> tuple[int, int, Any] | None:
        """One waiting message as ``(source, tag, message)``, or None without blocking."""
        src = self._any_source if source is None else source
        if not self.comm.iprobe(source=src, tag=self._any_tag, status=self._status):
            if self._pending:
                self._reap()
            return None
        sender, tag = self._status.Get_source(), self._status.Get_tag()
        return sender, tag, self.comm.recv(source=sender, tag=tag)

    def wait(self, source: int | None = None, backoff: Backoff | None = None) -> tuple[int, int, Any]:
        """Wait for one message, sleeping between probes (never spinning)."""
        backoff = backoff or Backoff()
        while True:
            got = self.poll(source)
            if got is not None:
                return got
            backoff.sleep()

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait (politely) until every send posted so far has completed."""
        deadline = time.monotonic() + timeout_s
        backoff = Backoff()
        while self._pending and time.monotonic() < deadline:
            self._reap()
            if self._pending:
                backoff.sleep()
