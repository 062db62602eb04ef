"""The detection store: a run's detections in a few append-only files, written by rank 0 only.

Layout (the default; ``--per-chunk-outputs`` keeps :mod:`badc_mpi.storage.outputs` instead)::

    <output>/detections/<run_id>.000001.jsonl     segment 1 of the run
    <output>/detections/<run_id>.000002.jsonl     the next, once the first passes SEGMENT_BYTES

Each segment is JSON Lines: a ``store`` header line, ``versions`` lines (HawkEars and model
versions, written once per segment and referred to by id), and one ``chunk`` line per chunk that
succeeded: the chunk's identity and provenance once, then its detections as parallel lists
(``label``, ``label_code``, ``label_name``, ``confidence``, ``start_s``, ``end_s``; times
chunk-relative seconds as HawkEars wrote them; ``label_code`` or ``label_name`` is ``null`` when
it would repeat ``label`` element for element). A chunk with no detection has ``"n":0`` and empty
lists: "analysed, nothing found" is a record, not an absence.

Workers encode their chunk lines (:func:`chunk_line`); rank 0 appends them (:class:`StoreWriter`)
in the loop iteration that decides the success, before the ledger line, and every fsync of the
ledger is preceded by one of the store (the ledger passes ``before_sync``). Hence: the detections of
every chunk the ledger calls done are durable; a chunk line without a ledger success (rank 0 killed
between the two) is never counted by readers; a torn last line is skipped and named. A run never
appends to another run's segment, so a killed run's torn tail stays where it is.

File count is O(runs + size / SEGMENT_BYTES), never O(chunks).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from badc_mpi.records import Chunk, check_id
from badc_mpi.storage.atomic import ensure_dir, fsync_dir
from badc_mpi.storage.jsonl import dumps

STORE_SCHEMA = "badc-mpi.store/1"
STORE_DIR = "detections"
SEGMENT_SUFFIX = ".jsonl"
SEGMENT_BYTES = 256 << 20  #: a segment is closed and the next begun past this size
STORE, PER_CHUNK = "store", "per-chunk"  #: output layouts (the ledger header's ``layout``)
LAYOUTS = (STORE, PER_CHUNK)


def store_dir(output_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.path.abspath(os.fspath(output_dir)), STORE_DIR)


def segment_path(output_dir: str | os.PathLike[str], run_id: str, seq: int) -> str:
    """``<output>/detections/<run_id>.<seq:06d>.jsonl``."""
    return os.path.join(store_dir(output_dir), f"{check_id(run_id, 'run_id')}.{seq:06d}{SEGMENT_SUFFIX}")


def run_segments(output_dir: str | os.PathLike[str], run_id: str) -> list[str]:
    """The run's segments in order (none when it stored nothing)."""
    folder = store_dir(output_dir)
    prefix = run_id + "."
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        middle = name[len(prefix) : -len(SEGMENT_SUFFIX)] if name.startswith(prefix) and name.endswith(SEGMENT_SUFFIX) else ""
        if len(middle) == 6 and middle.isdigit():
            found.append((int(middle), os.path.join(folder, name)))
    return [path for _, path in sorted(found)]


def versions_id(hawkears_version: str | None, model_version: str | None) -> str:
    """A short, stable id for a (HawkEars version, model version) pair."""
    text = f"{hawkears_version or ''}\x00{model_version or ''}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def chunk_line(
    chunk: Chunk,
    run_id: str,
    versions: str,
    labels: Sequence[str],
    codes: Sequence[str | None],
    names: Sequence[str | None],
    confidences: Sequence[float],
    starts_s: Sequence[float],
    ends_s: Sequence[float],
) -> str:
    """One chunk's record (pure; encoded on the worker, appended as is by rank 0)."""
    record: dict[str, Any] = {
        "recording_id": chunk.recording_id,
        "chunk_id": chunk.chunk_id,
        "run_id": run_id,
        "v": versions,
        "sha256": chunk.sha256,
        "source_path": chunk.source_path,
        "chunk_start_ms": chunk.start_ms,
        "chunk_end_ms": chunk.end_ms,
        "n": len(labels),
        "label": list(labels),
        "label_code": _unless_labels(codes, labels),
        "label_name": _unless_labels(names, labels),
        "confidence": list(confidences),
        "start_s": list(starts_s),
        "end_s": list(ends_s),
    }
    if chunk.extra:
        record["meta"] = dict(chunk.extra)
    return dumps(record)


def _unless_labels(values: Sequence[str | None], labels: Sequence[str]) -> list[str | None] | None:
    """``values`` as a list, or None when it repeats ``labels`` (readers then take ``label``)."""
    values = list(values)
    return None if values == list(labels) and labels else values


def detections_line(chunk: Chunk, run_id: str, versions: str, raw: Sequence[Any]) -> str:
    """:func:`chunk_line` from parsed HawkEars rows (:class:`~badc_mpi.storage.detections.RawDetection`)."""
    return chunk_line(
        chunk,
        run_id,
        versions,
        [d.label for d in raw],
        [d.label_code for d in raw],
        [d.label_name for d in raw],
        [d.confidence for d in raw],
        [d.start_s for d in raw],
        [d.end_s for d in raw],
    )


@dataclass(frozen=True, slots=True)
class StoreRef:
    """Where a chunk's record is: segment ``seq`` of the run, ``offset`` and ``length`` in bytes
    (the line without its newline), and the CRC-32 of those bytes. The ledger's success line
    carries it (``g x l k``), so resume and bundle can verify the record instead of trusting it."""

    seq: int
    offset: int
    length: int
    crc32: int


def line_crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class StoreWriter:
    """Rank 0's appender: segments opened lazily, rotated by size, synced on demand.

    ``append`` buffers and returns the record's :class:`StoreRef`; ``flush`` hands the lines to the
    OS (a killed process loses nothing); ``sync`` makes them durable (called before every ledger
    fsync). Any ``OSError`` (a full disk, a quota) reaches the caller, which stops the run.
    """

    def __init__(self, output_dir: str, run_id: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.output_dir, self.run_id, self.segment_bytes = output_dir, run_id, segment_bytes
        self.seq = 0
        self.chunks = 0  #: chunk lines appended
        self.paths: list[str] = []
        self._fh: Any = None
        self._size = 0
        self._versions: set[str] = set()
        self._dirty = False
        self._unsynced = False

    def append(self, line: str, versions: str, hawkears_version: str | None, model_version: str | None) -> StoreRef:
        if self._fh is None or self._size >= self.segment_bytes:
            self._next_segment()
        if versions not in self._versions:
            self._write(
                dumps({"versions": versions, "hawkears_version": hawkears_version, "model_version": model_version}) + "\n"
            )
            self._versions.add(versions)
        data = line.encode("utf-8")
        ref = StoreRef(self.seq, self._size, len(data), line_crc32(data))
        self._write_bytes(data + b"\n")
        self.chunks += 1
        return ref

    def _write(self, text: str) -> None:
        self._write_bytes(text.encode("utf-8"))

    def _write_bytes(self, data: bytes) -> None:
        self._fh.write(data)
        self._size += len(data)
        self._dirty = True

    def _next_segment(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
        self.seq += 1
        path = segment_path(self.output_dir, self.run_id, self.seq)
        ensure_dir(os.path.dirname(path))
        self._fh = open(path, "ab", buffering=1 << 20)  # noqa: SIM115 - long-lived handle
        self._size = self._fh.tell()
        self._versions = set()
        self.paths.append(path)
        self._write(dumps({"store": STORE_SCHEMA, "run_id": self.run_id, "segment": self.seq}) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        fsync_dir(os.path.dirname(path))  # the segment's name is durable before any ledger line needs it

    def flush(self) -> None:
        if self._dirty:
            self._fh.flush()
            self._dirty = False
            self._unsynced = True

    def sync(self) -> None:
        if self._fh is None:
            return
        self.flush()
        if self._unsynced:
            os.fsync(self._fh.fileno())
            self._unsynced = False

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self.sync()
            self._fh.close()
