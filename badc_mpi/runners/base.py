"""The runner interface: how a worker rank runs one attempt of one chunk.

A runner is created once per worker rank, ``start()``-ed once with the rank's GPU binding, then
asked to ``run()`` attempts one after another (never two at once; a runner with ``batch_size > 1``
gets up to that many at once through ``run_batch()``), and ``close()``-d at the end.
``run()`` blocks until the attempt ends and must enforce ``task.timeout_s`` itself, killing the
whole process group of anything it started. It writes raw outputs only into ``task.scratch_dir``;
the worker validates them, parses detections and moves them into place atomically.

Failures are data: ``run()`` returns an :class:`AttemptResult`; it raises only for bugs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.records import Binding, Chunk

#: a chunk whose fields are placeholders, for :meth:`Runner.command_template`
TEMPLATE_CHUNK = Chunk(
    recording_id="{recording_id}",
    chunk_id="{chunk_id}",
    source_path="{source_path}",
    input_path="{input}",
    start_ms=None,
    end_ms=None,
    overlap_ms=None,
    sha256=None,
    notes="",
    extra=(),
    manifest="",
    line=0,
)


@dataclass(frozen=True)
class Task:
    """One attempt of one chunk, as handed to a runner."""

    chunk: Chunk
    attempt: int  #: 1-based
    scratch_dir: str  #: empty per-attempt folder the runner writes raw outputs into
    timeout_s: float
    run_id: str


@dataclass
class AttemptResult:
    """How one attempt ended. ``ok`` means the runner believes it produced outputs."""

    ok: bool
    failure_class: str | None = None
    reason: str = ""  #: tail of stderr or the runner's own error message
    exit_code: int | None = None
    signal: int | None = None
    command: list[str] = field(default_factory=list)  #: argv, or the resident call and options
    raw_output: str | None = None  #: path of the raw CSV in scratch_dir (None: no file output)
    raw_format: str = "scores2"  #: ``scores2`` (HawkEars 2.x scores.csv) or ``labels1`` (1.x)
    pid: int | None = None  #: process that did the work (for per-process VRAM accounting)
    metrics: dict[str, Any] = field(default_factory=dict)  #: decode_s, score_s, peak_vram_mib, ...
    model_version: str | None = None
    hawkears_version: str | None = None


class Runner(abc.ABC):
    """Base class for runners. Subclasses: stub, command, hawkears."""

    name: str = "runner"
    #: whether a successful attempt must produce ``raw_output`` (False only for the stub)
    produces_outputs: bool = True
    #: keys of ``AttemptResult.metrics`` that stay the same from one attempt to the next (e.g. the
    #: resident process's pid): telemetry writes them once, in the worker's ``worker`` event
    static_metrics: frozenset[str] = frozenset()

    @property
    def batch_size(self) -> int:
        """Chunks :meth:`run_batch` takes at once (the supervisor hands over up to this many)."""
        return 1

    @property
    def pipeline(self) -> bool:
        """Whether the supervisor tells the runner what comes next (:meth:`prefetch`) and
        finalises outputs on a thread of its own while the runner scores the next chunks."""
        return False

    def start(self, binding: Binding) -> None:  # noqa: B027 - optional hook
        """Called once per rank before the first attempt (e.g. start a resident process)."""

    @abc.abstractmethod
    def run(self, task: Task) -> AttemptResult:
        """Run one attempt; block until it ends; enforce ``task.timeout_s``."""

    def run_batch(self, tasks: list[Task]) -> list[AttemptResult]:
        """Up to :attr:`batch_size` attempts at once, a result each, in order (default: one by one)."""
        return [self.run(task) for task in tasks]

    def prefetch(self, chunks: list[Chunk], folder: str) -> None:  # noqa: B027 - optional hook
        """A hint (with :attr:`pipeline`): these chunks come next; prepare them while others run,
        writing only under ``folder`` (the rank's scratch folder)."""

    def command(self, chunk: Chunk, scratch_dir: str = "") -> list[str]:
        """The invocation an attempt of ``chunk`` runs (argv, or the resident call), for telemetry."""
        return []

    def command_template(self) -> list[str]:
        """The invocation with placeholders (``{input}``, ``{output_dir}``...) instead of one
        chunk's values: telemetry writes it once per worker, not once per chunk."""
        return self.command(TEMPLATE_CHUNK, "{output_dir}")

    def class_labels(self) -> tuple[dict[str, str], dict[str, str]] | None:
        """(label -> class code, class code -> common name) for canonical detections, if known."""
        return None

    def active_pids(self) -> list[int]:
        """PIDs whose GPU memory counts as this runner's (sampled during an attempt)."""
        return []

    def describe(self) -> dict[str, Any]:
        """Static facts for telemetry/summary (runner name, versions, options)."""
        return {"runner": self.name}

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines this runner's detections (versions, models, options, file
        contents), JSON-friendly: resume refuses to mix results of runs whose fingerprints differ."""
        return {"runner": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Called once at the end; must not leave child processes behind."""
