"""Finding chunk keys among a run's chunks without a hash table of strings.

Resume matches every record of earlier runs' ledgers (10,000,000 and more) against the manifests'
keys. :class:`KeyIndex` keeps one sorted ``uint64`` per chunk (8 bytes): the high bits of its
key's hash (:mod:`badc_mpi.inputs.hashing`) with the chunk's index in the low bits, sorted in
place. A block of keys is looked up with ``searchsorted``; every candidate is confirmed by
comparing the key strings themselves, so a hash collision never makes a match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.inputs.chunk_table import BLOCK_ROWS, ChunkSet, digest_prefix, hex_digests
from badc_mpi.inputs.hashing import string_hashes
from badc_mpi.records import Chunk


class KeyIndex:
    """The keys of ``chunks`` (a :class:`ChunkSet`, or any sequence of :class:`Chunk`), by index."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = chunks
        self._keys: pa.Array | None = None
        if isinstance(chunks, ChunkSet):
            packed = _set_hashes(chunks)
        else:
            self._keys = pa.array([c.key for c in chunks], pa.large_string())
            packed = string_hashes(self._keys)
        n = len(packed)
        self.low = np.uint64((1 << max(1, (n - 1).bit_length())) - 1)  #: the bits that hold the index
        self.high = ~self.low
        packed &= self.high
        for start in range(0, n, BLOCK_ROWS):
            packed[start : start + BLOCK_ROWS] |= np.arange(start, min(n, start + BLOCK_ROWS), dtype=np.uint64)
        packed.sort()
        self.packed = packed
        self.run = _longest_run(packed & self.high) if n < BLOCK_ROWS else _longest_run_blocks(packed, self.high)

    def __len__(self) -> int:
        return len(self.packed)

    def keys_at(self, indices: np.ndarray) -> pa.Array:
        """The keys of these indices (large_string)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._keys is not None:
            return self._keys.take(pa.array(indices))
        chunks = self.chunks
        assert isinstance(chunks, ChunkSet)
        rows = chunks.global_rows(indices)
        if len(chunks.tables) == 1:
            return chunks.tables[0].keys_at(rows).cast(pa.large_string())
        table_of = np.searchsorted(chunks.offsets, rows, side="right") - 1
        parts, where = [], []
        for t in np.unique(table_of).tolist():
            at = np.flatnonzero(table_of == t)
            parts.append(chunks.tables[t].keys_at(rows[at] - chunks.offsets[t]).cast(pa.large_string()))
            where.append(at)
        if not parts:
            return pa.array([], pa.large_string())
        return pa.concat_arrays(parts).take(pa.array(np.argsort(np.concatenate(where), kind="stable")))

    def digests_at(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the first 8 bytes of the sha256 as ``uint64``, has a sha256) of these indices."""
        indices = np.asarray(indices, dtype=np.int64)
        chunks = self.chunks
        if not isinstance(chunks, ChunkSet):
            digests, ok = hex_digests(pa.array([chunks[i].sha256 for i in indices.tolist()], pa.string()))
            return digest_prefix(digests), ok
        prefix, has = np.zeros(len(indices), np.uint64), np.zeros(len(indices), bool)
        rows = chunks.global_rows(indices)
        single = len(chunks.tables) == 1
        table_of = None if single else np.searchsorted(chunks.offsets, rows, side="right") - 1
        for t, table in enumerate(chunks.tables):
            if table.digests is None or table.has_digest is None:
                continue
            at = slice(None) if table_of is None else np.flatnonzero(table_of == t)
            local = rows[at] - chunks.offsets[t]
            prefix[at] = digest_prefix(table.digests[local, :8])
            has[at] = table.has_digest[local]
        return prefix, has

    def sources_at(self, indices: np.ndarray) -> np.ndarray:
        """The 64-bit hash of each of these chunks' ``input_path`` (resume compares a record's
        source with it: :func:`~badc_mpi.inputs.hashing.string_hashes` of the same string)."""
        indices = np.asarray(indices, dtype=np.int64)
        chunks = self.chunks
        if not isinstance(chunks, ChunkSet):
            return string_hashes(pa.array([chunks[i].input_path for i in indices.tolist()], pa.string()))
        out = np.zeros(len(indices), np.uint64)
        rows = chunks.global_rows(indices)
        table_of = np.searchsorted(chunks.offsets, rows, side="right") - 1
        for t in np.unique(table_of).tolist():
            at = np.flatnonzero(table_of == t)
            out[at] = chunks.tables[t].input_path_hashes(rows[at] - chunks.offsets[t])
        return out

    def find(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``keys`` are chunks' keys: a mask, the index of each found one, in order)."""
        wanted = string_hashes(keys) & self.high
        n = len(self.packed)
        found = np.zeros(len(keys), dtype=bool)
        index = np.full(len(keys), -1, dtype=np.int64)
        if not n or not len(keys):
            return found, index[found]
        pos = np.searchsorted(self.packed, wanted)
        large = keys.cast(pa.large_string())
        for step in range(self.run):
            at = pos + step
            cand = np.flatnonzero(~found & (at < n))
            entries = self.packed[at[cand]]
            same_hash = (entries & self.high) == wanted[cand]
            cand, entries = cand[same_hash], entries[same_hash]
            if not len(cand):
                break
            indices = (entries & self.low).astype(np.int64)
            same = pc.equal(self.keys_at(indices), large.take(pa.array(cand))).to_numpy(zero_copy_only=False)
            found[cand[same]] = True
            index[cand[same]] = indices[same]
        return found, index[found]


def _set_hashes(chunks: ChunkSet) -> np.ndarray:
    """The key hash of every chunk of the set, in its order (one array, filled table by table)."""
    if len(chunks.tables) == 1 and chunks.positions is None:
        return chunks.tables[0].key_hashes()
    hashes = np.empty(chunks.size, dtype=np.uint64)
    for table, offset in zip(chunks.tables, chunks.offsets):
        hashes[offset : offset + len(table)] = table.key_hashes()
    return hashes if chunks.positions is None else hashes[chunks.positions]


def _longest_run(values: np.ndarray) -> int:
    """The length of the longest run of equal neighbours in sorted ``values`` (1 when all differ)."""
    same = np.flatnonzero(values[1:] == values[:-1])
    if not len(same):
        return 1
    ends = np.flatnonzero(np.diff(same) != 1)
    return 1 + int(np.diff(np.concatenate(([-1], ends, [len(same) - 1]))).max())


def _longest_run_blocks(packed: np.ndarray, high: np.uint64) -> int:
    """:func:`_longest_run` of ``packed & high``, a block at a time (runs across blocks included)."""
    longest = 1
    for start in range(0, len(packed), BLOCK_ROWS):
        part = packed[max(0, start - 1) : start + BLOCK_ROWS] & high  # one before: runs that cross
        if np.any(part[1:] == part[:-1]):
            begin, end = start, start + BLOCK_ROWS  # widen to the whole run(s), then measure
            while begin > 0 and packed[begin - 1] & high == packed[begin] & high:
                begin -= 1
            while end < len(packed) and packed[end] & high == packed[end - 1] & high:
                end += 1
            longest = max(longest, _longest_run(packed[begin:end] & high))
    return longest
