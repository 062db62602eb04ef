"""Rank 0's single writer: telemetry lines, the resume ledger, and summary snapshots.

Every final outcome goes to the ledger (the resume truth) in the same loop iteration as its
telemetry line; summaries are snapshots of the scheduler's counts and the workers' totals, listing
only the chunks that failed or are unfinished (:func:`badc_mpi.storage.summary.render_summary`).

A write that fails (a full disk, a quota, an I/O error: any ``OSError`` of the telemetry, the
store, the ledger) never escapes: the recorder is ``broken`` (the reason, naming the file), the
coordinator stops the run in order (exit 75, summary ``stopped`` where it can still be written,
the resume command), and successes whose store records were not handed to the OS lose their
ledger lines and run again on resume (:meth:`~badc_mpi.storage.ledger.LedgerWriter.drop_successes`).
What did reach the ledger is verified on read (:mod:`badc_mpi.storage.store_check`).
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any

from badc_mpi.coordinator.planning import RunPlan
from badc_mpi.coordinator.scheduler import Decision, Scheduler
from badc_mpi.errors import StateError
from badc_mpi.logs import get_logger
from badc_mpi.records import INPUT, LOST, OUTPUT, Chunk
from badc_mpi.storage import ledger as ledger_mod
from badc_mpi.storage import summary as summary_mod
from badc_mpi.storage import telemetry as tel
from badc_mpi.storage.figures import fs_reason
from badc_mpi.storage.jsonl import dumps
from badc_mpi.storage.store import STORE, StoreRef, StoreWriter
from badc_mpi.storage.summary import WorkerStats
from badc_mpi.transport.messages import ResultEvent

log = get_logger(__name__)

STORE_AHEAD = 500  #: store records between flushes; their ledger lines (~150 B) stay far below ledger.BUFFER_BYTES


class Recorder:
    def __init__(
        self, plan: RunPlan, run_id: str, scheduler: Scheduler, workers: dict[int, WorkerStats], ranks: int | None = None
    ) -> None:
        self.plan, self.run_id, self.scheduler, self.workers = plan, run_id, scheduler, workers
        try:  # a run's files are its own: created here, never opened by name twice
            self.writer = tel.TelemetryWriter(plan.telemetry_path, exclusive=True)
            layout = plan.worker_config.layout
            self.ledger = ledger_mod.LedgerWriter(
                plan.ledger_path,
                ledger_mod.header_record(
                    run_id, plan.meta["manifests"], plan.output_dir, plan.meta["created_at"], plan.meta["fingerprint"], layout
                ),
                exclusive=True,
            )
        except FileExistsError as exc:
            raise StateError(
                f"{exc.filename}: this run's file exists already (another run wrote it); nothing was dispatched",
                fix="start the run again (a new run gets a new id)",
            ) from None
        self.writer.write(run_header(plan, run_id, ranks))
        self.store = StoreWriter(plan.output_dir, run_id) if layout == STORE else None
        self.ledger.before_sync = self.store.sync if self.store is not None else None
        self._unflushed = 0  #: store records appended since the store's last flush
        self._refs: dict[str, StoreRef] = {}  #: chunk key -> its store record, until its ledger line
        self._pending: list[str] = []  #: keys of successes whose ledger lines are not written yet
        self.broken: str | None = None  #: why a write failed (the run then stops)
        self.dropped: list[str] = []  #: successes whose ledger lines were dropped (their records failed)
        self.devices: dict[int, str] = {}  #: in a run of CPU and GPU ranks: rank -> device kind (``d``)

    def _break(self, exc: OSError, doing: str) -> None:
        if self.broken is None:
            self.broken = fs_reason(exc, doing)
            log.error("%s; stopping the run (fix the disk, then resume)", self.broken)

    def line(self, text: str) -> None:
        """A telemetry line encoded elsewhere (a worker's start line, a result line)."""
        self.writer.write_line(text)

    def event(self, event: str, who: dict[str, Any], chunk: Chunk, attempt: int, **fields: Any) -> None:
        """A telemetry record built on rank 0 (a chunk failed before dispatch, a lost attempt);
        ``who``: the ``rank`` and ``worker`` it names."""
        self.writer.write(tel.bare_record(event, who, chunk, attempt, **fields))

    def failed_before_dispatch(self, index: int, chunk: Chunk, reason: str, who: dict[str, Any]) -> None:
        """Missing audio (``--allow-missing``): failed as ``input`` without an attempt."""
        self.scheduler.mark_failed(index, INPUT, reason)
        at = tel.utc_iso(time.time())
        self.event("failure", who, chunk, 0, finished_at=at, failure_class=INPUT, reason=reason)
        self._final(chunk, "failed", 0, INPUT, reason, at, False)

    def detections(self, key: str, record: str, versions: str, hawkears_version: str | None, model_version: str | None) -> None:
        """A success's detections into the store, handed to the OS before its ledger line can be.
        Raises ``OSError`` when they cannot be (the attempt then fails as ``output``)."""
        if self.store is None or not record:
            return
        if self.broken is not None:
            raise OSError(errno.EIO, f"the detection store stopped earlier ({self.broken})")
        try:
            self._refs[key] = self.store.append(record, versions, hawkears_version, model_version)
            self._unflushed += 1
            if self._unflushed >= STORE_AHEAD:  # bounded memory between loop iterations
                self.store.flush()
                self._unflushed = 0
        except OSError as exc:
            self._refs.pop(key, None)
            self._store_failed(exc)
            raise

    def store_success(self, ev: ResultEvent) -> str | None:
        """A success's detections into the store before anything can call the chunk done. When
        rank 0 cannot write (full disk, quota), the attempt becomes an ``output`` failure (its
        telemetry body says so) and the reason is returned: the run then stops cleanly, since every
        later chunk would fail the same way; resume runs the rest."""
        try:
            self.detections(ev.key, ev.record, ev.versions, ev.hawkears_version, ev.model_version)
        except OSError as exc:
            why = self.broken or fs_reason(exc, "appending to the detection store on rank 0")
            ev.ok, ev.failure_class, ev.reason = False, OUTPUT, why
            body = json.loads(ev.body)  # the worker encoded a success: say what rank 0 found (rare path)
            body.update(failure_class=OUTPUT, reason=why)
            ev.body = dumps(body)
            return why
        return None

    def attempt_lost(self, rank: int, chunk: Chunk, decision: Decision, attempt: int, why: str) -> None:
        """An attempt with no result past its deadline (``lost``): the worker's totals, the ledger
        when final, and a telemetry record built here (the worker never sent one)."""
        self.attempt_ended(rank, chunk, decision, attempt, LOST, why, 0.0, time.time(), {})
        self.event(
            decision.event,
            {"rank": rank, "worker": self.workers[rank].worker},
            chunk,
            attempt,
            backoff_s=decision.backoff_s or None,
            finished_at=tel.utc_iso(time.time()),
            failure_class=LOST,
            reason=why,
        )

    def attempt_ended(
        self,
        rank: int,
        chunk: Chunk,
        decision: Decision,
        attempt: int,
        failure_class: str | None,
        reason: str,
        runtime_s: float,
        finished_at: float,
        outputs: dict[str, str],
    ) -> None:
        """An attempt's end in the worker's totals, and a final outcome in the ledger."""
        self.workers[rank].count(decision.event, runtime_s)
        if decision.event == "retry":
            return
        status = "success" if decision.event == "success" else "failed"
        device = self.devices.get(rank) if status == "success" else None
        self._final(chunk, status, attempt, failure_class, reason, tel.utc_iso(finished_at), bool(outputs), device)

    def _final(
        self,
        chunk: Chunk,
        status: str,
        attempts: int,
        failure_class: str | None,
        reason: str,
        finished_at: str | None,
        has_outputs: bool,
        device: str | None = None,
    ) -> None:
        ref = self._refs.pop(chunk.key, None) if status == "success" else None
        if status == "success":
            self._pending.append(chunk.key)
        self.ledger.append(
            ledger_mod.entry_record(
                chunk,
                status,
                run_id=self.run_id,
                attempts=attempts,
                failure_class=failure_class,
                reason=reason,
                finished_at=finished_at,
                has_outputs=has_outputs,
                ref=ref,
                device=device,
            )
        )

    def _store_failed(self, exc: OSError) -> None:
        """The store could not take what it was given: successes not yet in the ledger lose their
        lines (their chunks are unfinished), and the run stops."""
        self._break(exc, "writing the detection store on rank 0")
        if self.ledger.drop_successes():
            self.dropped += self._pending
        self._pending = []

    def flush(self) -> None:
        """Once per loop iteration: telemetry, then the store, then the ledger (whose fsync syncs the
        store first): no ledger line reaches the OS or the disk before its chunk's detections. A
        failed write breaks the recorder (see the module's docstring); nothing raises."""
        try:
            self.writer.flush()
        except OSError as exc:
            self._break(exc, f"writing the telemetry {self.plan.telemetry_path}")
        if self.store is not None:
            try:
                self.store.flush()
                self._unflushed = 0
            except OSError as exc:
                self._store_failed(exc)
        try:
            self.ledger.flush()
            self._pending = []
        except OSError as exc:
            self._break(exc, f"writing the resume ledger {self.plan.ledger_path}")

    def close(self) -> None:
        """Everything closed (and synced where it still can be); failures are logged, not raised."""
        for name, close in (
            ("detection store", self.store.close if self.store is not None else None),
            ("resume ledger", self.ledger.close),
            ("telemetry", self.writer.close),
        ):
            if close is None:
                continue
            try:
                close()
            except OSError as exc:
                if name == "detection store":
                    self._store_failed(exc)
                self._break(exc, f"closing the {name}")

    def write_summary(self, state: str) -> dict[str, int]:
        """Snapshot the summary (and workers CSV, failed CSV); returns the counts."""
        plan, scheduler = self.plan, self.scheduler
        listed = scheduler.indices("failed", "in_flight", "backoff")
        entries = ((st.chunk.key, summary_mod.entry_json(st)) for st in scheduler.iter_states(listed))
        counts = summary_mod.summary_counts(scheduler.counts(), plan.carried_counts)
        workers = self.workers.values()
        text = summary_mod.render_summary(plan.meta, counts, workers, entries, state=state, run_id=self.run_id)
        try:
            summary_mod.write_summary(str(plan.summary_path), text)
            summary_mod.write_workers_csv(str(plan.workers_csv), workers)
            if counts["failed"]:
                failed = scheduler.iter_states(scheduler.indices("failed"))
                summary_mod.write_failed_csv(str(plan.failed_csv), failed, plan.columns)
        except OSError as exc:  # the earlier snapshot (atomic) stays; the stop goes on
            log.error("%s; the summary stays as last written", fs_reason(exc, f"writing the summary {plan.summary_path}"))
            self._break(exc, f"writing the summary {plan.summary_path}")
        return counts


def run_header(plan: RunPlan, run_id: str, ranks: int | None) -> dict[str, Any]:
    """The telemetry's first line: the run's facts (rank 0's host and pid, version, manifests,
    output and telemetry folders, runner, chunks in all and carried over by resume), written once
    instead of in every line."""
    meta = plan.meta
    runner = meta.get("runner") or {}
    return tel.run_record(
        run_id,
        time.time(),
        host=meta.get("host"),
        pid=os.getpid(),
        slurm=meta.get("slurm"),
        ranks=ranks,
        badc_mpi_version=meta.get("badc_mpi_version"),
        manifests=meta.get("manifests"),
        output_dir=plan.output_dir,
        runner=runner.get("runner") if isinstance(runner, dict) else runner,
        model_version=runner.get("model_version") if isinstance(runner, dict) else None,
        total=len(plan.chunks) + sum(plan.carried_counts.values()),  #: what the monitor shows from the first line
        skipped=sum(plan.carried_counts.values()),
        telemetry_dir=os.path.dirname(os.path.abspath(str(plan.summary_path))),
    )
