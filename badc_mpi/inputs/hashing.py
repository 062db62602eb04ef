"""64-bit hashes of Arrow strings, vectorised with numpy: no Python string per row.

Rank 0 matches millions of chunk keys (the duplicate check across a manifest's blocks, resume
matching ledger records against the manifests) without a hash table of strings: each key becomes
one ``uint64``, the manifest's hashes are sorted once, and candidates found by ``searchsorted``
are confirmed by comparing the strings themselves, so a collision never decides anything.

The hash of a string depends only on its bytes (never on the block it was read in): its length,
then each 8-byte word (little-endian, the last one zero-padded), mixed multiply-xorshift, and a
splitmix64 finaliser.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_K0 = np.uint64(0x9E3779B97F4A7C15)
_K1 = np.uint64(0xBF58476D1CE4E5B9)
_K2 = np.uint64(0x94D049BB133111EB)
_S27, _S29, _S30, _S31 = (np.uint64(s) for s in (27, 29, 30, 31))
_TAIL = np.array([0] + [(1 << (8 * k)) - 1 for k in range(1, 8)] + [(1 << 64) - 1], dtype=np.uint64)
SUB_ROWS = 1 << 15  #: rows hashed at a time (bounds the temporaries)


def string_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``uint64`` hash per string (nulls hash like empty strings)."""
    if isinstance(values, pa.ChunkedArray):
        parts = [string_hashes(chunk) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    n = len(values)
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    wide = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if wide else np.int32)[values.offset : values.offset + n + 1]
    data_buf = values.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    for start in range(0, n, SUB_ROWS):
        stop = min(n, start + SUB_ROWS)
        out[start:stop] = _hash_rows(data, offsets[start : stop + 1].astype(np.int64))
    return out


def _hash_rows(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    first, last = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(last - first + 8, dtype=np.uint8)  # the rows' bytes, 8 zero bytes after
    padded[: last - first] = data[first:last]
    words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))  # 8 bytes at any offset
    starts = offsets[:-1] - first
    lengths = np.diff(offsets)
    h = lengths.astype(np.uint64) * _K0
    for word in range((int(lengths.max()) + 7) // 8 if len(lengths) else 0):
        left = lengths - 8 * word
        live = np.flatnonzero(left > 0)
        if len(live) < len(lengths):
            left, starts_ = left[live], starts[live]
        else:
            starts_ = starts
        w = words[starts_ + 8 * word] & _TAIL[np.minimum(left, 8)]
        x = (h[live] ^ w) * _K1
        x ^= x >> _S29
        h[live] = x
    h ^= h >> _S30
    h *= _K1
    h ^= h >> _S27
    h *= _K2
    h ^= h >> _S31
    return h
