"""The resume ledger: one append-only record per finished chunk, the truth that resume reads.

``<telemetry>.ledger.jsonl`` sits beside the telemetry of each run. Its first line is a header
naming the run, its manifests and output folder; then rank 0 appends one compact record per final
outcome (``success`` or ``failed``), in the same loop iteration as the telemetry line, flushed at
once and fsynced at least every 100 ms. A worker reports a success only after
the chunk's outputs were fsynced and renamed into place, so a ``success`` record always points at
durable outputs.

Readers (:func:`read_ledger`) tolerate a torn last line (a writer killed mid-write: reported, not
fatal) and refuse anything else that does not parse, naming the file, the line and the fix.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from badc_mpi.errors import StateError
from badc_mpi.records import Chunk
from badc_mpi.storage.jsonl import complete_lines, dumps

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
) -> dict[str, Any]:
    """One final outcome. ``status``: ``success`` or ``failed``."""
    return {
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
    }


class LedgerWriter:
    """Append-only, flushed per batch, fsynced in small groups."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any], before_sync: Any = None) -> None:
        self.path = Path(path)
        self.before_sync = before_sync  #: called before every fsync (the detection store syncs first)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a large buffer: lines reach the OS only on flush (the detection store's lines go first)
        self._fh = open(self.path, "a", encoding="utf-8", buffering=BUFFER_BYTES)  # noqa: SIM115 - long-lived handle
        self._pending = 0
        self._last_sync = time.monotonic()
        self._fh.write(json.dumps(header, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.sync()

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(dumps(record) + "\n")
        self._pending += 1

    def flush(self) -> None:
        """Hand the batch to the OS now (a killed process loses nothing); fsync every 100 ms
        (a machine crash loses at most that: the chunks then run again)."""
        if not self._pending:
            return
        self._fh.flush()
        if time.monotonic() - self._last_sync >= SYNC_INTERVAL_S:
            self.sync()

    def sync(self) -> None:
        if self.before_sync is not None:
            self.before_sync()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._pending = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()


#: what resume keeps per chunk, in this order (see :data:`RECORD_FIELDS` indexes)
RECORD_FIELDS = ("s", "h", "o", "a", "f", "e", "t", "run")
STATUS, SHA256, HAS_OUTPUTS, ATTEMPTS, FAILURE_CLASS, ERROR, FINISHED_AT, RUN = range(len(RECORD_FIELDS))


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
SCAN_BLOCK_BYTES = 16 << 20


class _Window(io.RawIOBase):
    """``size`` bytes of an open file from its current offset (the complete record lines)."""

    def __init__(self, fh: Any, size: int) -> None:
        self._fh, self._left = fh, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._left)
        data = self._fh.read(want) if want else b""
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


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


def scan_ledger(
    path: str | os.PathLike[str], convert: Callable[[Any], T], columns: tuple[str, ...] = ("r", "c", "s", "h", "o", "run")
) -> tuple[dict[str, Any], list[T], bool]:
    """(header, ``convert(batch)`` per block of records, torn): a ledger read in blocks of about
    16 MiB with only ``columns`` parsed, so that no record's strings outlive its block. The same
    checks as :func:`read_ledger`: a torn last line is dropped and reported, other damage raises."""
    import pyarrow as pa
    import pyarrow.json as pajson

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
                return {}, [], True
            raise _corrupt(path, 1, "empty file: no header")
        try:
            header = json.loads(first)
        except ValueError as exc:
            raise _corrupt(path, 1, f"header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or header.get("ledger") != LEDGER_SCHEMA:
            raise _corrupt(path, 1, f"not a {LEDGER_SCHEMA} header")
        end = _complete_end(fh, size)
        torn = end < size
        if end <= len(first):
            return header, [], torn
        fh.seek(len(first))
        schema = pa.schema([f for f in _schema() if f.name in columns])
        out = []
        try:
            reader = pajson.open_json(
                _Window(fh, end - len(first)),
                read_options=pajson.ReadOptions(block_size=SCAN_BLOCK_BYTES),
                parse_options=pajson.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="ignore", newlines_in_values=False
                ),
            )
            for batch in reader:
                if any(batch.column(name).null_count for name in ("r", "c", "s") if name in columns):
                    raise ValueError("a record without r, c or s")
                out.append(convert(batch))
        except (pa.ArrowInvalid, ValueError):
            fh.seek(len(first))
            _locate_damage(path, fh.read(end - len(first)))
            raise _corrupt(path, 2, "unreadable records") from None  # pragma: no cover - located above
    return header, out, torn
