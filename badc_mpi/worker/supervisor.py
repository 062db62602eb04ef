"""The attempt supervisor: runs a rank's attempts through its runner, watches them, finalises outputs.

The supervisor never touches MPI (the rank's loop does). It owns one runner and one thread that
runs attempts one after another; the loop hands it tasks (:meth:`Supervisor.submit`) and collects
events (:meth:`Supervisor.drain_events`) without blocking. The stub runner needs no thread: its
simulated attempts complete by deadline, checked on each :meth:`drain_events`.

An attempt counts as a success only when the runner says so *and* its outputs are valid and
durable: raw CSV parsed, final files fsynced and renamed into place (:mod:`badc_mpi.worker.finisher`,
on its own thread for a pipelined runner). The events sent to rank 0 are encoded by
:mod:`badc_mpi.worker.events`. This module owns the attempt thread, the queue of tasks, batches,
each attempt's scratch folder, the stub runner's inline path and the window of chunks to hold.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import threading
import time
import traceback
from typing import Any

from badc_mpi.errors import BadcError, RunnerSetupError
from badc_mpi.inputs.sources import input_problem
from badc_mpi.logs import get_logger
from badc_mpi.records import INPUT, OUTPUT, Binding
from badc_mpi.runners.base import AttemptResult, Runner, Task
from badc_mpi.storage import outputs as outputs_mod
from badc_mpi.storage import store
from badc_mpi.storage.figures import fs_reason
from badc_mpi.storage.store import PER_CHUNK, STORE
from badc_mpi.transport.messages import ResultEvent, StartEvent, WireTask, WorkerConfig, WorkerEvent
from badc_mpi.worker.events import Events
from badc_mpi.worker.finisher import Finisher

log = get_logger(__name__)

FAST_ATTEMPT_S = 0.005  #: attempts shorter than this (on average) are latency-bound
MAX_WINDOW = 8  #: never more than this many chunks in flight per worker
CLOSE_WAIT_S = 5.0  #: on close, how long the interrupted attempt may take to end


class Supervisor:
    """One rank's attempt supervisor. Thread-safe between the rank's loop and the attempt thread."""

    def __init__(self, config: WorkerConfig, binding: Binding, runner: Runner, sampler: Any = None) -> None:
        self.config = config
        self.binding = binding
        self.runner = runner
        self.sampler = sampler  # badc_mpi.gpu.binding.GpuSampler or None
        self._inline = bool(getattr(runner, "inline", False))
        self._tasks: queue.Queue[WireTask | None] = queue.Queue()
        self._event_maker = Events(config, binding, runner)
        self._events = self._event_maker.pending  #: for the loop, in order
        self._queued = 0
        self._running = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.ready = False
        self.fatal: str | None = None
        self.fatal_exc: BaseException | None = None
        self._inline_queue: collections.deque[WireTask] = collections.deque()
        self._inline_current: tuple[WireTask, float, float] | None = None
        self.attempts_done = 0
        self._mean_runtime_s = 1.0
        self._attempts_started = 0
        self._leftovers = outputs_mod.Leftovers()
        #: a pipelined runner prepares the next chunks while one is scored; outputs are finalised
        #: on the finisher thread. ``batch_size`` chunks go to the runner at once.
        self._pipelined = runner.pipeline and not self._inline
        self._batch = max(1, runner.batch_size)
        self._finisher = Finisher(config, runner, self._result_event)

    # -- the loop's side ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the runner (in the worker thread, so a slow model load never stalls rank 0)."""
        if self.binding.problem:  # given GPUs it cannot use: never a silent CPU run
            error = RunnerSetupError(
                self.binding.problem, fix="fix the GPU (driver, NVML) on that node, or pass --allow-cpu to run on the CPU"
            )
            self.fatal_exc, self.fatal = error, f"RunnerSetupError: {error}"
            log.error("this rank cannot work: %s", error)
            return
        if self._inline:
            self.runner.start(self.binding)
            self._event_maker.announce(self._event_maker.ready_facts(), time.time())
            self.ready = True
            return
        self._thread = threading.Thread(target=self._thread_main, name="badc-worker", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> int:
        with self._lock:
            if self._inline:
                return len(self._inline_queue) + (1 if self._inline_current else 0)
            return self._queued + self._running

    def submit(self, tasks: list[WireTask]) -> None:
        if self._inline:
            self._inline_queue.extend(tasks)
            return
        with self._lock:
            self._queued += len(tasks)
        for task in tasks:
            self._tasks.put(task)

    def drain_events(self, now: float | None = None) -> list[WorkerEvent | StartEvent | ResultEvent]:
        if self._inline:
            self._advance_inline(time.time() if now is None else now)
        out = []
        while True:
            try:
                out.append(self._events.popleft())
            except IndexError:
                return out

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Interrupt the runner (what runs now is killed, a model load included), stop the thread
        and close the runner. Waits at most ``timeout_s`` for the thread: a stopping run must fit
        SLURM's KillWait, and the thread is a daemon."""
        if self._thread is not None:
            # drop queued tasks: on close the loop is done with them (final or interrupted)
            try:
                while True:
                    self._tasks.get_nowait()
            except queue.Empty:
                pass
            self._tasks.put(None)
            self.runner_interrupt()
            deadline = time.monotonic() + max(0.0, timeout_s)
            self._thread.join(timeout=max(0.0, timeout_s))
            if self._thread.is_alive():
                log.warning("the %s runner's attempt did not end within %.0f s of the stop", self.runner.name, timeout_s)
            if self._finisher.threaded:  # results already in hand are finalised (and reported) first
                self._finisher.stop(timeout_s=max(0.1, deadline - time.monotonic()))
        try:
            self.runner.close()
        except Exception:  # noqa: BLE001 - closing must not mask the run's outcome
            log.exception("closing the %s runner failed", self.runner.name)
        self._remove_scratch()

    def runner_interrupt(self) -> None:
        interrupt = getattr(self.runner, "interrupt", None)
        if interrupt is not None:
            interrupt()

    # -- stub (inline) path ----------------------------------------------------------------
    def _advance_inline(self, now: float) -> None:
        while True:
            if self._inline_current is None:
                if not self._inline_queue:
                    return
                task = self._inline_queue.popleft()
                duration_s = getattr(self.runner, "duration_s")  # noqa: B009 - inline runners (the stub) have it
                duration = float(duration_s(task.chunk))
                self._inline_current = (task, now, now + duration)
                self._events.append(self._start_event(task, now, self.runner.command(task.chunk)))
            task, started, due = self._inline_current
            if due > now:
                return
            result = self.runner.run(self._runner_task(task, scratch=""))
            self._inline_current = None
            self._events.append(self._result_event(task, result, started, due, {}, {}, *self._synthetic(task)))

    def _synthetic(self, task: WireTask) -> tuple[int | None, str, str]:
        """``--stub-detections``: (count, store line, versions) of made-up detections, or nothing."""
        rows = getattr(self.runner, "synthetic_detections", lambda _c: None)(task.chunk)
        if rows is None or self.config.layout != STORE:
            return None, "", ""
        labels, confidences, starts, ends = rows
        versions = store.versions_id(None, "dry-run")
        nones: list[str | None] = [None] * len(labels)
        line = store.chunk_line(task.chunk, self.config.run_id, versions, labels, nones, nones, confidences, starts, ends)
        return len(labels), line, versions

    # -- threaded path ----------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            self.runner.start(self.binding)
            self._event_maker.announce(self._event_maker.ready_facts(), time.time())
            self.ready = True
            if self._pipelined:
                self._finisher.start_thread(self._events.append, self._finisher_failed)
            while True:
                tasks = self._take_batch()
                if not tasks:
                    return
                try:
                    self._attempts(tasks)
                finally:
                    with self._lock:
                        self._running -= len(tasks)
        except BaseException as exc:  # noqa: BLE001 - reported to the loop, which aborts
            self.fatal_exc = exc  # set before ``fatal``: the loop reads fatal, then fatal_exc
            self.fatal = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, BadcError):
                log.error("this rank's runner cannot work: %s", exc)
            else:
                log.error("worker thread failed: %s\n%s", self.fatal, traceback.format_exc())

    def _scratch_for(self, task: WireTask) -> str:
        """A short, fresh folder per attempt (ids never enter the name: no ENAMETOOLONG here)."""
        self._attempts_started += 1
        return os.path.join(self.config.scratch_dir, f"a{self._attempts_started}")

    def _remove_scratch(self) -> None:
        """Remove this rank's scratch folder, then the run's folder if no other rank still uses it."""
        if not self.config.scratch_dir:
            return
        shutil.rmtree(self.config.scratch_dir, ignore_errors=True)
        try:
            os.rmdir(os.path.dirname(self.config.scratch_dir))
        except OSError:  # other ranks of this node still there, or already gone
            pass

    def _runner_task(self, task: WireTask, scratch: str) -> Task:
        return Task(task.chunk, task.attempt, scratch, task.timeout_s, self.config.run_id)

    def _take_batch(self) -> list[WireTask]:
        """The next task (waits for it) and, up to the runner's batch size, those queued behind it;
        empty when the supervisor closes."""
        tasks: list[WireTask] = []
        task = self._tasks.get()
        while task is not None:
            tasks.append(task)
            if len(tasks) >= self._batch:
                break
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
        else:
            self._tasks.put(None)  # keep the close mark for the next take (the batch so far still runs)
        with self._lock:
            self._queued -= len(tasks)
            self._running += len(tasks)
        return tasks

    def _upcoming(self) -> list[Any]:
        """The chunks queued behind the running ones (the runner prepares them meanwhile)."""
        with self._tasks.mutex:
            return [t.chunk for t in list(self._tasks.queue)[: self._batch] if t is not None]

    def _attempts(self, tasks: list[WireTask]) -> None:
        """Run ``tasks`` (one, or a batch) through the runner; their outputs are finalised here, or
        on the finisher thread when pipelined (the next chunks are scored meanwhile)."""
        ready: list[tuple[WireTask, str, float]] = []
        for task in tasks:
            began = self._begin(task)
            if isinstance(began, ResultEvent):
                self._events.append(began)
            else:
                ready.append((task, began, time.time()))
        if not ready:
            return
        if self._pipelined:
            self.runner.prefetch(self._upcoming(), os.path.join(self.config.scratch_dir, "ahead"))
        if self.sampler is not None:
            self.sampler.begin(self.runner.active_pids)
        try:
            results = self.runner.run_batch([self._runner_task(task, scratch) for task, scratch, _ in ready])
        finally:
            gpu = self.sampler.end() if self.sampler is not None else {}
        finished = time.time()
        for (task, scratch, started), result in zip(ready, results, strict=True):
            if self._finisher.threaded:
                self._finisher.put((task, result, started, finished, scratch, gpu))
            else:
                self._events.append(self._finisher.finish(task, result, started, finished, scratch, gpu))

    def _finisher_failed(self, exc: BaseException) -> None:
        """A bug on the finisher thread: reported to the loop, which aborts."""
        self.fatal_exc = exc  # set before ``fatal``: the loop reads fatal, then fatal_exc
        self.fatal = f"{type(exc).__name__}: {exc}"

    def _begin(self, task: WireTask) -> str | ResultEvent:
        """The attempt's fresh scratch folder (its start event sent), or the event of an attempt
        that failed before the runner saw it (a missing input, a file-system error)."""
        chunk = task.chunk
        started = time.time()
        problem = input_problem(chunk.input_path)
        if problem is not None:
            self._events.append(self._start_event(task, started, []))
            result = AttemptResult(ok=False, failure_class=INPUT, reason=problem)
            return self._result_event(task, result, started, time.time(), {}, {}, None)
        scratch = self._scratch_for(task)
        try:
            shutil.rmtree(scratch, ignore_errors=True)
            os.makedirs(scratch, exist_ok=True)
            if self.config.layout == PER_CHUNK:
                self._leftovers.remove(self.config.output_dir, chunk.recording_id, chunk.chunk_id)
        except OSError as exc:  # full disk, quota, read-only, name too long: this attempt fails, not the job
            self._events.append(self._start_event(task, started, []))
            result = AttemptResult(ok=False, failure_class=OUTPUT, reason=fs_reason(exc, "preparing the attempt"))
            return self._result_event(task, result, started, time.time(), {}, {}, None)
        command = self.runner.command(chunk, scratch)
        self._events.append(self._start_event(task, started, list(command)))
        return scratch

    def _start_event(self, task: WireTask, started: float, command: list[str]) -> StartEvent:
        return self._event_maker.start(task, started, command)

    def _result_event(
        self,
        task: WireTask,
        result: AttemptResult,
        started: float,
        finished: float,
        outputs: dict[str, str],
        gpu: dict[str, Any],
        detections: int | None,
        record: str = "",
        versions: str = "",
    ) -> ResultEvent:
        """The attempt's result event (:meth:`Events.result`); its runtime counts towards :meth:`window`."""
        ev = self._event_maker.result(task, result, started, finished, outputs, gpu, detections, record, versions)
        self._note_runtime(finished - started)
        return ev

    def _note_runtime(self, runtime_s: float) -> None:
        self.attempts_done += 1
        self._mean_runtime_s += (runtime_s - self._mean_runtime_s) * 0.2

    def window(self) -> int:
        """Chunks this worker should hold (queued + running): ``capacity``, about 2; with a batching
        runner, a batch running and (pipelined) the next one queued.

        Only when attempts are far shorter than a coordinator round trip (dry runs, trivially
        short chunks) does it widen, up to 4x and at most 8: then nothing can be hoarded that
        matters, and a window of 2 would leave the worker idle most of the time.
        """
        cap = max(self.config.capacity, self._batch * (2 if self._pipelined else 1))  # a batch running, the next queued
        if self.attempts_done >= 8 and self._mean_runtime_s < FAST_ATTEMPT_S:
            return max(cap, min(MAX_WINDOW, 4 * cap))
        return cap
