"""Verifying the store records that ledger lines name (:class:`~badc_mpi.storage.store.StoreRef`).

A ledger success counts only when its record is there and whole: its segment exists and holds the
record's bytes and newline (every record), and, where a crash or a full disk can leave damage, the
bytes' CRC-32 matches. That place is the end of a run's last segment: a segment is fsynced before
the next one is begun, and the store before every ledger fsync, so only records appended since the
last fsync can be missing or torn (a node crash whose kernel wrote the ledger's page before the
store's; a disk that filled mid-write), and they are the last ones written. The CRC is checked
over the last :data:`VERIFY_TAIL_BYTES` of each run's last segment (far more than rank 0 appends
between two fsyncs, 100 ms), the bounds everywhere; reading a 10-million-chunk campaign's ledgers
then costs one ``stat`` per segment and one tail read per run. Pure but for those reads.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from badc_mpi.storage.store import SEGMENT_SUFFIX, store_dir

VERIFY_TAIL_BYTES = 32 << 20  #: bytes at the end of a run's last segment whose records' CRCs are checked


@dataclass
class _RunSegments:
    sizes: dict[int, int]  #: segment seq -> size in bytes
    last: int  #: the last segment's seq (0: none)
    tail_start: int = 0  #: byte offset in the last segment where ``tail`` begins
    tail: bytes = b""


@dataclass
class StoreCheck:
    """Verifies refs of one output folder's runs; segment sizes and tails read once per run."""

    output_dir: str
    runs: dict[str, _RunSegments] = field(default_factory=dict)
    unverified: int = 0  #: records that failed a check so far

    def _segments(self, run_id: str) -> _RunSegments:
        found = self.runs.get(run_id)
        if found is not None:
            return found
        folder, prefix = store_dir(self.output_dir), run_id + "."
        sizes: dict[int, int] = {}
        try:
            names = os.listdir(folder)
        except OSError:
            names = []
        for name in names:
            middle = name[len(prefix) : -len(SEGMENT_SUFFIX)]
            if name.startswith(prefix) and name.endswith(SEGMENT_SUFFIX) and middle.isdigit():
                try:
                    sizes[int(middle)] = os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue
        last = max(sizes, default=0)
        segs = _RunSegments(sizes, last)
        if last:
            path = os.path.join(folder, f"{run_id}.{last:06d}{SEGMENT_SUFFIX}")
            segs.tail_start = max(0, sizes[last] - VERIFY_TAIL_BYTES)
            try:
                with open(path, "rb") as fh:
                    fh.seek(segs.tail_start)
                    segs.tail = fh.read(sizes[last] - segs.tail_start)
            except OSError:
                segs.sizes.pop(last)
        self.runs[run_id] = segs
        return segs

    def verify(self, run_id: str, seq: np.ndarray, offset: np.ndarray, length: np.ndarray, crc: np.ndarray) -> np.ndarray:
        """Which of a run's records (parallel int64 arrays) are there and whole."""
        segs = self._segments(run_id)
        n = len(seq)
        table = np.full(max(segs.sizes, default=0) + 1, -1, dtype=np.int64)
        for s, bytes_ in segs.sizes.items():
            table[s] = bytes_
        inside = (seq >= 0) & (seq < len(table))
        size = np.where(inside, table[np.where(inside, seq, 0)], -1)
        ok = (size >= 0) & (offset >= 0) & (length >= 0) & (offset + length + 1 <= size)
        in_tail = np.flatnonzero(ok & (seq == segs.last) & (offset + length + 1 > segs.tail_start))
        tail, start, crc32, tail_bytes = segs.tail, segs.tail_start, zlib.crc32, len(segs.tail)
        # plain ints (numpy scalars cost ~10x per record): a run's tail holds ~170,000 records
        begins = (offset[in_tail] - start).tolist()
        for i, a, n_bytes, want in zip(in_tail.tolist(), begins, length[in_tail].tolist(), crc[in_tail].tolist(), strict=True):
            if a < 0:  # begins before the tail read: check what was read of it against the length only
                continue
            b = a + n_bytes
            ok[i] = b < tail_bytes and tail[b] == 0x0A and crc32(tail[a:b]) & 0xFFFFFFFF == want
        self.unverified += int(n - ok.sum())
        return ok


__all__ = ["VERIFY_TAIL_BYTES", "StoreCheck"]
