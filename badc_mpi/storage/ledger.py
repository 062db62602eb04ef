"""The resume ledger: one append-only record per finished chunk, the truth that resume reads.

``<telemetry>.ledger.jsonl`` sits beside the telemetry of each run. Its first line is a header
naming the run, its manifests and output folder; then rank 0 appends one compact record per final
outcome (``success`` or ``failed``), in the same loop iteration as the telemetry line, flushed at
once and fsynced at least every 100 ms. A worker reports a success only after
the chunk's outputs were fsynced and renamed into place, so a ``success`` record always points at
durable outputs. In the detection store's layout a success names its record (``g`` segment, ``x``
offset, ``l`` length, ``k`` CRC-32: :class:`~badc_mpi.storage.store.StoreRef`): readers verify
it, so a ledger page that reached the disk before the store's (a node crash) or a store line torn
by a full disk never counts as done (:mod:`badc_mpi.storage.store_check`).

The writer keeps its lines itself until :meth:`LedgerWriter.flush` writes them with ``os.write``:
nothing reaches the file behind the caller's back (no buffer flushed at exit after a failed store
write), and lines whose store records could not be written can be dropped
(:meth:`LedgerWriter.drop_successes`).

Readers (:func:`read_ledger`) tolerate a torn last line (a writer killed mid-write: reported, not
fatal) and refuse anything else that does not parse, naming the file, the line and the fix.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from badc_mpi.errors import StateError
from badc_mpi.records import Chunk
from badc_mpi.storage.jsonl import complete_lines, dumps
from badc_mpi.storage.store import StoreRef

T = TypeVar("T")
LEDGER_SCHEMA = "badc-mpi.ledger/1"
LEDGER_SUFFIX = ".ledger.jsonl"
SYNC_INTERVAL_S = 0.1
BUFFER_BYTES = 1 << 20  #: lines written before the buffer could flush by itself: far more than STORE_AHEAD


def header_record(
    run_id: str,
    manifests: list[str],
    output_dir: str,
    created_at: str | None,
    fingerprint: dict[str, Any] | None = None,
    layout: str = "per-chunk",
) -> dict[str, Any]:
    """The first line: the run, its manifests and output folder, and the fingerprint of what
    determines its detections (resume compares it)."""
    return {
        "ledger": LEDGER_SCHEMA,
        "run_id": run_id,
        "manifests": manifests,
        "output_dir": output_dir,
        "created_at": created_at,
        "fingerprint": fingerprint,
        "layout": layout,  #: where successes' detections are: ``store`` (detection store) | ``per-chunk``
    }


def entry_record(
    chunk: Chunk,
    status: str,
    *,
    run_id: str,
    attempts: int,
    failure_class: str | None,
    reason: str,
    finished_at: str | None,
    has_outputs: bool,
    ref: StoreRef | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """One final outcome. ``status``: ``success`` or ``failed``; ``ref``: a success's store record;
    ``device``: the device kind that made it, in a run of CPU and GPU ranks (``d``);
    ``p``: the audio it was made from (the chunk's absolute input path): resume and bundles count a
    record only for that source."""
    record = {
        "r": chunk.recording_id,
        "c": chunk.chunk_id,
        "h": chunk.sha256,
        "s": status,
        "a": attempts,
        "f": failure_class,
        "e": reason[-300:] if reason else "",
        "t": finished_at,
        "o": has_outputs,
        "run": run_id,
        "p": chunk.input_path,
    }
    if ref is not None:
        record.update(g=ref.seq, x=ref.offset, l=ref.length, k=ref.crc32)
    if device is not None:
        record["d"] = device
    return record


class LedgerWriter:
    """Append-only, written per batch with ``os.write``, fsynced in small groups."""

    def __init__(
        self, path: str | os.PathLike[str], header: dict[str, Any], before_sync: Any = None, *, exclusive: bool = False
    ) -> None:
        """``exclusive``: create the file (FileExistsError when it exists: never two runs in one ledger)."""
        self.path = Path(path)
        self.before_sync = before_sync  #: called before every fsync (the detection store syncs first)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_EXCL if exclusive else 0)
        self._fd = os.open(self.path, flags, 0o644)
        self._lines: list[str] = []  #: appended, not yet written
        self._successes: list[int] = []  #: indexes in _lines of success records
        self._unsynced = False
        self._last_sync = time.monotonic()
        self._write_all((json.dumps(header, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
        self.sync()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a short write (a disk filling up) goes on until it raises
            view = view[os.write(self._fd, view) :]
        self._unsynced = True

    def append(self, record: dict[str, Any]) -> None:
        if record.get("s") == "success":
            self._successes.append(len(self._lines))
        self._lines.append(dumps(record) + "\n")

    def drop_successes(self) -> int:
        """Forget the success lines not yet written (their store records could not be written);
        their chunks then run again on resume. Returns how many."""
        dropped = len(self._successes)
        for i in reversed(self._successes):
            del self._lines[i]
        self._successes = []
        return dropped

    def flush(self) -> None:
        """Hand the batch to the OS now (a killed process loses nothing); fsync every 100 ms
        (a machine crash loses at most that: the chunks then run again)."""
        if self._lines:
            data = "".join(self._lines).encode("utf-8")
            self._lines, self._successes = [], []
            self._write_all(data)
        if self._unsynced and time.monotonic() - self._last_sync >= SYNC_INTERVAL_S:
            self.sync()

    def sync(self) -> None:
        if self.before_sync is not None:
            self.before_sync()
        if self._lines:
            data = "".join(self._lines).encode("utf-8")
            self._lines, self._successes = [], []
            self._write_all(data)
        os.fsync(self._fd)
        self._unsynced = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1


#: what resume keeps per chunk, in this order (see :data:`RECORD_FIELDS` indexes)
RECORD_FIELDS = ("s", "h", "o", "a", "f", "e", "t", "run", "g", "x", "l", "k", "p")
STATUS, SHA256, HAS_OUTPUTS, ATTEMPTS, FAILURE_CLASS, ERROR, FINISHED_AT, RUN, SEGMENT, OFFSET, LENGTH, CRC32, SOURCE = range(
    len(RECORD_FIELDS)
)
REF_FIELDS = ("g", "x", "l", "k")  #: a success's store record (null in per-chunk runs and older ledgers)


def record_applies(record: tuple[Any, ...], chunk: Chunk) -> bool:
    """Whether a ledger record was made from this chunk's audio (pure). A sha256 in the manifest
    must be the record's; a source path in the record (``p``, written since ledger lines carry it)
    must be the chunk's input path, unless both sha256 agree (the same content, moved). A record
    without ``p`` (an older badc-mpi) is matched by key and sha256 alone, as then."""
    sha = chunk.sha256
    if sha is not None and record[SHA256] != sha:
        return False
    source = record[SOURCE] if len(record) > SOURCE else None
    return source is None or source == chunk.input_path or sha is not None


def why_not_applies(records: list[tuple[Any, ...]], chunk: Chunk) -> str:
    """The note for a chunk none of whose records applies (:func:`record_applies`)."""
    if chunk.sha256 is not None and all(r[SHA256] != chunk.sha256 for r in records):
        return "sha256 changed in the manifest since its last result: run it again"
    return "its records were made from another audio file (source path differs from the manifest's): run it again"


@dataclass
class LedgerContents:
    path: str
    header: dict[str, Any]
    records: dict[str, tuple[Any, ...]]  #: ``recording_id/chunk_id`` -> RECORD_FIELDS values (last wins)
    lines: int  #: record lines read
    torn: bool  #: the last line was cut short (writer killed mid-write) and was ignored

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The records as dicts (slow; for tools and tests)."""
        out = []
        for key, values in self.records.items():
            rec, chunk = key.split("/", 1)
            out.append({"r": rec, "c": chunk, **dict(zip(RECORD_FIELDS, values))})
        return out


def _corrupt(path: str, line: int, why: str) -> StateError:
    return StateError(
        f"{path}, line {line}: the resume ledger is corrupt ({why})",
        fix="restore it from a backup, or move it aside and resume from the run's summary with "
        "--resume-summary (chunks it lists as done are then trusted; others run again)",
    )


def read_ledger(path: str | os.PathLike[str]) -> LedgerContents:
    """Parse a ledger; a torn last line is dropped and reported, any other damage is an error."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise StateError(f"{path}: cannot read the resume ledger ({exc.strerror})", fix="check the path and permissions") from exc
    body, torn = complete_lines(data)
    if not body:
        if torn:
            return LedgerContents(path, {}, {}, 0, True)
        raise _corrupt(path, 1, "empty file: no header")
    first_end = body.find(b"\n")
    try:
        header = json.loads(body[:first_end])
    except ValueError as exc:
        raise _corrupt(path, 1, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("ledger") != LEDGER_SCHEMA:
        raise _corrupt(path, 1, f"not a {LEDGER_SCHEMA} header")
    records, lines = _parse_records(path, body[first_end + 1 :])
    return LedgerContents(path, header, records, lines, torn)


def _schema() -> Any:
    import pyarrow as pa

    text = pa.string()
    return pa.schema(
        [
            ("r", text),
            ("c", text),
            ("h", text),
            ("s", text),
            ("a", pa.int64()),
            ("f", text),
            ("e", text),
            ("t", text),
            ("o", pa.bool_()),
            ("run", text),
            ("g", pa.int64()),
            ("x", pa.int64()),
            ("l", pa.int64()),
            ("k", pa.int64()),
            ("p", text),
        ]
    )


def _parse_records(path: str, body: bytes) -> tuple[dict[str, tuple[Any, ...]], int]:
    """Columnar fast path (pyarrow's JSON reader); on any failure, find and name the bad line."""
    if not body:
        return {}, 0
    import pyarrow as pa
    import pyarrow.json as pajson

    try:
        table = pajson.read_json(
            pa.BufferReader(body),
            parse_options=pajson.ParseOptions(
                explicit_schema=_schema(), unexpected_field_behavior="ignore", newlines_in_values=False
            ),
        )
        cols = {name: table.column(name).to_pylist() for name in ("r", "c", *RECORD_FIELDS)}
        if None in cols["r"] or None in cols["c"] or None in cols["s"]:
            raise ValueError("a record without r, c or s")
    except (pa.ArrowInvalid, ValueError):
        _locate_damage(path, body)
        raise _corrupt(path, 2, "unreadable records") from None  # pragma: no cover - located above
    keys = [f"{r}/{c}" for r, c in zip(cols["r"], cols["c"])]
    values = zip(*(cols[name] for name in RECORD_FIELDS))
    return dict(zip(keys, values)), len(keys)


def _locate_damage(path: str, body: bytes) -> None:
    for number, raw in enumerate(body.split(b"\n")[:-1], start=2):
        try:
            entry = json.loads(raw)
        except ValueError as exc:
            raise _corrupt(path, number, f"not JSON: {exc}") from exc
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("r", "c", "s")):
            raise _corrupt(path, number, "not a ledger record")


# -- streaming: a 10,000,000-record ledger read block by block -----------------------------
SCAN_BLOCK_BYTES = 4 << 20  #: ledger bytes parsed at a time (two blocks in memory: one parsed ahead)
SCAN_COLUMNS = ("r", "c", "s", "h", "o", "run", *REF_FIELDS, "p")


def _complete_end(fh: Any, size: int) -> int:
    """The offset just after the file's last newline (0 when it has none)."""
    end, step = size, 1 << 16
    while end > 0:
        start = max(0, end - step)
        fh.seek(start)
        found = fh.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def ledger_head(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int, bool]:
    """(header, offset of the first record, offset after the last complete line, torn): the header
    checked and the records' extent found, without reading the records. A file that is only a
    torn first line gives ``({}, 0, 0, True)``."""
    path = str(path)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StateError(f"{path}: cannot read the resume ledger ({exc.strerror})", fix="check the path and permissions") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        first = fh.readline()
        if not first.endswith(b"\n"):
            if first:
                return {}, 0, 0, True
            raise _corrupt(path, 1, "empty file: no header")
        try:
            header = json.loads(first)
        except ValueError as exc:
            raise _corrupt(path, 1, f"header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or header.get("ledger") != LEDGER_SCHEMA:
            raise _corrupt(path, 1, f"not a {LEDGER_SCHEMA} header")
        end = _complete_end(fh, size)
    return header, len(first), max(end, len(first)), end < size


def iter_ledger(path: str | os.PathLike[str], columns: tuple[str, ...] = SCAN_COLUMNS) -> Iterator[Any]:
    """The records of a ledger as Arrow record batches of about SCAN_BLOCK_BYTES, only ``columns``
    parsed, so that no record's strings outlive their block. The checks of :func:`read_ledger`: a
    torn last line is left out (:func:`ledger_head` reports it), other damage raises.

    The next block is parsed on a second thread while the caller works on this one (the JSON
    parser releases the GIL): at most two blocks are in memory."""
    import pyarrow as pa
    import pyarrow.json as pajson

    path = str(path)
    _, start, end, _ = ledger_head(path)
    if end <= start:
        return
    schema = pa.schema([f for f in _schema() if f.name in columns])
    read = pajson.ReadOptions(use_threads=False, block_size=SCAN_BLOCK_BYTES + 1)
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore", newlines_in_values=False)

    def parsed(block: Any) -> list[Any]:
        batches = pajson.read_json(pa.BufferReader(block), read_options=read, parse_options=parse).to_batches()
        if any(b.column(name).null_count for b in batches for name in ("r", "c", "s") if name in columns):
            raise ValueError("a record without r, c or s")
        return batches

    with open(path, "rb") as fh, ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-parse") as pool:
        fh.seek(start)
        try:
            blocks = _line_blocks(fh, end - start)
            ahead = [pool.submit(parsed, block) for block in itertools.islice(blocks, 1)]
            while ahead:
                batches = ahead.pop().result()
                ahead = [pool.submit(parsed, block) for block in itertools.islice(blocks, 1)]
                yield from batches
        except (pa.ArrowInvalid, ValueError):
            for pending in ahead:
                pending.cancel()
            fh.seek(start)
            _locate_damage(path, fh.read(end - start))
            raise _corrupt(path, 2, "unreadable records") from None  # pragma: no cover - located above


def _line_blocks(fh: Any, size: int) -> Iterator[Any]:
    """``size`` bytes of ``fh`` (complete lines) in blocks of about SCAN_BLOCK_BYTES, each ending
    at a line's end: read here, one at a time (pyarrow's streaming reader would read far ahead)."""
    import pyarrow as pa

    carry = b""
    while size > 0:
        data = carry + fh.read(min(SCAN_BLOCK_BYTES, size))
        size -= len(data) - len(carry)
        if len(data) == len(carry):  # pragma: no cover - the file shrank while read
            break
        cut = len(data) if size <= 0 else data.rfind(b"\n") + 1
        if cut:
            yield pa.py_buffer(data).slice(0, cut)
        carry = data[cut:]


def scan_ledger(
    path: str | os.PathLike[str], convert: Callable[[Any], T], columns: tuple[str, ...] = SCAN_COLUMNS
) -> tuple[dict[str, Any], list[T], bool]:
    """(header, ``convert(batch)`` per block of records, torn): :func:`iter_ledger`, collected."""
    header, _, _, torn = ledger_head(path)
    return header, [convert(batch) for batch in iter_ledger(path, columns)], torn
