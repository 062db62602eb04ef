"""The monitor's I/O: a growing telemetry file read incrementally, and its summary's head.

:class:`TelemetryTail` keeps its byte offset and hands out blocks of complete lines; a torn last
line waits in ``partial`` until its newline arrives. A file that shrank below the offset, whose
first bytes changed, or that another file replaced (new inode) is read again from the start and
reported as replaced. :class:`SummaryWatcher` re-reads ``<telemetry>.summary.json`` only when it
changed, and then only its head (state, counts, workers): a 1,000,000-chunk summary is hundreds
of MB, its head a few KB.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the summary's states that mean the run is over (``coordinator/run.py``)
FINAL_STATES = frozenset({"finished", "interrupted", "stopped", "aborted"})
#: where the summary's head ends (``storage.summary.render_summary`` writes the chunks last)
CHUNKS_KEY = b',"chunks":{'
_HEAD_PROBE_BYTES = 256  # a rewritten file is noticed by its first bytes
_SUMMARY_FIRST_READ_BYTES = 64 << 10
_SUMMARY_HEAD_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class TailStatus:
    """What one look at the telemetry file found."""

    exists: bool
    size_bytes: int
    replaced: str | None = None  #: why the reader started over from byte 0, or None


class TelemetryTail:
    """Incremental reader of one telemetry file: ``check()``, then ``blocks()``."""

    def __init__(self, path: str | os.PathLike[str], block_bytes: int = 32 << 20) -> None:
        self.path = Path(path)
        self.block_bytes = block_bytes
        self.offset_bytes = 0  #: bytes consumed from the file, the torn tail in ``partial`` included
        self.partial = b""  #: an unterminated last line, kept until its newline arrives
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._head = b""
        self._end_bytes = 0
        self._buf = bytearray()

    def check(self) -> TailStatus:
        """Stat the file; (re)open it when it appeared, was replaced or shrank."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return TailStatus(False, 0)
        replaced = None
        if self._fd is not None:
            if (st.st_dev, st.st_ino) != self._ident:
                replaced = "was replaced by another file"
            elif st.st_size < self.offset_bytes:
                replaced = f"shrank to {st.st_size:,} bytes (below the {self.offset_bytes:,} already read)"
            elif self._head and os.pread(self._fd, len(self._head), 0) != self._head:
                replaced = "was rewritten (its first line changed)"
        if replaced or self._fd is None:
            self._open()
        self._end_bytes = st.st_size
        return TailStatus(True, st.st_size, replaced)

    def _open(self) -> None:
        self.close()
        self._fd = os.open(self.path, os.O_RDONLY)
        fst = os.fstat(self._fd)
        self._ident = (fst.st_dev, fst.st_ino)
        self.offset_bytes, self.partial, self._head = 0, b"", b""

    def blocks(self) -> Iterator[memoryview]:
        """Blocks of complete lines up to the size the last ``check()`` saw (a file that grows
        while read is finished on the next call). Each block is a view into one reused buffer:
        valid until the next block is asked for (copy it with ``bytes()`` to keep it)."""
        if self._fd is None:
            return
        while self.offset_bytes < self._end_bytes:
            want = min(self.block_bytes, self._end_bytes - self.offset_bytes)
            keep = len(self.partial)
            if len(self._buf) < keep + want:
                self._buf = bytearray(keep + want)
            self._buf[:keep] = self.partial
            got = os.preadv(self._fd, [memoryview(self._buf)[keep : keep + want]], self.offset_bytes)
            if got <= 0:
                break
            if self.offset_bytes == 0:
                self._head = bytes(self._buf[: min(got, _HEAD_PROBE_BYTES)])
            self.offset_bytes += got
            end = keep + got
            cut = self._buf.rfind(b"\n", 0, end) + 1
            self.partial = bytes(self._buf[cut:end])
            if cut:
                yield memoryview(self._buf)[:cut]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class SummaryHead:
    """The parts of a run's summary the monitor uses."""

    run_id: str | None
    state: str | None  #: ``running`` | ``finished`` | ``interrupted`` | ``stopped`` | ``aborted``
    total: int | None  #: chunks of the run, resume's carried ones included
    skipped: int  #: chunks an earlier run finished (resume)
    counts: dict[str, int] = field(default_factory=dict)
    written_at_s: float = 0.0  #: the file's mtime

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def parse_summary_head(data: bytes, *, complete: bool, written_at_s: float = 0.0) -> SummaryHead | None:
    """The head of a summary document from its first bytes (pure). None when ``data`` does not
    reach the end of the head yet (and is not the whole file), or is not a summary."""
    cut = data.find(CHUNKS_KEY)
    try:
        if cut >= 0:
            doc = json.loads(data[:cut] + b"}")
        elif complete:
            doc = json.loads(data)
        else:
            return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("counts"), dict):
        return None
    counts = {k: v for k, v in doc["counts"].items() if isinstance(v, int)}
    return SummaryHead(
        run_id=_str_or_none(doc.get("run_id")),
        state=_str_or_none(doc.get("state")),
        total=counts.get("total"),
        skipped=counts.get("skipped", 0),
        counts=counts,
        written_at_s=written_at_s,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class SummaryWatcher:
    """The summary sidecar's head, re-read only when the file changed (inode, mtime, size)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.head: SummaryHead | None = None
        self._key: tuple[int, int, int] | None = None

    def poll(self) -> SummaryHead | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.head, self._key = None, None
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._key = key
            self.head = self._read(st.st_size, st.st_mtime)
        return self.head

    def _read(self, size_bytes: int, mtime_s: float) -> SummaryHead | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(_SUMMARY_FIRST_READ_BYTES)
                while True:
                    complete = len(data) >= size_bytes
                    head = parse_summary_head(data, complete=complete, written_at_s=mtime_s)
                    if head is not None or complete or len(data) >= _SUMMARY_HEAD_MAX_BYTES:
                        return head
                    more = fh.read(len(data))
                    if not more:
                        return parse_summary_head(data, complete=True, written_at_s=mtime_s)
                    data += more
        except OSError:
            return None
