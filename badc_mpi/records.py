"""Chunk records: the unit of work every rank handles.

Kept apart from :mod:`badc_mpi.manifest` (which needs pyarrow to read manifests) so that worker
ranks, which only receive chunks, import nothing heavy. ``badc_mpi.manifest.Chunk`` is the same
class.
"""
from __future__ import annotations

from dataclasses import dataclass

STANDARD_COLUMNS = (
    "recording_id", "chunk_id", "source_path", "start_ms", "end_ms", "overlap_ms", "sha256", "notes",
)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One row of a manifest: one audio chunk to classify."""

    recording_id: str
    chunk_id: str
    source_path: str  #: exactly as written in the manifest
    input_path: str  #: absolute; relative paths joined to the manifest's folder; symlinks kept
    start_ms: int | None
    end_ms: int | None
    overlap_ms: int | None
    sha256: str | None  #: lower-case hex, or None for empty / TODO_HASH / DRY_RUN
    notes: str
    extra: tuple[tuple[str, str], ...]  #: non-standard columns, in header order
    manifest: str  #: absolute path of the manifest file
    line: int  #: 1-based physical line in the manifest (header = line 1)

    @property
    def key(self) -> str:
        return f"{self.recording_id}/{self.chunk_id}"

    @property
    def duration_s(self) -> float | None:
        known = self.start_ms is not None and self.end_ms is not None
        return (self.end_ms - self.start_ms) / 1000 if known else None  # type: ignore[operator]

    def metadata(self) -> dict[str, str]:
        return dict(self.extra)

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # chunks travel to worker ranks with every task: pickle as a plain tuple of fields
        # (the dataclass default for frozen slots classes calls fields() each time: ~3x slower)
        return (Chunk, (self.recording_id, self.chunk_id, self.source_path, self.input_path, self.start_ms,
                        self.end_ms, self.overlap_ms, self.sha256, self.notes, self.extra, self.manifest, self.line))

    def to_row(self) -> dict[str, str]:
        """The manifest columns (standard, then extra) as strings, e.g. for a failed-chunks CSV."""
        values = ((name, getattr(self, name)) for name in STANDARD_COLUMNS)
        return {**{name: "" if v is None else str(v) for name, v in values}, **dict(self.extra)}
