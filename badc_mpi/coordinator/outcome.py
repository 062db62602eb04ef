"""What a run hands back to its caller on every rank, and how rank 0 decides and reports it: the
exit code and summary state (:func:`exit_state`), the outcome's paths and resume folders, and the
end-of-run report (:func:`report_outcome`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from badc_mpi.coordinator.planning import RunPlan
from badc_mpi.errors import ExitCode
from badc_mpi.logs import get_logger
from badc_mpi.records import ChunkState
from badc_mpi.storage import summary as summary_mod
from badc_mpi.storage.summary import WorkerStats

log = get_logger(__name__)


@dataclass
class RunOutcome:
    """What ``badc_mpi.run`` returns: the exit code on every rank; paths and summary on rank 0."""

    exit_code: int
    telemetry_path: str | None = None
    summary_path: str | None = None
    failed_csv: str | None = None
    workers_csv: str | None = None
    stop_reason: str | None = None  #: why the run stopped before finishing (a signal, no rank left to work)
    resume_dirs: dict[str, str] = field(default_factory=dict)  #: folders a resume must reuse (when stopped)
    lost_ranks: list[int] = field(default_factory=list)  #: ranks that may not answer: end the job with Abort
    _summary: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def summary(self) -> dict[str, Any] | None:
        """The run's summary document (rank 0 only; read from ``summary_path`` on first use)."""
        if self._summary is None and self.summary_path:
            with open(self.summary_path, encoding="utf-8") as fh:
                self._summary = json.load(fh)
        return self._summary


def exit_state(fatal: str | None, signal: str | None, stopped: str | None, failed: int) -> tuple[ExitCode, str]:
    """The run's exit code and its summary's final state: no rank could work (2, ``aborted``), a
    stop signal or no rank left (75, ``interrupted``/``stopped``), chunks failed (1), or all done (0)."""
    if fatal:
        return ExitCode.USAGE, "aborted"
    if signal or stopped:
        return ExitCode.INTERRUPTED, "interrupted" if signal else "stopped"
    return (ExitCode.CHUNKS_FAILED if failed else ExitCode.OK), "finished"


def report_outcome(
    code: int,
    plan: RunPlan,
    header: dict[str, Any],
    workers: Iterable[WorkerStats],
    worst: Iterable[ChunkState],
    elapsed_s: float,
    *,
    lost_ranks: list[int],
    stop_reason: str | None,
) -> RunOutcome:
    """Print the end-of-run report (``header``: ``run_id``, ``state``, ``counts``) and return the
    outcome; a stopped run's outcome names the folders its resume must reuse."""
    counts = header["counts"]
    outcome = RunOutcome(
        int(code),
        str(plan.telemetry_path),
        str(plan.summary_path),
        str(plan.failed_csv) if counts["failed"] else None,
        str(plan.workers_csv),
        lost_ranks=lost_ranks,
    )
    files = {
        "telemetry": outcome.telemetry_path,
        "summary": outcome.summary_path,
        "workers": outcome.workers_csv,
        "failed": outcome.failed_csv,
        "outputs": plan.output_dir,
    }
    text, warn = summary_mod.format_final_report(header, workers, worst, files, elapsed_s)
    print(text, file=sys.stdout, flush=True)
    if warn:
        log.warning("%s", warn)
    if stop_reason:
        outcome.stop_reason = stop_reason
        outcome.resume_dirs = {
            "output_dir": plan.output_dir,
            "telemetry_dir": str(plan.telemetry_path.parent),
            "chunks_dir": plan.chunks_dir,
        }
    return outcome
