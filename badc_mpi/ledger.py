"""The resume ledger: one append-only record per finished chunk, the truth that resume reads.

``<telemetry>.ledger.jsonl`` sits beside the telemetry of each run. Its first line is a header
naming the run, its manifests and output folder; then rank 0 appends one compact record per final
outcome (``success`` or ``failed``), in the same loop iteration as the telemetry line, flushed at
once and fsynced at least every 100 ms or every 256 records. A worker reports a success only after
the chunk's outputs were fsynced and renamed into place, so a ``success`` record always points at
durable outputs.

Readers (:func:`read_ledger`) tolerate a torn last line (a writer killed mid-write: reported, not
fatal) and refuse anything else that does not parse, naming the file, the line and the fix.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from badc_mpi.errors import StateError

LEDGER_SCHEMA = "badc-mpi.ledger/1"
LEDGER_SUFFIX = ".ledger.jsonl"
SYNC_INTERVAL_S = 0.1
SYNC_RECORDS = 256


def header_record(run_id: str, manifests: list[str], output_dir: str, created_at: str | None) -> dict[str, Any]:
    return {"ledger": LEDGER_SCHEMA, "run_id": run_id, "manifests": manifests, "output_dir": output_dir,
            "created_at": created_at}


def entry_record(chunk: Any, status: str, *, run_id: str, attempts: int, failure_class: str | None,
                 reason: str, finished_at: str | None, has_outputs: bool) -> dict[str, Any]:
    """One final outcome. ``status``: ``success`` or ``failed``."""
    return {"r": chunk.recording_id, "c": chunk.chunk_id, "h": chunk.sha256, "s": status, "a": attempts,
            "f": failure_class, "e": reason[-300:] if reason else "", "t": finished_at, "o": has_outputs,
            "run": run_id}


class LedgerWriter:
    """Append-only, flushed per batch, fsynced in small groups."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived handle
        self._pending = 0
        self._last_sync = time.monotonic()
        self._fh.write(json.dumps(header, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.sync()

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._pending += 1

    def flush(self) -> None:
        """Hand the batch to the OS now; fsync when 100 ms or 256 records have gathered."""
        if not self._pending:
            return
        self._fh.flush()
        if self._pending >= SYNC_RECORDS or time.monotonic() - self._last_sync >= SYNC_INTERVAL_S:
            self.sync()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._pending = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()


@dataclass
class LedgerContents:
    path: str
    header: dict[str, Any]
    entries: list[dict[str, Any]]
    torn: bool  #: the last line was cut short (writer killed mid-write) and was ignored


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
        raise StateError(f"{path}: cannot read the resume ledger ({exc.strerror})",
                         fix="check the path and permissions") from exc
    end = data.rfind(b"\n") + 1
    torn = end < len(data)
    body = data[:end]
    if not body:
        if torn:
            return LedgerContents(path, {}, [], True)
        raise _corrupt(path, 1, "empty file: no header")
    first_end = body.find(b"\n")
    try:
        header = json.loads(body[:first_end])
    except ValueError as exc:
        raise _corrupt(path, 1, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("ledger") != LEDGER_SCHEMA:
        raise _corrupt(path, 1, f"not a {LEDGER_SCHEMA} header")
    entries = _parse_entries(path, body[first_end + 1:])
    return LedgerContents(path, header, entries, torn)


def _parse_entries(path: str, body: bytes) -> list[dict[str, Any]]:
    """Fast path: one json.loads over the lines joined as an array; on failure find the bad line."""
    if not body:
        return []
    try:
        entries = json.loads(b"[" + body.rstrip(b"\n").replace(b"\n", b",") + b"]")
        if all(isinstance(e, dict) and "c" in e and "s" in e for e in entries):
            return entries
    except ValueError:
        pass
    for number, raw in enumerate(body.split(b"\n")[:-1], start=2):
        try:
            entry = json.loads(raw)
        except ValueError as exc:
            raise _corrupt(path, number, f"not JSON: {exc}") from exc
        if not isinstance(entry, dict) or "c" not in entry or "s" not in entry:
            raise _corrupt(path, number, "not a ledger record")
    raise _corrupt(path, 2, "unreadable records")  # pragma: no cover - unreachable
