"""Rank 0's run: prepare (manifests, guard, runner), dispatch, record, summarise, stop.

Rank 0 is the only writer of telemetry and summaries. It also works on chunks with its own
worker (a thread), so N ranks on N GPUs leave no GPU idle. This module owns the loop: ranks heard,
chunks dealt out, ranks set aside. What it delegates: the bookkeeping to the scheduler
(``scheduler.py``), every write to the recorder (``recorder.py``), the grace period after a stop
signal to ``stopping.py``, the exit code and end-of-run report to ``outcome.py``.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from badc_mpi.coordinator.health import Health
from badc_mpi.coordinator.outcome import RunOutcome, exit_state, report_outcome
from badc_mpi.coordinator.planning import RunPlan, prepare_plan
from badc_mpi.coordinator.progress import Progress
from badc_mpi.coordinator.ranks import GOODBYE_WAIT_S, RemoteWorkers
from badc_mpi.coordinator.recorder import Recorder
from badc_mpi.coordinator.scheduler import BackoffPolicy, Scheduler
from badc_mpi.coordinator.stopping import STOP_WAIT_S, Drain, StopSignals
from badc_mpi.errors import BadcError, RunnerSetupError
from badc_mpi.gpu.binding import sharing_warnings
from badc_mpi.gpu.report import format_binding_table
from badc_mpi.logs import get_logger
from badc_mpi.options import RunOptions
from badc_mpi.records import LOST, Binding
from badc_mpi.storage import lock as lock_mod
from badc_mpi.storage import telemetry as tel
from badc_mpi.storage.summary import WorkerStats
from badc_mpi.transport.mailbox import Backoff, Mailbox
from badc_mpi.transport.messages import (
    TAG_ASSIGN,
    TAG_FATAL,
    TAG_REPORT,
    TAG_SETUP,
    Assign,
    ResultEvent,
    Setup,
    StartEvent,
    WireTask,
    WorkerEvent,
)
from badc_mpi.worker.start import rank_config, start_worker
from badc_mpi.worker.supervisor import Supervisor

log = get_logger(__name__)


class Coordinator:
    """Rank 0's run: the single writer of telemetry, ledger and summaries, and a worker too."""

    def __init__(self, comm: Any, manifests: list[str], options: RunOptions, binding: Binding) -> None:
        self.comm = comm
        self.options = options
        self.binding = binding
        self.manifest_paths = [os.path.abspath(p) for p in manifests]
        self.box = Mailbox(comm)
        self.remote = RemoteWorkers(comm, self.box)
        self.run_id = f"{tel.utc_stamp(time.time())}-{uuid.uuid4().hex[:8]}"
        self.workers: dict[int, WorkerStats] = {}
        self.local: Supervisor | None = None
        self.local_credit = 0
        self.signals = StopSignals()
        self.fatal: str | None = None  #: no rank could even start its runner: exit 2
        self.stopped: str | None = None  #: no rank is left to work (set aside at run time): exit 75
        self.dead: dict[int, str] = {}  #: ranks that get no more work: rank -> why
        self.lost: set[int] = set()  #: ranks that may not answer any more (silent, stuck, never joined)
        self.health = Health(
            options.quarantine_after, options.silent_after_s, options.deadline_margin_s, options.startup_timeout_s
        )
        self._next_health_check = 0.0
        self.plan: RunPlan | None = None
        self.scheduler: Scheduler | None = None
        self.recorder: Recorder | None = None
        self.lock: lock_mod.OutputLock | None = None
        self.devices: dict[int, str] = {}  #: rank -> ``cuda`` | ``cpu`` (from the hellos)
        self.t0 = time.monotonic()

    # -- set-up ------------------------------------------------------------------------
    def _register(self, rank: int, pid: int, binding: Binding) -> None:
        label = binding.worker
        if any(w.worker == label for w in self.workers.values()):  # e.g. ranks narrowed to one device
            label = f"{label}#r{rank}"
        self.workers[rank] = WorkerStats(
            label, binding.host, rank, binding.gpu_uuid or "cpu", binding.gpu_index, binding.gpu_name
        )

    def _early_message(self, src: int, tag: int, msg: Any) -> None:
        if tag == TAG_FATAL:
            self.dead[src] = f"rank {msg.rank} on {msg.host}: {msg.message}"

    def _worker_lost(self, rank: int, why: str) -> None:
        """A rank's runner cannot work (e.g. HawkEars fails to start there)."""
        self._set_aside(rank, "failed", why)

    def _set_aside(self, rank: int, status: str, why: str) -> None:
        """No more work for ``rank`` (its runner ``failed``, ``quarantined``, or ``lost``): its chunks
        go back to the queue; the run goes on with the others and stops when none is left."""
        if rank in self.dead:
            return
        self.dead[rank] = why
        stats = self.workers[rank]
        stats.status, stats.note = status, why
        if status == "lost":
            self.lost.add(rank)
        if rank == 0:
            self.local_credit = 0
        else:
            self.remote.credit[rank] = 0
        back = self.scheduler.release(stats.worker) if self.scheduler is not None else []
        self.health.forget_rank(rank)
        alive = self.comm.Get_size() - len(self.dead)
        tail = f"continuing on the other {alive} rank(s); {len(back)} chunk(s) go back to the queue"
        log.error("%s %s: %s; %s", stats.worker, status, why, tail if alive else "no rank is left to work")
        if alive:
            return
        reasons = " | ".join(f"{self.workers[r].worker} {self.workers[r].status}: {self.dead[r]}" for r in sorted(self.dead))
        if all(self.workers[r].status == "failed" for r in self.dead):
            self.fatal = "no rank can work: " + reasons
        else:
            self.stopped = "no rank is left to work: " + reasons

    def prepare(self) -> None:
        """Everything that can fail on bad input, before any worker is set up."""
        self._register(0, os.getpid(), self.binding)
        backoff = Backoff(self.options.poll_max_s)
        # the ranks' hellos first: their bindings give the run's device kind (its fingerprint)
        missing = self.remote.collect_hellos(backoff, self._early_message, self.options.startup_timeout_s)
        self.devices = {0: self.binding.device_kind} | {r: h.binding.device_kind for r, h in self.remote.hellos.items()}
        try:
            self.plan = prepare_plan(self.manifest_paths, self.options, self.run_id, list(self.devices.values()))
            self.lock = lock_mod.acquire(self.plan.output_dir, self.run_id, force=self.options.force_unlock)
        except BadcError as exc:
            self.remote.stop_all(int(exc.exit_code), str(exc), lost=frozenset(missing))
            raise
        for rank, hello in sorted(self.remote.hellos.items()):
            self._register(rank, hello.pid, hello.binding)
        now = time.monotonic()
        for rank in sorted(self.remote.hellos):
            self.health.starting(rank, now)  # until its first message: --startup-timeout-s
        for rank in missing:
            self.workers[rank] = WorkerStats(f"rank{rank}", "?", rank, "?")
            self.workers[rank].status = "lost"
            self.lost.add(rank)
            self.dead[rank] = f"rank {rank} did not join within {self.options.startup_timeout_s:g} s"
        bindings = [self.binding] + [h.binding for _, h in sorted(self.remote.hellos.items())]
        log.info("binding table:\n%s", format_binding_table(bindings))
        bopts = self.options.binding_options()
        for warning in sharing_warnings(bindings, bopts):
            log.warning("%s", warning)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> RunOutcome:
        """Plan, work, finish; a stop signal at any point (planning included) drains the run."""
        self.signals.install()
        try:
            return self._run()
        finally:
            self.signals.restore()

    def _run(self) -> RunOutcome:
        self.prepare()
        plan = self.plan
        assert plan is not None
        scheduler = Scheduler(
            plan.chunks,
            max_retries=self.options.max_retries,
            policy=BackoffPolicy(self.options.backoff_s, self.options.backoff_max_s),
            seed=self.options.seed,
        )
        self.scheduler = scheduler
        for rank, why in list(self.dead.items()):  # ranks that could not even start, or never joined
            status = self.workers[rank].status if self.workers[rank].status != "ok" else "failed"
            self.dead.pop(rank)
            self._set_aside(rank, status, why)
        recorder = self.recorder = Recorder(plan, self.run_id, scheduler, self.workers, ranks=self.comm.Get_size())
        lock = self.lock
        assert lock is not None  # taken in prepare()
        if "+" in str((plan.meta.get("fingerprint") or {}).get("device") or ""):  # CPU and GPU ranks: each success says its own
            recorder.devices = dict(self.devices)
        if plan.resume_note:
            print(f"badc-mpi: {plan.resume_note}", flush=True)
        size = self.comm.Get_size()
        print(
            f"badc-mpi: run {self.run_id}: {scheduler.total} chunks on {size} rank{'s' if size > 1 else ''}; "
            f"telemetry {plan.telemetry_path}",
            flush=True,
        )
        who0 = tel.who(tel.worker_static(0, os.getpid(), self.binding))
        for index, chunk, reason in plan.unavailable:  # missing audio (--allow-missing): failed before dispatch
            recorder.failed_before_dispatch(index, chunk, reason, who0)
        for dest in range(1, self.comm.Get_size()):
            self.box.send(dest, TAG_SETUP, Setup(self.run_id, plan.worker_config))
        self.local = start_worker(rank_config(plan.worker_config, self.binding), self.binding)
        progress = Progress(scheduler.total, interval_s=self.options.progress_interval_s)
        backoff = Backoff(self.options.poll_max_s)
        last_summary = time.monotonic()
        summary_every_s = self.options.summary_interval_s
        drain = Drain(self.signals, self.options.grace_s)
        while not scheduler.finished and self.fatal is None and self.stopped is None:
            if drain.over(scheduler):
                break
            now = time.time()
            progressed = self._pump_local(now)
            while True:
                got = self.box.poll(None)
                if got is None:
                    break
                progressed = True
                self._handle(*got)
            progressed |= self._dispatch(now)
            recorder.flush()
            if recorder.broken is not None and self.stopped is None:  # a write failed: stop in order
                self.stopped = recorder.broken
            lock.heartbeat()
            progressed |= self._check_health(time.monotonic())
            if time.monotonic() - last_summary >= summary_every_s:
                t0 = time.monotonic()
                recorder.write_summary("running")
                spent = time.monotonic() - t0
                summary_every_s = max(self.options.summary_interval_s, 20 * spent)
                last_summary = time.monotonic()
            counts = scheduler.counts()
            progress.update(scheduler.final_count, counts["failed"])
            if progressed:
                backoff.reset()
            else:
                backoff.sleep()
        progress.update(scheduler.final_count, scheduler.counts()["failed"], force=True)
        progress.close()
        return self.finish()

    def _pump_local(self, now: float) -> bool:
        local, plan = self.local, self.plan
        assert local is not None and plan is not None  # the run has started
        events = local.drain_events(now)
        if local.fatal and 0 not in self.dead:
            exc = local.fatal_exc
            if exc is not None and not isinstance(exc, BadcError):
                raise exc  # a bug, not a setup problem: the job aborts (never hangs)
            self._worker_lost(0, f"rank 0 on {self.binding.host}: {local.fatal}")
        if events:
            self._events(0, events)
        if local.ready and 0 not in self.dead:
            self.local_credit = max(0, plan.worker_config.capacity - local.busy)
        return bool(events)

    def _handle(self, src: int, tag: int, msg: Any) -> None:
        if src in self.lost:  # it spoke again, but its chunks were handed out: it stays aside
            return
        self.health.heard(src, time.monotonic())
        if tag == TAG_REPORT:
            log.debug("report from rank %d: %d event(s), want %d", src, len(msg.events), msg.want)
            self._events(src, msg.events)
            if src not in self.dead:
                self.remote.credit[src] = self.remote.credit.get(src, 0) + msg.want
        elif tag == TAG_FATAL:
            self._worker_lost(src, f"rank {msg.rank} on {msg.host}: {msg.message}")
        else:
            log.debug("ignoring message tag %s from rank %s", tag, src)

    def _tasks(self, n: int, rank: int, now: float, others_free: bool) -> list[WireTask]:
        assert self.scheduler is not None  # the run has started
        worker, mono = self.workers[rank].worker, time.monotonic()
        tasks = []
        for chunk, attempt in self.scheduler.take(n, worker, now, others_free=others_free):
            timeout_s = self.options.timeout_for(chunk.duration_s)
            self.health.sent(rank, chunk.key, timeout_s, mono)
            tasks.append(WireTask(chunk, attempt, timeout_s))
        return tasks

    def _dispatch(self, now: float) -> bool:
        scheduler, local = self.scheduler, self.local
        assert scheduler is not None and local is not None  # the run has started
        sent = False
        working = self.health.working([r for r in range(self.comm.Get_size()) if r not in self.dead])
        if self.local_credit and 0 in working and scheduler.has_ready(now):
            tasks = self._tasks(self.local_credit, 0, now, others_free=len(working - {0}) > 0)
            if tasks:
                local.submit(tasks)
                self.local_credit -= len(tasks)
                sent = True
        for rank, credit in self.remote.credit.items():
            if credit <= 0 or rank not in working or not scheduler.has_ready(now):
                continue
            tasks = self._tasks(credit, rank, now, others_free=len(working - {rank}) > 0)
            if tasks:
                log.debug("assign %d task(s) to rank %d", len(tasks), rank)
                self.box.send(rank, TAG_ASSIGN, Assign(tasks))
                self.remote.credit[rank] = credit - len(tasks)
                sent = True
        return sent

    def _check_health(self, mono: float) -> bool:
        """Once a second: chunks past their deadline, ranks gone silent. True if any was set aside."""
        if mono < self._next_health_check:
            return False
        self._next_health_check = mono + 1.0
        assert self.scheduler is not None and self.recorder is not None  # the run has started
        acted = False
        for rank, key in self.health.overdue(mono):
            state = self.scheduler.in_flight_state(key)
            worker = self.workers[rank].worker
            if state is None:  # no longer in flight (taken back): only the deadline is left
                self.health.ended(key, 0.0)
                continue
            timeout_s = self.options.timeout_for(state.chunk.duration_s)
            why = f"no result for {key} {self.options.deadline_margin_s:g} s past its {timeout_s:g} s timeout"
            decision = self.scheduler.finish(
                key, state.attempts, worker, ok=False, failure_class=LOST, reason=why, now=time.time()
            )
            self.health.ended(key, timeout_s)
            if decision.event != "stale":
                self.recorder.attempt_lost(rank, state.chunk, decision, state.attempts, why)
            self._set_aside(rank, "lost", f"stuck: {why}")
            acted = True
        for rank, why in self.health.silent(mono):
            self._set_aside(rank, "lost", why)
            acted = True
        return acted

    # -- events --------------------------------------------------------------------------
    def _events(self, rank: int, events: list[WorkerEvent | StartEvent | ResultEvent]) -> None:
        scheduler, recorder = self.scheduler, self.recorder
        assert scheduler is not None and recorder is not None
        for ev in events:
            if isinstance(ev, WorkerEvent):  # the worker's facts, before its next chunk line
                recorder.line(ev.line)
                continue
            chunk = scheduler.in_flight_chunk(ev.key)
            if chunk is None:  # not in flight (any more): a late or duplicate report
                if isinstance(ev, ResultEvent):
                    log.warning("ignoring a stale result for %s attempt %d from rank %d", ev.key, ev.attempt, rank)
                continue
            timeout_s = self.options.timeout_for(chunk.duration_s)
            if isinstance(ev, StartEvent):
                self.health.started(rank, ev.key, timeout_s, time.monotonic())
                recorder.line(ev.line)
                continue
            if ev.ok and ev.record and scheduler.is_current(ev.key, ev.attempt, self.workers[rank].worker):
                why = recorder.store_success(ev)
                if why is not None and self.stopped is None:  # the recorder logged it
                    self.stopped = why
            decision = scheduler.finish(
                ev.key,
                ev.attempt,
                self.workers[rank].worker,
                ok=ev.ok,
                failure_class=ev.failure_class,
                reason=ev.reason,
                runtime_s=ev.runtime_s,
                now=time.time(),
            )
            if decision.event == "stale":
                log.warning("ignoring a stale result for %s attempt %d from rank %d", ev.key, ev.attempt, rank)
                continue
            self.health.ended(ev.key, timeout_s)
            recorder.attempt_ended(
                rank,
                chunk,
                decision,
                ev.attempt,
                ev.failure_class,
                ev.reason,
                ev.runtime_s,
                ev.finished_at,
                ev.outputs,
            )
            backoff = decision.backoff_s if decision.event == "retry" else None
            recorder.line(tel.result_line(decision.event, backoff, ev.body))
            for blamed, why in self.health.attempt_ended(rank, ev.key, ev.ok, ev.failure_class, decision.event == "failure"):
                if blamed not in self.dead:
                    self._set_aside(blamed, "quarantined", why)

    # -- the end -------------------------------------------------------------------------
    def finish(self) -> RunOutcome:
        """The stop path's end (coordinator/stopping.py): every rank stops at once, the others told
        first; then the ledger, telemetry and summary are closed, the lock released, the report printed."""
        plan, scheduler, recorder, local, lock = self.plan, self.scheduler, self.recorder, self.local, self.lock
        assert plan is not None and scheduler is not None and recorder is not None  # the run has started
        assert local is not None and lock is not None
        signal = self.signals.received
        code, state = exit_state(self.fatal, signal, self.stopped, scheduler.counts()["failed"])
        stop_by = time.monotonic() + STOP_WAIT_S
        self.remote.send_stop(int(code), self.fatal or self.stopped or "", lost=frozenset(self.lost))
        local.close(timeout_s=STOP_WAIT_S)
        hurry = signal or self.stopped
        self.remote.await_goodbyes(max(1.0, stop_by - time.monotonic()) if hurry else GOODBYE_WAIT_S)
        recorder.close()
        if recorder.dropped:
            scheduler.reopen(recorder.dropped)
        if recorder.broken is not None and self.stopped is None:
            self.stopped = recorder.broken
            code, state = exit_state(self.fatal, signal, self.stopped, scheduler.counts()["failed"])
        counts = recorder.write_summary(state)
        lock.release()
        outcome = report_outcome(
            code,
            plan,
            {"run_id": self.run_id, "state": state, "counts": counts},
            self.workers.values(),
            scheduler.worst(),
            time.monotonic() - self.t0,
            lost_ranks=sorted(self.lost),
            stop_reason=f"interrupted by {signal}" if signal else self.stopped,
        )
        if self.fatal:
            error = RunnerSetupError(self.fatal, fix="see the log lines above; the summary and telemetry are kept")
            error.lost_ranks = sorted(self.lost)  # the CLI ends the job rather than wait for them
            raise error
        return outcome


__all__ = ["Coordinator", "RunOutcome"]
