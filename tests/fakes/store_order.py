"""``badc-mpi run`` with rank 0's store and ledger writes observed where they reach the OS, and
every ``os.fsync``, for tests/test_store.py; production code knows nothing of it.

    python tests/fakes/store_order.py LOG [--mutate swap|no-store-sync] -- RUN ARGS...

The seams where bytes reach the OS: the ``open`` of :mod:`badc_mpi.storage.store` gives the same
file stack as the builtin (``FileIO`` -> ``BufferedWriter``) with a ``FileIO`` that logs each write
it passes to the OS; ``os.write`` (the ledger writes with it) logs the ledger's writes; ``os.fsync``
logs the file it syncs. The
run is the real one: the coordinator builds its own Recorder, StoreWriter and LedgerWriter. LOG
gets one JSON line per event: ``{"op": "write"|"fsync", "file": "store"|"ledger"|"other", "keys":
[...]}`` (``keys``: the chunks whose store line or ledger success line the write completed).

``--mutate`` breaks the order on purpose, to show that the check can fail: ``swap`` flushes the
ledger before the store in Recorder.flush; ``no-store-sync`` fsyncs the ledger without syncing
the store first.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from badc_mpi.storage.ledger import LEDGER_SUFFIX

EVENTS: list[dict[str, Any]] = []
_PENDING: dict[str, bytes] = {}


def _kind(path: str) -> str:
    if path.endswith(LEDGER_SUFFIX):
        return "ledger"
    return "store" if f"{os.sep}detections{os.sep}" in path else "other"


def _keys(kind: str, data: bytes) -> list[str]:
    """The chunks named by the lines this write completed (a line split over writes counts once)."""
    text = _PENDING.get(kind, b"") + data
    complete, _, _PENDING[kind] = text.rpartition(b"\n")
    keys = []
    for raw in complete.splitlines():
        rec = json.loads(raw)
        if kind == "store" and "chunk_id" in rec:
            keys.append(f"{rec['recording_id']}/{rec['chunk_id']}")
        elif kind == "ledger" and rec.get("s") == "success":
            keys.append(f"{rec['r']}/{rec['c']}")
    return keys


class ObservedFileIO(io.FileIO):
    def write(self, b: Any) -> int:
        n = super().write(b)
        kind = _kind(str(self.name))
        EVENTS.append({"op": "write", "file": kind, "keys": _keys(kind, bytes(b[:n])) if kind != "other" else []})
        return n


def observed_open(file: Any, mode: str = "r", buffering: int = -1, encoding: str | None = None, **kw: Any) -> Any:
    if "a" not in mode:
        return open(file, mode, buffering, encoding, **kw)
    buffered = io.BufferedWriter(ObservedFileIO(file, "a"), buffer_size=buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE)
    return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding=encoding, **kw)


def install(mutate: str | None = None) -> None:
    from badc_mpi.coordinator import recorder as recorder_mod
    from badc_mpi.storage import ledger as ledger_mod
    from badc_mpi.storage import store as store_mod

    store_mod.open = observed_open  # type: ignore[attr-defined]
    real_write, real_fsync = os.write, os.fsync

    def write(fd: int, data: Any) -> int:
        n = real_write(fd, data)
        if _kind(os.readlink(f"/proc/self/fd/{fd}")) == "ledger":
            EVENTS.append({"op": "write", "file": "ledger", "keys": _keys("ledger", bytes(data[:n]))})
        return n

    os.write = write

    def fsync(fd: int) -> None:
        EVENTS.append({"op": "fsync", "file": _kind(os.readlink(f"/proc/self/fd/{fd}")), "keys": []})
        real_fsync(fd)

    os.fsync = fsync
    if mutate == "swap":

        def swapped_flush(self: Any) -> None:
            self.writer.flush()
            self.ledger.flush()
            if self.store is not None:
                self.store.flush()

        recorder_mod.Recorder.flush = swapped_flush  # type: ignore[method-assign]
    elif mutate == "no-store-sync":
        real_sync = ledger_mod.LedgerWriter.sync

        def sync(self: Any) -> None:
            self.before_sync = None  # whatever the recorder wired in: the ledger syncs alone
            real_sync(self)

        ledger_mod.LedgerWriter.sync = sync  # type: ignore[method-assign]
    elif mutate is not None:
        raise SystemExit(f"--mutate {mutate}: swap or no-store-sync")


def order_violations(events: list[dict[str, Any]]) -> list[str]:
    """What breaks "the ledger calls it done" => "its detections are on disk": a ledger success
    line handed to the OS before its chunk's store line, or fsynced before that store line was."""
    at_os: dict[str, int] = {}  #: chunk -> index of the store write that handed its line to the OS
    durable: dict[str, int] = {}  #: chunk -> index of the store fsync that followed that write
    unsynced: list[str] = []
    ledger_unsynced: list[str] = []
    problems = []
    for i, ev in enumerate(events):
        if ev["file"] == "store" and ev["op"] == "write":
            for key in ev["keys"]:
                at_os.setdefault(key, i)
                unsynced.append(key)
        elif ev["file"] == "store" and ev["op"] == "fsync":
            for key in unsynced:
                durable.setdefault(key, i)
            unsynced = []
        elif ev["file"] == "ledger" and ev["op"] == "write":
            problems += [
                f"event {i}: ledger line of {k} reached the OS before its store line" for k in ev["keys"] if k not in at_os
            ]
            ledger_unsynced += ev["keys"]
        elif ev["file"] == "ledger" and ev["op"] == "fsync":
            problems += [
                f"event {i}: ledger line of {k} fsynced before its store line" for k in ledger_unsynced if k not in durable
            ]
            ledger_unsynced = []
    return problems


def main(argv: list[str]) -> int:
    log, rest = argv[0], argv[1:]
    mutate = None
    if rest[:1] == ["--mutate"]:
        mutate, rest = rest[1], rest[2:]
    assert rest[:1] == ["--"], "usage: store_order.py LOG [--mutate swap|no-store-sync] -- RUN ARGS"
    install(mutate)
    from badc_mpi.cli import main as badc_main

    try:
        return badc_main(rest[1:])
    finally:
        with open(log, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(ev) + "\n" for ev in EVENTS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
