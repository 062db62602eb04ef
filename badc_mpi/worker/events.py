"""The events a rank's attempts produce for rank 0, encoded here on the worker.

Owns the worker's facts (what stays the same from chunk to chunk: binding, runner description,
command template), sent once as a ``worker`` event and again only when one changes (a restarted
resident process, another model or HawkEars version), always before the next chunk line; and each
attempt's start and result events with their telemetry lines (:mod:`badc_mpi.storage.telemetry`).
Events wait in :attr:`Events.pending` until the rank's loop drains them.
"""

from __future__ import annotations

import collections
import os
from typing import Any

from badc_mpi.records import Binding
from badc_mpi.runners.base import AttemptResult, Runner
from badc_mpi.storage import telemetry as tel
from badc_mpi.storage.figures import chunk_metrics
from badc_mpi.transport.messages import ResultEvent, StartEvent, WireTask, WorkerConfig, WorkerEvent


class Events:
    """One rank's event encoder and queue (appended by the attempt and finisher threads, drained by the loop)."""

    def __init__(self, config: WorkerConfig, binding: Binding, runner: Runner) -> None:
        self.config = config
        self.runner = runner
        self.static = tel.worker_static(binding.rank, os.getpid(), binding)
        self.who = tel.who(self.static)  #: what every per-chunk line says of this worker
        self.static_keys = frozenset(getattr(runner, "static_metrics", ()))
        self.facts: dict[str, Any] | None = None  #: the facts of the last ``worker`` event sent
        self.pending: collections.deque[WorkerEvent | StartEvent | ResultEvent] = collections.deque()

    def ready_facts(self) -> dict[str, Any]:
        """What stays the same from chunk to chunk: the binding, the runner's description (device,
        versions, constant metrics such as the resident process's pid), the command template."""
        described = self.runner.describe()
        facts = {**self.static, "runner": self.runner.name}
        for key in ("device", "model_version", "hawkears_version", *sorted(self.static_keys)):
            value = described.get(key)
            if value is not None:
                facts[key] = value
        facts["command"] = self.runner.command_template()
        if self.config.scratch_dir:
            facts["scratch_dir"] = self.config.scratch_dir
        return facts

    def announce(self, facts: dict[str, Any], at: float) -> None:
        """Queue a ``worker`` event when the facts are new or changed (before the next chunk line)."""
        if facts != self.facts:
            self.facts = facts
            self.pending.append(WorkerEvent(tel.worker_line(facts, at)))

    def changed_facts(self, result: AttemptResult) -> dict[str, Any] | None:
        """The facts after ``result`` when it reports a new value of one (a restarted resident
        process, another model or HawkEars version, another command), else None."""
        facts = self.facts or self.ready_facts()
        new: dict[str, Any] | None = None
        updates: list[tuple[str, Any]] = [("model_version", result.model_version), ("hawkears_version", result.hawkears_version)]
        if self.static_keys:
            updates += [(k, result.metrics.get(k)) for k in self.static_keys]
        updates.append(("command", self.runner.command_template()))
        for key, value in updates:
            if value is not None and facts.get(key) != value:
                new = new if new is not None else dict(facts)
                new[key] = value
        return new

    def start(self, task: WireTask, started: float, command: list[str]) -> StartEvent:
        if self.facts is None:
            self.announce(self.ready_facts(), started)
        line = tel.start_line(self.who, task.chunk, task.attempt, started)
        return StartEvent(task.chunk.key, task.attempt, started, command, line)

    def result(
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
        """The attempt's result event, its telemetry body encoded (a ``worker`` event first when
        the result changed the facts)."""
        ev = ResultEvent(
            key=task.chunk.key,
            attempt=task.attempt,
            started_at=started,
            finished_at=finished,
            ok=bool(result.ok),
            failure_class=None if result.ok else (result.failure_class or "exit"),
            reason=(result.reason or "")[-2000:],
            exit_code=result.exit_code,
            signal=result.signal,
            command=list(result.command),
            outputs=outputs,
            detections=detections,
            runner_pid=result.pid,
            gpu=gpu,
            metrics=dict(result.metrics),
            model_version=result.model_version,
            hawkears_version=result.hawkears_version,
            record=record,
            versions=versions,
        )
        changed = self.changed_facts(result)
        if changed is not None:
            self.announce(changed, finished)
        facts = self.facts or {}
        metrics = chunk_metrics(ev.metrics, self.static_keys, detections)
        own = result.pid is None or result.pid in (facts.get("worker_pid"), facts.get("pid"))
        ev.body = tel.result_body(self.who, task.chunk, ev, metrics, None if own else result.pid)
        return ev
