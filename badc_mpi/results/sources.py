"""Where detections come from: one small interface, so that a second source can be added.

A *detection reader* is a function ``reader(chunks) -> Iterator[DetectionBatch]``: given the chunks
a ledger calls done (in order), it yields batches of raw detection records
(:data:`~badc_mpi.results.schema.RAW_DETECTION_SCHEMA` columns plus the manifest's extra keys),
each covering whole chunks, with the rows of each chunk counted, and every chunk it could not read
as a problem. Today's reader is :func:`read_jsonl_detections` (``<output>/<rec>/<chunk>.detections.jsonl``);
the append-only per-run detection store planned next gets its own reader in :data:`READERS`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from badc_mpi.results.schema import RAW_DETECTION_SCHEMA
from badc_mpi.storage.outputs import DETECTIONS_SUFFIX

BATCH_BYTES = 32 << 20  #: JSON text parsed at once (bounded memory: a few times this)
PARSE_BLOCK_BYTES = 4 << 20  #: pyarrow parses blocks of this size on its threads


@dataclass(frozen=True, slots=True)
class DoneChunk:
    """A chunk whose counted result is a success: where that result's detections are."""

    recording_id: str
    chunk_id: str
    run_id: str
    output_dir: str

    @property
    def key(self) -> str:
        return f"{self.recording_id}/{self.chunk_id}"

    @property
    def detections_path(self) -> str:
        return os.path.join(self.output_dir, self.recording_id, self.chunk_id + DETECTIONS_SUFFIX)


@dataclass
class DetectionBatch:
    """Raw detection records of ``chunks`` (in order; ``counts[i]`` rows each), and the chunks
    that could not be read (``unreadable``: chunk, path, reason)."""

    chunks: list[DoneChunk]
    counts: list[int]
    table: pa.Table
    unreadable: list[tuple[DoneChunk, str, str]] = field(default_factory=list)


DetectionReader = Callable[[Iterable[DoneChunk]], Iterator[DetectionBatch]]


def _parse(data: bytes) -> pa.Table:
    return pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(block_size=PARSE_BLOCK_BYTES),
        parse_options=pajson.ParseOptions(explicit_schema=RAW_DETECTION_SCHEMA, unexpected_field_behavior="infer"),
    )


def _flush(chunks: list[DoneChunk], blobs: list[bytes], bad: list[tuple[DoneChunk, str, str]]) -> DetectionBatch:
    """Parse the files' text at once; when that fails, file by file, to name the bad ones."""
    counts = [b.count(b"\n") for b in blobs]
    try:
        table = _parse(b"".join(blobs)) if sum(counts) else RAW_DETECTION_SCHEMA.empty_table()
        if table.num_rows != sum(counts):
            raise pa.ArrowInvalid("blank lines: row count differs from line count")
        return DetectionBatch(chunks, counts, table, bad)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    good: list[DoneChunk] = []
    tables: list[pa.Table] = []
    good_counts: list[int] = []
    for chunk, blob, n in zip(chunks, blobs, counts):
        try:
            table = _parse(blob) if n else RAW_DETECTION_SCHEMA.empty_table()
            if table.num_rows != n:
                raise pa.ArrowInvalid(f"{n} lines but {table.num_rows} records (blank lines)")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            bad.append((chunk, chunk.detections_path, f"not valid detection JSON lines ({str(exc).splitlines()[0]})"))
            continue
        good.append(chunk)
        tables.append(table)
        good_counts.append(n)
    merged = pa.concat_tables(tables, promote_options="permissive") if tables else RAW_DETECTION_SCHEMA.empty_table()
    return DetectionBatch(good, good_counts, merged, bad)


def _read_files(chunks: Iterable[DoneChunk]) -> Iterator[tuple[DoneChunk, bytes | None, str]]:
    """(chunk, file bytes or None, why not) in order; a missing or torn file is a reason."""
    for chunk in chunks:
        path = chunk.detections_path
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            yield chunk, None, "detections file missing although the ledger records a success"
            continue
        except OSError as exc:
            yield chunk, None, f"cannot read detections ({exc.strerror})"
            continue
        if data and not data.endswith(b"\n"):
            yield chunk, None, "last line cut short: not a complete detections file"
            continue
        yield chunk, data, ""


def _ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced on a helper thread, at most ``depth`` ahead (file reads overlap parsing)."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(item)
        except Exception as exc:  # noqa: BLE001 - re-raised in the consumer thread
            slots.put(_Raised(exc))
            return
        slots.put(end)

    thread = threading.Thread(target=produce, name="badc-detections-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is end:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(0.01)


@dataclass
class _Raised:
    exc: BaseException


def read_jsonl_detections(chunks: Iterable[DoneChunk], *, batch_bytes: int = BATCH_BYTES) -> Iterator[DetectionBatch]:
    """Today's source: each done chunk's ``.detections.jsonl`` (empty file: analysed, nothing
    found). A missing or unreadable file is reported with its path, never skipped silently.
    Files are read on a helper thread while the previous batch is parsed."""
    pending: list[DoneChunk] = []
    blobs: list[bytes] = []
    bad: list[tuple[DoneChunk, str, str]] = []
    size = 0
    for chunk, data, why in _ahead(_read_files(chunks), depth=4096):
        if data is None:
            bad.append((chunk, chunk.detections_path, why))
            continue
        pending.append(chunk)
        blobs.append(data)
        size += len(data)
        if size >= batch_bytes:
            yield _flush(pending, blobs, bad)
            pending, blobs, bad, size = [], [], [], 0
    if pending or bad:
        yield _flush(pending, blobs, bad)


#: detection sources by name (``--source``); the per-run detection store will join here
READERS: dict[str, DetectionReader] = {"jsonl": read_jsonl_detections}
