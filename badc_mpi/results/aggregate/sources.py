"""Where detections come from: one small interface, so that a second source can be added.

A *detection reader* is a function ``reader(chunks) -> Iterator[DetectionBatch]``: given the chunks
a ledger calls done (in order), it yields batches of raw detection records
(:data:`~badc_mpi.results.aggregate.schema.RAW_DETECTION_SCHEMA` columns plus the manifest's extra keys),
each covering whole chunks, with the rows of each chunk counted, and every chunk it could not read
as a problem. This module's reader is :func:`read_jsonl_detections` (``--per-chunk-outputs`` runs:
``<output>/<rec>/<chunk>.detections.jsonl``); the detection store's is in
:mod:`badc_mpi.results.aggregate.store_source`; :data:`badc_mpi.results.aggregate.readers.READERS` names both.
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

from badc_mpi.results.aggregate.schema import RAW_DETECTION_SCHEMA, RAW_READ_SCHEMA
from badc_mpi.storage.outputs import DETECTIONS_SUFFIX
from badc_mpi.storage.store import PER_CHUNK, STORE, store_dir

BATCH_BYTES = 32 << 20  #: JSON text parsed at once (bounded memory: a few times this)
PARSE_BLOCK_BYTES = 4 << 20  #: pyarrow parses blocks of this size on its threads


@dataclass(frozen=True, slots=True)
class DoneChunk:
    """A chunk whose counted result is a success: where that result's detections are."""

    recording_id: str
    chunk_id: str
    run_id: str
    output_dir: str
    layout: str = PER_CHUNK  #: where the run put detections (its ledger header): ``per-chunk`` | ``store``
    ref: tuple[int, int, int, int] | None = None  #: the store record its ledger line names (verified on read)

    @property
    def key(self) -> str:
        return f"{self.recording_id}/{self.chunk_id}"

    @property
    def where(self) -> str:
        """Where this chunk's detections are: its file, or the run's store segments."""
        if self.layout == STORE:
            return os.path.join(store_dir(self.output_dir), f"{self.run_id}.*.jsonl")
        return self.detections_path

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
    problems: list[tuple[str, str, str]] = field(default_factory=list)  #: (path, reason, kind) not tied to a done chunk
    keyed: bool = False  #: rows were matched to ``chunks`` by their own keys (nothing left to check)


DetectionReader = Callable[[Iterable[DoneChunk]], Iterator[DetectionBatch]]


def _parse(data: Any) -> pa.Table:
    return pajson.read_json(
        pa.BufferReader(pa.py_buffer(data)),
        read_options=pajson.ReadOptions(block_size=PARSE_BLOCK_BYTES),
        parse_options=pajson.ParseOptions(explicit_schema=RAW_READ_SCHEMA, unexpected_field_behavior="infer"),
    )


@dataclass
class _RawBatch:
    """Files read back to back into one buffer (``spans[i]``: offset, length of chunk i's file)."""

    chunks: list[DoneChunk]
    counts: list[int]
    spans: list[tuple[int, int]]
    buffer: memoryview
    bad: list[tuple[DoneChunk, str, str]]


def _parse_batch(raw: _RawBatch) -> DetectionBatch:
    """Parse the files' text at once; when that fails, file by file, to name the bad ones."""
    total = sum(raw.counts)
    try:
        table = _parse(raw.buffer) if total else RAW_DETECTION_SCHEMA.empty_table()
        if table.num_rows != total:
            raise pa.ArrowInvalid("blank lines: row count differs from line count")
        return DetectionBatch(raw.chunks, raw.counts, table, raw.bad)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    good: list[DoneChunk] = []
    tables: list[pa.Table] = []
    good_counts: list[int] = []
    for chunk, (offset, length), n in zip(raw.chunks, raw.spans, raw.counts):
        try:
            table = _parse(raw.buffer[offset : offset + length]) if n else RAW_DETECTION_SCHEMA.empty_table()
            if table.num_rows != n:
                raise pa.ArrowInvalid(f"{n} lines but {table.num_rows} records (blank lines)")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raw.bad.append((chunk, chunk.detections_path, f"not valid detection JSON lines ({str(exc).splitlines()[0]})"))
            continue
        good.append(chunk)
        tables.append(table)
        good_counts.append(n)
    merged = pa.concat_tables(tables, promote_options="permissive") if tables else RAW_DETECTION_SCHEMA.empty_table()
    return DetectionBatch(good, good_counts, merged, raw.bad)


def _read_into(path: str, buf: bytearray, offset: int) -> int:
    """Read the whole file at ``path`` into ``buf`` at ``offset`` (grown when needed); its length."""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if offset + size + 1 > len(buf):
            buf.extend(bytes(offset + size + 1 - len(buf)))
        view = memoryview(buf)
        got = 0
        while True:
            n = fh.readinto(view[offset + got :])
            if not n:
                break
            got += n
            if offset + got == len(buf):  # the file grew while read: make room
                buf.extend(bytes(max(got, 1 << 16)))
                view = memoryview(buf)
        return got


def _raw_batches(chunks: Iterable[DoneChunk], batch_bytes: int) -> Iterator[_RawBatch]:
    """Files read back to back into buffers of about ``batch_bytes`` (no copy, no join), with
    each file's line count; a missing, unreadable or cut-short file is a reason, not text."""
    buf = bytearray(batch_bytes)
    used = 0
    batch = _RawBatch([], [], [], memoryview(b""), [])
    for chunk in chunks:
        path = chunk.detections_path
        try:
            size = _read_into(path, buf, used)
        except FileNotFoundError:
            batch.bad.append((chunk, path, "detections file missing although the ledger records a success"))
            continue
        except OSError as exc:
            batch.bad.append((chunk, path, f"cannot read detections ({exc.strerror})"))
            continue
        if size and buf[used + size - 1] != 0x0A:
            batch.bad.append((chunk, path, "last line cut short: not a complete detections file"))
            continue
        batch.chunks.append(chunk)
        batch.counts.append(buf.count(b"\n", used, used + size))
        batch.spans.append((used, size))
        used += size
        if used >= batch_bytes:
            batch.buffer = memoryview(buf)[:used]
            yield batch
            buf, used = bytearray(batch_bytes), 0
            batch = _RawBatch([], [], [], memoryview(b""), [])
    if batch.chunks or batch.bad:
        batch.buffer = memoryview(buf)[:used]
        yield batch


def _ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced on a helper thread, at most ``depth`` ahead (reading overlaps parsing)."""
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
    A helper thread reads the next batch of files while this one is parsed (memory: about three
    batches)."""
    for raw in _ahead(_raw_batches(chunks, batch_bytes), depth=2):
        yield _parse_batch(raw)
