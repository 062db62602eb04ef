"""The HawkEars runner (runner side): a resident HawkEars worker per rank, or one CLI call per chunk.

``mode="resident"`` (default) starts ``resident.py`` with the HawkEars environment's python
once per rank (in its own process group, GPU mask from the binding), waits for its hello (models
loaded), then sends one JSON request per chunk and waits for the reply with ``poll()`` and the
attempt's timeout. A timeout, crash, EOF or CUDA OOM kills the worker's whole process group; the
worker is started again lazily before the next attempt. ``mode="cli"`` runs
``hawkears analyze INPUT -o SCRATCH --rtype csv ...`` per chunk: the baseline.

Both modes run with the data root as current directory and a generated ``-c`` YAML that gives
HawkEars absolute paths (merged with ``--hawkears-config``), so they score identically: the
resident worker's ``scores.csv`` is byte-for-byte the CLI's. Success is judged from the outputs.

This module owns the runner's life: start, attempts (one or a batch), the resident worker's
(re)starts, interrupt and close. Around it: the environment, low-band choice, ``-c`` YAML and version
query in ``startup.py``; the worker's process (start, deadline line I/O, stderr pump, group kill) in
``process.py``; requests and replies in ``exchange.py``; the chunks prepared ahead in ``ahead.py``;
the CLI mode's attempt in ``cli_mode.py``; what the runner tells about itself in ``facts.py``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from badc_mpi.errors import RunnerSetupError
from badc_mpi.logs import get_logger
from badc_mpi.records import EXIT, INPUT, Binding, Chunk
from badc_mpi.runners.base import AttemptResult, Runner, Task
from badc_mpi.runners.hawkears import env as hawkears_env
from badc_mpi.runners.hawkears import facts, startup
from badc_mpi.runners.hawkears.ahead import Ahead, Prepared, discard
from badc_mpi.runners.hawkears.cli_mode import TAIL_CHARS, cli_argv, fail, run_cli_attempt
from badc_mpi.runners.hawkears.exchange import Item, run_exchange
from badc_mpi.runners.hawkears.options import (
    HawkearsOptions,
    analyze_argv,
    chunk_options,
    resolve_location,
    worker_argv,
)
from badc_mpi.runners.hawkears.process import WorkerProcess, spawn_worker
from badc_mpi.runners.process import signal_group
from badc_mpi.runners.slicing import SliceError

log = get_logger(__name__)

WORKER_SCRIPT = Path(__file__).resolve().with_name("resident.py")
_STDERR_LINES = 300
QUIT_WAIT_S = 5.0  #: at the end of a run, how long the worker may take to quit before its group is killed


def build_hawkears_runner(options: HawkearsOptions | argparse.Namespace | None = None) -> HawkearsRunner:
    """A runner with its python and data root resolved (RunnerSetupError, with the fix, if absent)."""
    if options is None:
        options = HawkearsOptions()
    elif isinstance(options, argparse.Namespace):
        options = HawkearsOptions.from_namespace(options)
    options = options.validate()
    python = options.python or hawkears_env.find_hawkears_python(os.environ)
    if not os.access(python, os.X_OK):
        raise RunnerSetupError(f"--hawkears-python {python} is not executable", fix=hawkears_env.FIX_ENV)
    data_root = hawkears_env.resolve_data_root(options.data_root, os.environ, python=python, allow_tiny=options.allow_tiny_model)
    return HawkearsRunner(options, python=python, data_root=data_root)


class HawkearsRunner(Runner):
    """HawkEars 2.x on one rank: resident worker (default) or one CLI process per chunk."""

    name = "hawkears"
    #: the resident process's figures: the same for every attempt until it is restarted
    static_metrics = frozenset({"worker_pid", "worker_starts", "device", "load_s", "batch_max_score_diff"})

    def __init__(self, options: HawkearsOptions, *, python: str, data_root: hawkears_env.DataRoot) -> None:
        self.options = options
        self.python = python
        self.data_root = data_root
        self.hawkears_version: str | None = None
        self.worker_starts = 0
        self._binding: Binding | None = None
        self._env: dict[str, str] = dict(os.environ)
        self._tmp: str | None = None
        self._cfg_path: str | None = None
        self._low_band = options.low_band
        self._worker: WorkerProcess | None = None
        self._starting: WorkerProcess | None = None  #: a worker not yet ready (loading models)
        self._stopping = False  #: set by interrupt()/close(): start nothing more
        self._guard = threading.Lock()  #: between the attempt thread and interrupt()/close()
        self._cli_pid: int | None = None
        self._ring: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._log_path: str | None = None
        self._next_id = 0
        self._write_lock = threading.Lock()
        self._ahead = Ahead(self._announce)

    @property
    def batch_size(self) -> int:
        """Chunks per :meth:`run_batch` (``--hawkears-batch``; 1 in CLI mode)."""
        return self.options.batch if self.options.mode == "resident" else 1

    @property
    def pipeline(self) -> bool:
        """Whether the next chunks are prepared while one is scored, and outputs finalised apart."""
        return self.options.pipeline and self.options.mode == "resident"

    # ----------------------------------------------------------------- set-up
    def start(self, binding: Binding) -> None:
        self._binding = binding
        self._env = startup.runner_env(binding, self.options)
        self._low_band = startup.low_band_choice(self.options, self.data_root, binding)
        if self.options.log_dir:
            os.makedirs(self.options.log_dir, exist_ok=True)
            self._log_path = os.path.join(self.options.log_dir, f"hawkears-rank{binding.rank}.log")
        if self.data_root.is_tiny:
            log.warning("%s", hawkears_env.tiny_banner(self.data_root))
        log.info(
            "HawkEars %s mode, data root %s (%s), models %s",
            self.options.mode,
            self.data_root.path,
            self.data_root.source,
            self.data_root.model_version,
        )
        self._tmp = tempfile.mkdtemp(prefix=f"badc-hawkears-r{binding.rank}-")
        try:
            self._cfg_path = startup.write_config(
                self._tmp, self.options, self.data_root, python=self.python, worker_script=str(WORKER_SCRIPT), env=self._env
            )
            if self.options.mode == "resident":
                error = self._start_worker()
                if error and self._stopping:
                    log.info("HawkEars worker start interrupted: the run is stopping")
                elif error:
                    raise RunnerSetupError(
                        f"the resident HawkEars worker did not start: {error}", fix=startup.start_fix(self._log_path)
                    )
                elif self._worker is not None:  # started: its hello names the device
                    facts.check_device(str(self._worker.hello.get("device") or "?"), binding)
            else:
                self.hawkears_version = startup.query_version(self.python, self._env)
        except BaseException:
            self._cleanup_tmp()
            raise

    # ------------------------------------------------------------- arguments
    def worker_options(self) -> list[str]:
        """Start options of the resident worker (also its telemetry description)."""
        return worker_argv(self.options, self.data_root.path, str(self._cfg_path), self._low_band)

    def _cli_argv(self, input_path: str, out_dir: str, chunk_opts: dict[str, Any]) -> list[str]:
        analyze = analyze_argv(self.options, str(self._cfg_path), self._low_band, input_path, out_dir, chunk_opts)
        return cli_argv(self.python, analyze)

    def command(self, chunk: Chunk, scratch_dir: str = "") -> list[str]:
        opts = chunk_options(chunk)[0]
        if self.options.mode == "cli":
            return self._cli_argv(chunk.input_path, scratch_dir, opts)
        extra = [f"{k}={v}" for k, v in sorted(opts.items())]
        return [
            "<resident>",
            self.python,
            str(WORKER_SCRIPT),
            *self.worker_options(),
            f"input={chunk.input_path}",
            f"output_dir={scratch_dir}",
            *extra,
        ]

    # ------------------------------------------------------------------ runs
    def run(self, task: Task) -> AttemptResult:
        return self.run_batch([task])[0]

    def run_batch(self, tasks: list[Task]) -> list[AttemptResult]:
        """Attempts of up to :attr:`batch_size` chunks: several go to the resident process as one
        batch (one forward pass per model over their windows); each ends on its own."""
        results: list[AttemptResult] = []
        todo: list[tuple[Task, dict[str, Any], AttemptResult, Prepared]] = []
        for task in tasks:
            chunk = task.chunk
            result = AttemptResult(
                ok=False,
                command=self.command(chunk, task.scratch_dir),
                raw_format="scores2",
                model_version=self.data_root.model_version,
                hawkears_version=self.hawkears_version,
            )
            results.append(result)
            opts, bad = chunk_options(chunk)
            if bad:
                fail(result, INPUT, bad)
                continue
            if not os.path.isfile(chunk.input_path):
                fail(result, INPUT, f"input file not found: {chunk.input_path}")
                continue
            os.makedirs(task.scratch_dir, exist_ok=True)
            try:  # a virtual chunk's samples, cut from its recording (ahead of time when pipelined)
                prepared = self._ahead.take(chunk, os.path.join(task.scratch_dir, "slice"))
            except SliceError as exc:
                fail(result, INPUT, str(exc))
                continue
            if prepared.cut is not None:
                task = dataclasses.replace(task, chunk=prepared.chunk)
                result.metrics.update(slice_read_s=round(prepared.cut.read_s, 4), slice_frames=prepared.cut.frames)
            todo.append((task, opts, result, prepared))
        try:
            if self.options.mode == "cli":
                for task, opts, result, _ in todo:
                    self._run_cli(task, opts, result)
            elif todo:
                self._run_resident([(task, opts, result) for task, opts, result, _ in todo])
        finally:
            for *_, prepared in todo:
                discard(prepared)
        return results

    def prefetch(self, chunks: list[Chunk], folder: str) -> None:
        """Chunks this rank scores next: cut their slices (under ``folder``) and have their audio decoded now."""
        if self.pipeline:
            self._ahead.prepare(chunks, folder)

    def _announce(self, path: str) -> None:
        worker = self._worker
        if worker is not None:
            self._send(worker, (json.dumps({"op": "prefetch", "input": path}) + "\n").encode())

    def _send(self, worker: WorkerProcess, data: bytes) -> None:
        assert worker.proc.stdin is not None
        with self._write_lock:  # requests (attempt thread) and announcements (ahead thread)
            worker.proc.stdin.write(data)
            worker.proc.stdin.flush()

    def _run_resident(self, todo: list[tuple[Task, dict[str, Any], AttemptResult]]) -> None:
        if self._worker is None:
            error = self._start_worker()
            if error:
                for *_, result in todo:
                    fail(result, EXIT, f"the resident HawkEars worker did not restart: {error}")
                return
        worker = self._worker
        assert worker is not None
        items = []
        for task, opts, result in todo:
            result.pid = worker.proc.pid
            result.hawkears_version = self.hawkears_version
            self._next_id += 1
            place = dict(zip(("region", "lat", "lon", "date"), resolve_location(self.options, opts), strict=True))
            request = {"id": self._next_id, "input": task.chunk.input_path, "output_dir": task.scratch_dir, "options": place}
            items.append(Item(request, result, task.scratch_dir, task.timeout_s))
        done = run_exchange(worker, items, lambda data: self._send(worker, data), self._base_metrics(worker), self.stderr_tail)
        if done.discard:
            self._discard_worker()

    def _run_cli(self, task: Task, opts: dict[str, Any], result: AttemptResult) -> AttemptResult:
        assert self._tmp is not None
        argv = self._cli_argv(task.chunk.input_path, task.scratch_dir, opts)
        result.metrics.update(worker_starts=self.worker_starts)

        def running(pid: int | None) -> None:
            with self._guard:
                self._cli_pid = pid
                stopping = self._stopping
            if pid and stopping:  # interrupt() came between the start and now
                signal_group(pid)

        if self._stopping:
            return fail(result, EXIT, "not started: the run is stopping")

        return run_cli_attempt(
            argv,
            task,
            result,
            cwd=self.data_root.path,
            env=self._env,
            log_path=os.path.join(self._tmp, "cli-attempt.log"),
            running=running,
        )

    # --------------------------------------------------------- worker process
    def _start_worker(self) -> str | None:
        """Start the resident worker and wait for its hello; an error message on failure."""
        argv = [self.python, str(WORKER_SCRIPT), *self.worker_options(), "--parent-pid", str(os.getpid())]
        if self.worker_starts:
            self._ring.append(f"--- restarting the HawkEars worker (start {self.worker_starts + 1}) ---")
        with self._guard:  # interrupt() either sees this worker as starting, or stops it being started
            if self._stopping:
                return "not started: the run is stopping"
            try:
                worker = spawn_worker(argv, cwd=self.data_root.path, env=self._env, ring=self._ring, log_path=self._log_path)
            except OSError as exc:
                return f"cannot run {self.python}: {exc}"
            self._starting = worker
        proc = worker.proc
        self.worker_starts += 1
        begin = time.monotonic()
        error = worker.await_hello(self.options.start_timeout_s)  # interrupt()/close() end this wait at once
        with self._guard:
            self._starting = None
            stopping = self._stopping
            if not error and not stopping:
                self._worker = worker
        if stopping:
            worker.kill(grace_s=0)
            return "not started: the run is stopping"
        if error:
            return f"{error}\n{self.stderr_tail()}"
        hello = worker.hello
        self.hawkears_version = hello.get("hawkears_version")
        log.info(
            "HawkEars worker pid %d ready in %.1f s (%s, models %s, low-band %s, start %d)",
            proc.pid,
            time.monotonic() - begin,
            hello.get("device"),
            hello.get("models"),
            hello.get("low_band_models") or "off",
            self.worker_starts,
        )
        return None

    def _discard_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill()

    def _base_metrics(self, worker: WorkerProcess) -> dict[str, Any]:
        return {
            "worker_pid": worker.proc.pid,
            "worker_starts": self.worker_starts,
            "device": worker.hello.get("device"),
            "load_s": worker.hello.get("load_s"),
        }

    def stderr_tail(self, lines: int = 40) -> str:
        """The last lines the HawkEars worker wrote to stderr (for failure reasons)."""
        return "\n".join(list(self._ring)[-lines:])[-TAIL_CHARS:]

    # ---------------------------------------------------------------- queries
    def class_labels(self) -> tuple[dict[str, str], dict[str, str]] | None:
        """From the data root's taxonomy: whatever ``--label`` form HawkEars wrote, canonical
        detections get both the class code and the common name."""
        from badc_mpi.storage.detections import load_class_labels

        return load_class_labels(os.path.join(self.data_root.path, "data"))

    def active_pids(self) -> list[int]:
        worker, cli_pid = self._worker, self._cli_pid
        pids = [worker.proc.pid] if worker is not None and worker.proc.poll() is None else []
        return pids + ([cli_pid] if cli_pid else [])

    def interrupt(self) -> None:
        """From another thread (the run stops): kill what runs now (a worker still loading models
        included) and start nothing more; run() then returns a failure, a start an error."""
        with self._guard:
            self._stopping = True
            running = [w for w in (self._worker, self._starting) if w is not None]
            cli_pid = self._cli_pid
        for worker in running:
            signal_group(worker.proc.pid)  # the thread waiting on it reaps it
        if cli_pid:
            signal_group(cli_pid)

    def describe(self) -> dict[str, Any]:
        return facts.describe(self, str(WORKER_SCRIPT))

    def fingerprint(self) -> dict[str, Any]:
        """HawkEars' version, the models' checkpoint hashes, and every option that changes detections
        (not the mode, threads or logs: the resident process and the CLI give the same output)."""
        return facts.fingerprint(self, self.hawkears_version or startup.query_version(self.python, self._env))

    def close(self) -> None:
        """End the worker's whole process group: politely (quit, then SIGTERM, SIGKILL) at the end
        of a run, at once after :meth:`interrupt`. A worker still loading models is killed."""
        with self._guard:
            interrupted, self._stopping = self._stopping, True
            worker, self._worker = self._worker, None
            starting = self._starting
        if starting is not None:
            signal_group(starting.proc.pid)  # its starting thread reaps it
        if worker is not None:
            if not interrupted:
                try:
                    assert worker.proc.stdin is not None
                    worker.proc.stdin.write(b'{"op": "quit"}\n')
                    worker.proc.stdin.close()
                    worker.proc.wait(timeout=QUIT_WAIT_S)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    pass
            worker.kill(grace_s=0.0, reap_s=2.0) if interrupted else worker.kill(grace_s=2.0)
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        self._ahead.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
