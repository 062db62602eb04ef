"""Rank 0's run: prepare (manifests, guard, runner), dispatch, record, summarise, stop.

Rank 0 is the only writer of telemetry and summaries. It also works on chunks with its own
worker (a thread), so N ranks on N GPUs leave no GPU idle.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

from badc_mpi.coordinator.outcome import RunOutcome
from badc_mpi.coordinator.planning import RunPlan, prepare_plan
from badc_mpi.coordinator.progress import Progress
from badc_mpi.coordinator.ranks import GOODBYE_WAIT_S, RemoteWorkers
from badc_mpi.coordinator.scheduler import BackoffPolicy, Scheduler
from badc_mpi.coordinator.stopping import STOP_WAIT_S, install_stop_handlers, restore_handlers
from badc_mpi.errors import BadcError, ExitCode, RunnerSetupError
from badc_mpi.gpu.binding import sharing_warnings
from badc_mpi.gpu.report import format_binding_table
from badc_mpi.logs import get_logger
from badc_mpi.options import RunOptions
from badc_mpi.records import Binding
from badc_mpi.storage import ledger as ledger_mod
from badc_mpi.storage import lock as lock_mod
from badc_mpi.storage import summary as summary_mod
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
        self.interrupted: str | None = None
        self.fatal: str | None = None
        self.dead: dict[int, str] = {}  #: ranks whose runner cannot work: rank -> why
        self.plan: RunPlan | None = None
        self.coord: Scheduler | None = None
        self.writer: tel.TelemetryWriter | None = None
        self.ledger: ledger_mod.LedgerWriter | None = None
        self.fragments: dict[str, str] = {}  #: encoded summary entries of final chunks
        self._carried_json: list[tuple[str, str]] | None = None
        self.lock: lock_mod.OutputLock | None = None
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
        """A rank's runner cannot work (e.g. HawkEars fails to start there): carry on without it,
        taking back its chunks; only when no rank can work does the run stop (exit 2)."""
        self.dead[rank] = why
        if rank == 0:
            self.local_credit = 0
        else:
            self.remote.credit[rank] = 0
        back = self.coord.release(self.workers[rank].worker) if self.coord is not None else []
        alive = self.comm.Get_size() - len(self.dead)
        log.error(
            "%s; %s",
            why,
            f"continuing on the other {alive} rank(s); {len(back)} chunk(s) go back to the queue"
            if alive
            else "no rank is left to work",
        )
        if not alive:
            self.fatal = "no rank can work: " + " | ".join(self.dead[r] for r in sorted(self.dead))

    def prepare(self) -> None:
        """Everything that can fail on bad input, before any worker is set up."""
        self._register(0, os.getpid(), self.binding)
        backoff = Backoff(self.options.poll_max_s)
        try:
            self.plan = prepare_plan(self.manifest_paths, self.options, self.run_id)
            self.lock = lock_mod.acquire(self.plan.output_dir, self.run_id, force=self.options.force_unlock)
            self.remote.collect_hellos(backoff, self._early_message)
        except BadcError as exc:
            self.remote.collect_hellos(backoff, self._early_message)
            self.remote.stop_all(int(exc.exit_code), str(exc))
            raise
        for rank, hello in sorted(self.remote.hellos.items()):
            self._register(rank, hello.pid, hello.binding)
        bindings = [self.binding] + [h.binding for _, h in sorted(self.remote.hellos.items())]
        log.info("binding table:\n%s", format_binding_table(bindings))
        bopts = self.options.binding_options()
        for warning in sharing_warnings(bindings, bopts):
            log.warning("%s", warning)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> RunOutcome:
        """Plan, work, finish; a stop signal at any point (planning included) drains the run."""
        old_handlers = install_stop_handlers(self._on_stop_signal)
        try:
            return self._run()
        finally:
            restore_handlers(old_handlers)

    def _run(self) -> RunOutcome:
        self.prepare()
        plan = self.plan
        assert plan is not None
        coord = Scheduler(
            plan.chunks,
            max_retries=self.options.max_retries,
            policy=BackoffPolicy(self.options.backoff_s, self.options.backoff_max_s),
            seed=self.options.seed,
        )
        self.coord = coord
        for rank, why in list(self.dead.items()):  # ranks that could not even start
            self.dead.pop(rank)
            self._worker_lost(rank, why)
        self._remove_old_scratch(plan)
        self.writer = tel.TelemetryWriter(plan.telemetry_path)
        self.ledger = ledger_mod.LedgerWriter(
            plan.ledger_path,
            ledger_mod.header_record(self.run_id, plan.meta["manifests"], plan.output_dir, plan.meta["created_at"]),
        )
        if plan.resume_note:
            print(f"badc-mpi: {plan.resume_note}", flush=True)
        size = self.comm.Get_size()
        print(
            f"badc-mpi: run {self.run_id}: {coord.total} chunks on {size} rank{'s' if size > 1 else ''}; "
            f"telemetry {plan.telemetry_path}",
            flush=True,
        )
        static0 = tel.worker_static(0, os.getpid(), self.binding)
        for chunk, reason in plan.unavailable:  # missing audio (--allow-missing): failed before dispatch
            coord.mark_failed(chunk.key, "input", reason)
            at = tel.utc_iso(time.time())
            self.writer.write(
                tel.bare_record(self.run_id, "failure", static0, chunk, 0, failure_class="input", reason=reason, finished_at=at)
            )
            self.ledger.append(
                ledger_mod.entry_record(
                    chunk,
                    "failed",
                    run_id=self.run_id,
                    attempts=0,
                    failure_class="input",
                    reason=reason,
                    finished_at=at,
                    has_outputs=False,
                )
            )
        for dest in range(1, self.comm.Get_size()):
            self.box.send(dest, TAG_SETUP, Setup(self.run_id, plan.worker_config))
        self.local = start_worker(rank_config(plan.worker_config, self.binding), self.binding)
        progress = Progress(coord.total, interval_s=self.options.progress_interval_s)
        backoff = Backoff(self.options.poll_max_s)
        last_summary = time.monotonic()
        summary_every_s = self.options.summary_interval_s
        drain_since: float | None = None
        while not coord.finished and self.fatal is None:
            if self.interrupted and drain_since is None:
                log.warning(
                    "%s: stop dispatching; waiting up to %.0f s for %d chunks in flight",
                    self.interrupted,
                    self.options.grace_s,
                    coord.in_flight_count,
                )
                coord.drain()
                drain_since = time.monotonic()
            if drain_since is not None and time.monotonic() > drain_since + self.options.grace_s:  # 2nd signal: 0
                log.warning("grace period over: %d chunks still in flight are left for resume", coord.in_flight_count)
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
            self.writer.flush()
            self.ledger.flush()
            self.lock.heartbeat()  # type: ignore[union-attr]
            if time.monotonic() - last_summary >= summary_every_s:
                t0 = time.monotonic()
                self.write_summary("running")
                spent = time.monotonic() - t0
                summary_every_s = max(self.options.summary_interval_s, 20 * spent)
                last_summary = time.monotonic()
            counts = coord.counts()
            progress.update(coord.final_count, counts["failed"])
            if progressed:
                backoff.reset()
            else:
                backoff.sleep()
        progress.update(coord.final_count, coord.counts()["failed"], force=True)
        progress.close()
        return self.finish()

    def _pump_local(self, now: float) -> bool:
        local = self.local
        assert local is not None
        events = local.drain_events(now)
        if local.fatal and 0 not in self.dead:
            exc = local.fatal_exc
            if exc is not None and not isinstance(exc, BadcError):
                raise exc  # a bug, not a setup problem: the job aborts (never hangs)
            self._worker_lost(0, f"rank 0 on {self.binding.host}: {local.fatal}")
        if events:
            self._events(0, events)
        if local.ready and 0 not in self.dead:
            self.local_credit = max(0, self.plan.worker_config.capacity - local.busy)  # type: ignore[union-attr]
        return bool(events)

    def _handle(self, src: int, tag: int, msg: Any) -> None:
        if tag == TAG_REPORT:
            log.debug("report from rank %d: %d event(s), want %d", src, len(msg.events), msg.want)
            self._events(src, msg.events)
            if src not in self.dead:
                self.remote.credit[src] = self.remote.credit.get(src, 0) + msg.want
        elif tag == TAG_FATAL:
            self._worker_lost(src, f"rank {msg.rank} on {msg.host}: {msg.message}")
        else:
            log.debug("ignoring message tag %s from rank %s", tag, src)

    def _tasks(self, n: int, rank: int, now: float) -> list[WireTask]:
        return [
            WireTask(chunk, attempt, self.options.timeout_for(chunk.duration_s))
            for chunk, attempt in self.coord.take(n, self.workers[rank].worker, now)
        ]

    def _dispatch(self, now: float) -> bool:
        coord = self.coord
        sent = False
        if self.local_credit and coord.has_ready(now):
            tasks = self._tasks(self.local_credit, 0, now)
            if tasks:
                self.local.submit(tasks)  # type: ignore[union-attr]
                self.local_credit -= len(tasks)
                sent = True
        for rank, credit in self.remote.credit.items():
            if credit <= 0 or not coord.has_ready(now):
                continue
            tasks = self._tasks(credit, rank, now)
            if tasks:
                log.debug("assign %d task(s) to rank %d", len(tasks), rank)
                self.box.send(rank, TAG_ASSIGN, Assign(tasks))
                self.remote.credit[rank] = credit - len(tasks)
                sent = True
        return sent

    # -- events --------------------------------------------------------------------------
    def _events(self, rank: int, events: list[StartEvent | ResultEvent]) -> None:
        coord, writer = self.coord, self.writer
        for ev in events:
            state = coord.states.get(ev.key)
            if state is None:
                continue
            if isinstance(ev, StartEvent):
                writer.write_line(ev.line)  # type: ignore[union-attr]
                continue
            decision = coord.finish(
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
            stats = self.workers[rank]
            stats.attempts += 1
            stats.busy_s += ev.runtime_s
            if decision.event == "success":
                stats.success += 1
                stats.chunks += 1
                state.outputs = ev.outputs
                state.detections = ev.detections
            elif decision.event == "retry":
                stats.retries += 1
                stats.failed_attempts += 1
            else:
                stats.failure += 1
                stats.failed_attempts += 1
                stats.chunks += 1
            if decision.event != "retry":
                self.fragments[ev.key] = summary_mod.entry_json(state)
                self.ledger.append(
                    ledger_mod.entry_record(  # type: ignore[union-attr]
                        state.chunk,
                        "success" if decision.event == "success" else "failed",
                        run_id=self.run_id,
                        attempts=ev.attempt,
                        failure_class=ev.failure_class,
                        reason=ev.reason,
                        finished_at=tel.utc_iso(ev.finished_at),
                        has_outputs=bool(ev.outputs),
                    )
                )
            backoff = decision.backoff_s if decision.event == "retry" else None
            writer.write_line(tel.result_line(self.run_id, decision.event, backoff, ev.body))  # type: ignore[union-attr]

    def _remove_old_scratch(self, plan: RunPlan) -> None:
        """Scratch folders of earlier (killed) runs: safe to remove while we hold the lock."""
        import shutil

        base = os.path.join(plan.output_dir, ".badc-scratch")
        if not os.path.isdir(base) or self.options.scratch_dir:
            return
        for name in os.listdir(base):
            if name != self.run_id:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)

    # -- signals -----------------------------------------------------------------------
    def _on_stop_signal(self, name: str) -> None:
        if self.interrupted is None:
            self.interrupted = name
        else:  # a second signal: stop waiting for the grace period
            self.options = self.options.__class__(**{**self.options.__dict__, "grace_s": 0.0})

    # -- the end -------------------------------------------------------------------------
    def write_summary(self, state: str) -> dict[str, int]:
        """Snapshot the summary (and workers CSV, failed CSV); returns the counts."""
        plan = self.plan
        assert plan is not None
        if self._carried_json is None:
            from badc_mpi.coordinator.resume import carried_entry

            self._carried_json = [(k, summary_mod.dumps(carried_entry(v))) for k, v in plan.carried.items()]
        fragments = self.fragments
        pending, entry_json = summary_mod.pending_json, summary_mod.entry_json

        def entry(key: str, st: Any) -> str:
            text = fragments.get(key)
            if text is not None:
                return text
            return pending(st.chunk.sha256) if st.status == "pending" and not st.attempts else entry_json(st)

        entries = self._carried_json + [(key, entry(key, st)) for key, st in self.coord.states.items()]
        counts = summary_mod.summary_counts(self.coord.counts(), plan.carried_counts)
        text = summary_mod.render_summary(plan.meta, counts, self.workers.values(), entries, state=state, run_id=self.run_id)
        summary_mod.write_summary(str(plan.summary_path), text)
        summary_mod.write_workers_csv(str(plan.workers_csv), self.workers.values())
        if counts["failed"]:
            summary_mod.write_failed_csv(str(plan.failed_csv), self.coord.states.values(), plan.columns)
        return counts

    def finish(self) -> RunOutcome:
        plan, coord = self.plan, self.coord
        assert plan is not None
        if self.fatal:
            code, state = ExitCode.USAGE, "aborted"
        elif self.interrupted:
            code, state = ExitCode.INTERRUPTED, "interrupted"
        elif coord.counts()["failed"]:
            code, state = ExitCode.CHUNKS_FAILED, "finished"
        else:
            code, state = ExitCode.OK, "finished"
        # every rank stops at once (coordinator/stopping.py): the others are told first
        stop_by = time.monotonic() + STOP_WAIT_S
        self.remote.send_stop(int(code), self.fatal or "")
        self.local.close(timeout_s=STOP_WAIT_S)  # type: ignore[union-attr]
        self.remote.await_goodbyes(max(1.0, stop_by - time.monotonic()) if self.interrupted else GOODBYE_WAIT_S)
        self.ledger.close()  # type: ignore[union-attr]
        self.writer.close()  # type: ignore[union-attr]
        import shutil

        shutil.rmtree(plan.worker_config.scratch_dir, ignore_errors=True)
        counts = self.write_summary(state)
        self.lock.release()  # type: ignore[union-attr]
        outcome = RunOutcome(
            int(code),
            str(plan.telemetry_path),
            str(plan.summary_path),
            str(plan.failed_csv) if counts["failed"] else None,
            str(plan.workers_csv),
        )
        text, warn = summary_mod.format_final_report(
            {"run_id": self.run_id, "state": state, "counts": counts},
            self.workers.values(),
            self.coord.states.values(),
            {
                "telemetry": outcome.telemetry_path,
                "summary": outcome.summary_path,
                "workers": outcome.workers_csv,
                "failed": outcome.failed_csv,
                "outputs": plan.output_dir,
            },
            time.monotonic() - self.t0,
        )
        print(text, file=sys.stdout, flush=True)
        if warn:
            log.warning("%s", warn)
        if self.interrupted:
            outcome.interrupted_by = self.interrupted
            outcome.resume_dirs = {
                "output_dir": plan.output_dir,
                "telemetry_dir": str(plan.telemetry_path.parent),
                "chunks_dir": plan.chunks_dir,
            }
        if self.fatal:
            raise RunnerSetupError(self.fatal, fix="see the log lines above; the summary and telemetry are kept")
        return outcome


__all__ = ["Coordinator", "RunOutcome"]
