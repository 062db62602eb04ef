"""Finding chunk keys among a run's chunks without a hash table of strings.

Resume matches every record of earlier runs' ledgers (10,000,000 and more) against the manifests'
keys. :class:`KeyIndex` keeps the chunks' key hashes (:mod:`badc_mpi.inputs.hashing`) sorted,
with the index each came from: 12 bytes per chunk. A block of keys is looked up with
``searchsorted``; every candidate is confirmed by comparing the key strings themselves, so a hash
collision never makes a match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.inputs.chunk_table import ChunkSet, digest_prefix, hex_digests
from badc_mpi.inputs.hashing import string_hashes
from badc_mpi.records import Chunk


class KeyIndex:
    """The keys of ``chunks`` (a :class:`ChunkSet`, or any sequence of :class:`Chunk`), by index."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = chunks
        self._keys: pa.Array | None = None
        if isinstance(chunks, ChunkSet):
            hashes = np.concatenate([t.key_hashes() for t in chunks.tables]) if chunks.tables else np.zeros(0, np.uint64)
            if chunks.positions is not None:
                hashes = hashes[chunks.positions]
        else:
            self._keys = pa.array([c.key for c in chunks], pa.large_string())
            hashes = string_hashes(self._keys)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        del hashes
        self.order = order.astype(np.int32) if len(order) < 2**31 else order
        del order
        self.run = _longest_run(self.hashes)  #: the most indices one hash has (1 unless keys collide)

    def __len__(self) -> int:
        return len(self.hashes)

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
        merged = pa.concat_arrays(parts)
        return merged.take(pa.array(np.argsort(np.concatenate(where), kind="stable")))

    def digests_at(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the first 8 bytes of the sha256 as ``uint64``, has a sha256) of these indices."""
        indices = np.asarray(indices, dtype=np.int64)
        prefix, has = np.zeros(len(indices), np.uint64), np.zeros(len(indices), bool)
        chunks = self.chunks
        if not isinstance(chunks, ChunkSet):
            digests, ok = hex_digests(pa.array([chunks[i].sha256 for i in indices.tolist()], pa.string()))
            return digest_prefix(digests), ok
        rows = chunks.global_rows(indices)
        table_of = np.searchsorted(chunks.offsets, rows, side="right") - 1
        for t, table in enumerate(chunks.tables):
            if table.digests is None or table.has_digest is None:
                continue
            at = np.flatnonzero(table_of == t)
            local = rows[at] - chunks.offsets[t]
            prefix[at] = digest_prefix(table.digests[local, :8])
            has[at] = table.has_digest[local]
        return prefix, has

    def find(self, keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``keys`` are chunks' keys: a mask, the index of each found one, in order)."""
        hashes = string_hashes(keys)
        n = len(self.hashes)
        found = np.zeros(len(keys), dtype=bool)
        index = np.full(len(keys), -1, dtype=np.int64)
        if not n or not len(keys):
            return found, index[found]
        pos = np.searchsorted(self.hashes, hashes)
        large = keys.cast(pa.large_string())
        for step in range(self.run):
            at = pos + step
            cand = np.flatnonzero(~found & (at < n))
            cand = cand[self.hashes[at[cand]] == hashes[cand]]
            if not len(cand):
                break
            indices = self.order[at[cand]].astype(np.int64)
            same = pc.equal(self.keys_at(indices), large.take(pa.array(cand))).to_numpy(zero_copy_only=False)
            found[cand[same]] = True
            index[cand[same]] = indices[same]
        return found, index[found]


def _longest_run(values: np.ndarray) -> int:
    """The length of the longest run of equal neighbours in sorted ``values`` (1 when all differ)."""
    same = np.flatnonzero(values[1:] == values[:-1])
    if not len(same):
        return 1
    ends = np.flatnonzero(np.diff(same) != 1)
    return 1 + int(np.diff(np.concatenate(([-1], ends, [len(same) - 1]))).max())
