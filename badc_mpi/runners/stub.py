"""The stub runner (``--dry-run``): simulates attempts without invoking anything.

Each simulated attempt takes ``sleep_s`` (a deadline checked by the worker's loop, so no thread
and no process is involved) and succeeds without writing outputs; telemetry and summaries are
written as for a real run. Used for dry runs of big manifests and for the dispatch benchmark.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from badc_mpi.records import Chunk
from badc_mpi.runners.base import AttemptResult, Runner, Task


@dataclass(frozen=True)
class StubOptions:
    sleep_s: float = 0.0  #: simulated seconds per attempt
    detections: int = 0  #: synthetic detections per chunk (benchmarks of rank 0's store path)


class StubRunner(Runner):
    name = "stub"
    produces_outputs = False
    inline = True  #: the worker advances it by deadline instead of in a thread

    def __init__(self, options: StubOptions | None = None) -> None:
        self.options = options or StubOptions()
        self._pid = os.getpid()

    def duration_s(self, chunk: Chunk) -> float:
        return self.options.sleep_s

    def command(self, chunk: Chunk, scratch_dir: str = "") -> list[str]:
        return ["<stub>", f"sleep_s={self.options.sleep_s}"]

    def run(self, task: Task) -> AttemptResult:
        return AttemptResult(ok=True, command=self.command(task.chunk), pid=self._pid, exit_code=0)

    def synthetic_detections(self, chunk: Chunk) -> tuple[list[str], list[float], list[float], list[float]] | None:
        """``--stub-detections N``: N made-up rows (label ``DRY_RUN``) for benchmarks, else None."""
        n = self.options.detections
        if not n:
            return None
        starts = [float(i % 57) for i in range(n)]
        return ["DRY_RUN"] * n, [0.5] * n, starts, [s + 3.0 for s in starts]

    def describe(self) -> dict[str, object]:
        return {"runner": self.name, "sleep_s": self.options.sleep_s, "detections": self.options.detections}
