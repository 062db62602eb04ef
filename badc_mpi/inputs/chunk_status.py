"""The chunk-status guard: run only recordings that the chunker finished.

The chunker writes ``<chunks_dir>/<recording_id>/.chunk_status.json`` with at least
``{"status": "completed" | "in_progress" | "failed", ...}`` (also ``error``, ``updated_at``,
``manifest_rows``, ...). :func:`check_chunk_status` reads one file per distinct recording of the
manifests (a pure-ish reader that never raises for a bad file: it reports it);
:func:`enforce_chunk_status` turns the report into :class:`~badc_mpi.errors.ChunkStatusError`
(exit 3) or, with ``--allow-partial-chunks``, into a warning.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass

from badc_mpi.errors import ChunkStatusError
from badc_mpi.inputs.locations import default_locations
from badc_mpi.inputs.manifest import Manifest
from badc_mpi.logs import get_logger

log = get_logger(__name__)

STATUS_FILE = ".chunk_status.json"
CHUNKER_STATUSES = ("completed", "in_progress", "failed")  #: values the chunker writes
GUARD_STATUSES = (*CHUNKER_STATUSES, "missing", "unreadable", "invalid")
MAX_LISTED = 20
_MAX_DETAIL = 200


@dataclass(frozen=True)
class RecordingStatus:
    """The chunking state of one recording; ``status`` is one of :data:`GUARD_STATUSES`."""

    recording_id: str
    status: str
    path: str  #: the status file (whether or not it exists)
    detail: str  #: the chunker's error or last update, or why the file cannot be used

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def describe(self) -> str:
        return f"{self.recording_id} ({self.status}{': ' + self.detail if self.detail else ''})"


@dataclass(frozen=True)
class GuardReport:
    """One status per distinct recording, in manifest order."""

    chunks_dir: str
    statuses: list[RecordingStatus]

    @property
    def ok(self) -> bool:
        return all(status.ok for status in self.statuses)

    @property
    def offending(self) -> list[RecordingStatus]:
        return [status for status in self.statuses if not status.ok]

    def counts(self) -> dict[str, int]:
        """How many recordings have each status, in :data:`GUARD_STATUSES` order."""
        counter = Counter(status.status for status in self.statuses)
        return {name: counter[name] for name in GUARD_STATUSES if counter[name]}

    def format(self, limit: int | None = 50) -> str:
        """A summary line, then one aligned line per offending recording (at most ``limit``)."""
        counts = ", ".join(f"{number} {name}" for name, number in self.counts().items())
        lines = [f"chunk status in {self.chunks_dir}: {len(self.statuses)} recording(s): {counts or 'none'}"]
        offending = self.offending
        shown = offending if limit is None else offending[:limit]
        width = max((len(status.recording_id) for status in shown), default=0)
        for status in shown:
            line = f"  {status.recording_id:<{width}}  {status.status:<11}  {status.detail}"
            lines.append(line.rstrip())
        if len(shown) < len(offending):
            lines.append(f"  ... and {len(offending) - len(shown)} more")
        return "\n".join(lines)


def parse_status(recording_id: str, path: str, text: str | bytes) -> RecordingStatus:
    """Pure: the status a file's contents say (``unreadable`` / ``invalid`` when they cannot)."""

    def result(status: str, detail: object = "") -> RecordingStatus:
        detail = " ".join(str(detail or "").split())  # one line
        if len(detail) > _MAX_DETAIL:
            detail = detail[: _MAX_DETAIL - 3] + "..."
        return RecordingStatus(recording_id, status, path, detail)

    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return result("unreadable", f"not valid JSON ({exc})")
    if not isinstance(document, dict):
        return result("invalid", f"expected a JSON object, found {type(document).__name__}")
    if "status" not in document:
        return result("invalid", 'no "status" key')
    status = document["status"]
    if status not in CHUNKER_STATUSES:
        return result("invalid", f"unknown status {status!r} (expected {', '.join(CHUNKER_STATUSES)})")
    if status == "failed":
        return result(status, document.get("error") or "the chunker failed (no error recorded)")
    if status == "in_progress":
        updated = document.get("updated_at") or document.get("started_at")
        return result(status, f"last update {updated}" if updated else "chunking not finished")
    return result(status)


def read_status(chunks_dir: str, recording_id: str) -> RecordingStatus:
    """The I/O shell: read ``<chunks_dir>/<recording_id>/.chunk_status.json``."""
    path = os.path.join(chunks_dir, recording_id, STATUS_FILE)
    try:
        with open(path, "rb") as handle:
            text = handle.read()
    except FileNotFoundError:
        return RecordingStatus(recording_id, "missing", path, f"no {STATUS_FILE} (the chunker has not run for this recording)")
    except OSError as exc:
        return RecordingStatus(recording_id, "unreadable", path, exc.strerror or str(exc))
    return parse_status(recording_id, path, text)


def check_chunk_status(manifests: Manifest | list[Manifest], chunks_dir: str | None = None) -> GuardReport:
    """One status per distinct recording of ``manifests``, in manifest order.

    ``chunks_dir`` defaults to the chunks folder of the first manifest's location
    (:func:`badc_mpi.inputs.locations.default_locations`).
    """
    if isinstance(manifests, Manifest):
        manifests = [manifests]
    if chunks_dir is None:
        if not manifests:
            raise ValueError("check_chunk_status needs a manifest or a chunks_dir")
        chunks_dir = default_locations(manifests[0].path).chunks_dir
    chunks_dir = os.path.abspath(chunks_dir)
    recordings = dict.fromkeys(recording for manifest in manifests for recording in manifest.recording_ids)
    statuses = [read_status(chunks_dir, recording) for recording in recordings]
    return GuardReport(chunks_dir, statuses)


def enforce_chunk_status(report: GuardReport, allow_partial: bool) -> None:
    """Refuse (exit 3) unless every recording is completed; a warning when ``allow_partial``."""
    offending = report.offending
    if not offending:
        log.debug("chunk status: all %d recordings completed", len(report.statuses))
        return
    counts = ", ".join(f"{n} {name}" for name, n in report.counts().items() if name != "completed")
    listed = "; ".join(status.describe() for status in offending[:MAX_LISTED])
    more = f"; and {len(offending) - MAX_LISTED} more" if len(offending) > MAX_LISTED else ""
    summary = f"{len(offending)} of {len(report.statuses)} recordings are not fully chunked ({counts}) in {report.chunks_dir}"
    if allow_partial:
        log.warning("%s: %s%s; --allow-partial-chunks: running the chunks that exist", summary, listed, more)
        return
    fix = "finish chunking them first: `badc-mpi chunk RECORDINGS_DIR` writes status completed"
    if not os.path.isdir(report.chunks_dir):
        fix += f"; {report.chunks_dir} does not exist: point the run at the chunker's output folder"
    raise ChunkStatusError(
        f"{summary}: {listed}{more}", fix=f"{fix}, or pass --allow-partial-chunks to run the chunks that exist"
    )
