"""Typed messages between ranks, one kind per purpose, and their MPI tags.

Every message is a small dataclass sent point-to-point with its own tag by
:class:`badc_mpi.transport.mailbox.Mailbox`.

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

from dataclasses import dataclass, field
from typing import Any

from badc_mpi.records import Binding, Chunk

TAG_HELLO = 21
TAG_SETUP = 22
TAG_REPORT = 23
TAG_ASSIGN = 24
TAG_STOP = 25
TAG_FATAL = 26
TAG_GOODBYE = 27


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs to know about the run (sent by rank 0 in ``Setup``)."""

    run_id: str
    runner_kind: str  #: ``stub`` | ``command`` | ``hawkears``
    runner_options: Any  #: the runner's own picklable options
    output_dir: str
    scratch_root: str | None  #: ``--scratch-dir``; None = node-local (each rank resolves its own)
    capacity: int = 2  #: chunks in flight per worker (queued + running)
    heartbeat_s: float = 30.0  #: a worker reports at least this often, even with nothing to say
    scratch_dir: str = ""  #: this rank's own folder, ``<root>/badc-mpi-<run_id>/<host>-r<rank>`` (set per rank)
    layout: str = "store"  #: ``store``: detections travel to rank 0's store; ``per-chunk``: files per chunk


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
    config: WorkerConfig


@dataclass(frozen=True)
class WireTask:
    """One attempt of one chunk, as sent to a worker."""

    chunk: Chunk
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


@dataclass(frozen=True)
class WorkerEvent:
    """A worker's constant facts (host, GPU, runner, versions, command template), or a change of
    them: rank 0 writes ``line`` as is, before the worker's next start or result line."""

    line: str  #: the telemetry ``worker`` record, encoded by the worker
    key: str = ""  #: no chunk


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
    record: str = ""  #: the chunk's detection-store line (storage.store.chunk_line), for rank 0 to append
    versions: str = ""  #: the store's id of (hawkears_version, model_version)

    @property
    def runtime_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True)
class Report:
    """A batch of events from one worker, plus how many more tasks it can take now."""

    rank: int
    events: list[WorkerEvent | StartEvent | ResultEvent]
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
