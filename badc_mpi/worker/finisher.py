"""Finalising an attempt's outputs: the runner's raw CSV validated and parsed, then either the
per-chunk files written (fsync, rename: :mod:`badc_mpi.storage.outputs`) or the chunk's store line
encoded (appended later by rank 0, before its ledger line). A problem here fails the attempt
(``output``: the file system; ``no_output``: missing or invalid output), never the rank.

For a pipelined runner this runs on the finisher thread, off the scoring path: results are
finalised in arrival order while the next chunks are scored (docs/throughput.md).
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import traceback
from collections.abc import Callable
from typing import Any, Literal

from badc_mpi.logs import get_logger
from badc_mpi.records import NO_OUTPUT, OUTPUT
from badc_mpi.runners.base import AttemptResult, Runner
from badc_mpi.storage import outputs as outputs_mod
from badc_mpi.storage import store
from badc_mpi.storage.detections import parse_raw
from badc_mpi.storage.figures import fs_reason
from badc_mpi.storage.store import PER_CHUNK
from badc_mpi.transport.messages import ResultEvent, WireTask, WorkerConfig

log = get_logger(__name__)

#: (task, result, started, finished, scratch, gpu): an attempt the runner ended, to be finalised
Ended = tuple[WireTask, AttemptResult, float, float, str, dict[str, Any]]


class Finisher:
    """Turns an ended attempt into its result event (``make_event``: :meth:`Events.result`, plus
    the supervisor's runtime tally); :meth:`start_thread` moves that work onto a thread."""

    def __init__(self, config: WorkerConfig, runner: Runner, make_event: Callable[..., ResultEvent]) -> None:
        self.config = config
        self.runner = runner
        self.make_event = make_event
        self._labels: tuple[dict[str, str], dict[str, str]] | None | Literal[False] = False  # False: not looked up yet
        self._thread: threading.Thread | None = None
        self._done: queue.Queue[Ended | None] = queue.Queue()

    def finish(
        self, task: WireTask, result: AttemptResult, started: float, finished: float, scratch: str, gpu: dict[str, Any]
    ) -> ResultEvent:
        """Validate, parse and finalise an attempt's outputs (per-chunk files fsynced and renamed,
        or the store line encoded); its result event."""
        chunk = task.chunk
        outputs: dict[str, str] = {}
        detections = None
        record = versions = ""
        if result.ok and self.runner.produces_outputs:
            labels = self._class_labels()
            try:
                if not result.raw_output or not os.path.exists(result.raw_output):
                    raise RuntimeError("the runner reported success but wrote no output CSV")
                if self.config.layout == PER_CHUNK:
                    final = outputs_mod.finalize_chunk_outputs(
                        self.config.output_dir,
                        chunk,
                        result.raw_output,
                        result.raw_format,
                        run_id=self.config.run_id,
                        hawkears_version=result.hawkears_version,
                        model_version=result.model_version,
                        class_map=labels[0] if labels else None,
                        class_names=labels[1] if labels else None,
                    )
                    outputs = final.as_dict()
                    detections = final.detections
                else:  # the store: parsed here, appended by rank 0 before the ledger calls the chunk done
                    raw = parse_raw(
                        result.raw_output,
                        result.raw_format,
                        class_map=labels[0] if labels else None,
                        class_names=labels[1] if labels else None,
                    )
                    versions = store.versions_id(result.hawkears_version, result.model_version)
                    record = store.detections_line(chunk, self.config.run_id, versions, raw)
                    outputs = {"store": store.store_dir(self.config.output_dir)}
                    detections = len(raw)
            except OSError as exc:  # writing the outputs failed on this rank's file system
                result.ok = False
                result.failure_class = OUTPUT
                result.reason = fs_reason(exc, "writing the outputs") + (f" | {result.reason}" if result.reason else "")
            except Exception as exc:  # noqa: BLE001 - invalid output is a task failure (data)
                result.ok = False
                result.failure_class = NO_OUTPUT
                result.reason = f"{exc}" + (f" | {result.reason}" if result.reason else "")
            if not result.ok:
                outputs, detections, record = {}, None, ""
        shutil.rmtree(scratch, ignore_errors=True)
        return self.make_event(task, result, started, finished, outputs, gpu, detections, record, versions)

    def _class_labels(self) -> tuple[dict[str, str], dict[str, str]] | None:
        if self._labels is False:
            try:
                self._labels = self.runner.class_labels()
            except Exception as exc:  # noqa: BLE001 - codes/names are a convenience, never a failure
                log.warning("class codes and names unavailable: %s", exc)
                self._labels = None
        labels = self._labels
        assert labels is not False  # asked above
        return labels

    # -- the finisher thread (pipelined runners) ----------------------------------------------
    @property
    def threaded(self) -> bool:
        return self._thread is not None

    def start_thread(self, deliver: Callable[[ResultEvent], None], on_fatal: Callable[[BaseException], None]) -> None:
        """Finalise :meth:`put` attempts from now on in a thread, each event to ``deliver``; a bug
        there goes to ``on_fatal`` (the loop then aborts) and ends the thread."""

        def main() -> None:
            while True:
                item = self._done.get()
                if item is None:
                    return
                try:
                    deliver(self.finish(*item))
                except BaseException as exc:  # noqa: BLE001 - a bug: reported to the loop, which aborts
                    on_fatal(exc)
                    log.error("finishing an attempt failed: %s: %s\n%s", type(exc).__name__, exc, traceback.format_exc())
                    return

        self._thread = threading.Thread(target=main, name="badc-finish", daemon=True)
        self._thread.start()

    def put(self, ended: Ended) -> None:
        self._done.put(ended)

    def stop(self, timeout_s: float) -> None:
        """The attempts already handed over are finalised (and reported) first; waits at most ``timeout_s``."""
        if self._thread is not None:
            self._done.put(None)
            self._thread.join(timeout=timeout_s)
