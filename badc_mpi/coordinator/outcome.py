"""What a run hands back to its caller on every rank."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


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
