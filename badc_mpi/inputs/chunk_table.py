"""A manifest's chunks kept as columns: a :class:`~badc_mpi.records.Chunk` exists only while used.

Rank 0 of a 10,000,000-chunk campaign cannot hold a Python object per chunk (about 1 KiB each, with
their strings). :class:`ChunkTable` keeps one manifest's validated rows as compact columns:
recording ids, notes and extra columns dictionary-encoded (an ``int32`` code per row), chunk ids
and file names as one Arrow string array, the source folder as a code into a small table of folders
(and of their absolute forms, so ``input_path`` costs no string per row), integers as ``int64``
with ``-1`` for "empty", sha256 as 32 raw bytes. :meth:`ChunkTable.chunks_at` builds the
:class:`Chunk` records of a few rows (a dispatch, a report); the table is also a read-only
sequence of chunks, so code that iterates a manifest keeps working (built block by block).

:class:`ChunkSet` is the run's queue over one or more tables: global positions, in dispatch order.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.inputs.hashing import string_hashes
from badc_mpi.records import Chunk

NONE_INT = -1  #: an empty start_ms / end_ms / overlap_ms
BLOCK_ROWS = 1 << 16  #: rows built at a time when a table is iterated
_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def hex_digests(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """64-hex-digit strings as ``(n, 32)`` raw bytes and a mask of the rows that hold one (null,
    another length or a non-hex character: False, bytes zero). Vectorised: no string per row."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    arr = arr.cast(pa.large_string())
    n = len(arr)
    out = np.zeros((n, 32), dtype=np.uint8)
    if n == 0:
        return out, np.zeros(0, dtype=bool)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    ok = np.diff(offsets) == 64
    if arr.null_count:
        ok &= arr.is_valid().to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(ok)
    for start in range(0, len(rows), BLOCK_ROWS):
        part = rows[start : start + BLOCK_ROWS]
        nibbles = _HEX[data[offsets[part][:, None] + np.arange(64)]]
        good = (nibbles != 255).all(axis=1)
        ok[part[~good]] = False
        out[part[good]] = (nibbles[good, 0::2] << 4) | nibbles[good, 1::2]
    return out, ok


def digest_prefix(digests: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each digest as a big-endian ``uint64`` (resume compares these)."""
    return np.ascontiguousarray(digests[:, :8]).view(">u8").ravel().astype(np.uint64)


#: a value of a dictionary-encoded column: ``str``, or ``str | None`` where a value may be missing
V = TypeVar("V")


@dataclass(frozen=True, eq=False)
class Codes(Generic[V]):
    """A dictionary-encoded string column: ``values[codes[row]]``."""

    codes: np.ndarray
    values: list[V]

    @staticmethod
    def encode(column: pa.ChunkedArray | pa.Array) -> Codes[str]:
        distinct = pc.unique(column)  # in order of first appearance
        codes = pc.index_in(column, value_set=distinct)
        if isinstance(codes, pa.ChunkedArray):
            codes = codes.combine_chunks()
        return Codes(codes.to_numpy().astype(np.int32), distinct.to_pylist())

    def at(self, rows: np.ndarray) -> list[V]:
        return list(map(self.values.__getitem__, self.codes[rows].tolist()))


class _Chunks(Sequence[Chunk]):
    """A read-only sequence of chunks built on demand by ``chunks_at`` (never all at once)."""

    def chunks_at(self, indices: Sequence[int] | np.ndarray) -> list[Chunk]:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Chunk: ...
    @overload
    def __getitem__(self, index: slice) -> list[Chunk]: ...
    def __getitem__(self, index: int | slice) -> Chunk | list[Chunk]:
        if isinstance(index, slice):
            return self.chunks_at(np.arange(len(self))[index])
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        return self.chunks_at(np.array([index % n]))[0]

    def __iter__(self) -> Iterator[Chunk]:
        for start in range(0, len(self), BLOCK_ROWS):
            yield from self.chunks_at(np.arange(start, min(len(self), start + BLOCK_ROWS)))


@dataclass(frozen=True, eq=False)
class ChunkTable(_Chunks):
    """One manifest's chunks as columns (built by :func:`badc_mpi.inputs.manifest.load_manifest`)."""

    manifest: str  #: absolute path of the manifest
    recording: Codes[str]
    chunk_ids: pa.Array  #: string
    folder_codes: np.ndarray  #: int32 code of the source's folder (the part before the last ``/``)
    folders: list[str | None]  #: as written (None: no folder)
    prefixes: list[str]  #: each folder's absolute, normalised form, with a trailing ``/``
    names: pa.Array  #: string: the source's last component
    ints: dict[str, np.ndarray]  #: ``start_ms``, ``end_ms``, ``overlap_ms`` present: int64, -1 = empty
    digests: np.ndarray | None  #: ``(n, 32)`` uint8 sha256, or None when no row has one
    has_digest: np.ndarray | None  #: bool per row
    notes: Codes[str] | None
    extra: tuple[tuple[str, Codes[str]], ...]  #: the metadata columns, in header order
    lines: range | np.ndarray  #: a range, or an int64 array when rows span several lines
    odd_inputs: dict[int, str] = field(default_factory=dict)  #: input paths of names like "." or ".."

    # -- the sequence of chunks ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.folder_codes)

    def __repr__(self) -> str:
        return f"ChunkTable({self.manifest!r}, {len(self)} chunks)"

    # -- building records ----------------------------------------------------------------
    def chunks_at(self, rows: Sequence[int] | np.ndarray) -> list[Chunk]:
        """The :class:`Chunk` records of ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return []
        taken = pa.array(rows)
        names = self.names.take(taken).to_pylist()
        codes = self.folder_codes[rows].tolist()
        folders, prefixes, odd = self.folders, self.prefixes, self.odd_inputs
        sources = [n if folders[f] is None else f"{folders[f]}/{n}" for f, n in zip(codes, names)]
        inputs = [prefixes[f] + n for f, n in zip(codes, names)]
        for i, row in enumerate(rows.tolist()) if odd else ():
            if row in odd:
                inputs[i] = odd[row]
        nothing: list[Any] = [None] * len(rows)  # a column no row has (int or str alike)
        ints = [
            [None if v < 0 else v for v in self.ints[name][rows].tolist()] if name in self.ints else nothing
            for name in ("start_ms", "end_ms", "overlap_ms")
        ]
        sha: list[str | None] = nothing
        if self.digests is not None and self.has_digest is not None:
            text = self.digests[rows].tobytes().hex()
            sha = [text[64 * i : 64 * i + 64] if ok else None for i, ok in enumerate(self.has_digest[rows].tolist())]
        notes = self.notes.at(rows) if self.notes is not None else [""] * len(rows)
        extra: list[tuple[tuple[str, str], ...]] = [()] * len(rows)
        if self.extra:
            columns = [[(name, v) for v in codes_.at(rows)] for name, codes_ in self.extra]
            extra = list(zip(*columns))
        lines = self.lines
        fields = (
            self.recording.at(rows),
            self.chunk_ids.take(taken).to_pylist(),
            sources,
            inputs,
            *ints,
            sha,
            notes,
            extra,
            [self.manifest] * len(rows),
            [int(lines[r]) for r in rows.tolist()],
        )
        return build_chunks(fields)

    # -- columns, vectorised -------------------------------------------------------------
    def keys(self) -> pa.Array:
        """``recording_id/chunk_id`` of every row (an Arrow string array)."""
        recordings = pa.array(self.recording.values, pa.string()).take(pa.array(self.recording.codes))
        return pc.binary_join_element_wise(recordings, self.chunk_ids.cast(pa.string()), "/")

    def keys_at(self, rows: np.ndarray) -> pa.Array:
        """``recording_id/chunk_id`` of ``rows`` (an Arrow string array)."""
        rows = np.asarray(rows, dtype=np.int64)
        recordings = pa.array(self.recording.values, pa.string()).take(pa.array(self.recording.codes[rows]))
        return pc.binary_join_element_wise(recordings, self.chunk_ids.take(pa.array(rows)).cast(pa.string()), "/")

    def key_hashes(self, rows: slice = slice(None)) -> np.ndarray:
        """The 64-bit hash of every row's key (:func:`~badc_mpi.inputs.hashing.string_hashes`), or of a
        slice of rows; computed block by block: no key string outlives its block."""
        start, stop, _ = rows.indices(len(self))
        out = np.empty(max(0, stop - start), dtype=np.uint64)
        values = pa.array(self.recording.values, pa.string())
        for begin in range(start, stop, BLOCK_ROWS):
            end = min(stop, begin + BLOCK_ROWS)
            recordings = values.take(pa.array(self.recording.codes[begin:end]))
            keys = pc.binary_join_element_wise(recordings, self.chunk_ids.slice(begin, end - begin).cast(pa.string()), "/")
            out[begin - start : end - start] = string_hashes(keys)
        return out

    def durations_s(self) -> np.ndarray:
        """``end_ms - start_ms`` in seconds; NaN where either is empty."""
        if "start_ms" not in self.ints or "end_ms" not in self.ints:
            return np.full(len(self), np.nan)
        start, end = self.ints["start_ms"], self.ints["end_ms"]
        return np.where((start >= 0) & (end >= 0), (end - start) / 1000, np.nan)

    def input_paths(self, rows: np.ndarray) -> list[str]:
        names = self.names.take(pa.array(rows, pa.int64())).to_pylist()
        paths = [self.prefixes[f] + n for f, n in zip(self.folder_codes[rows].tolist(), names)]
        for i, row in enumerate(np.asarray(rows).tolist()) if self.odd_inputs else ():
            paths[i] = self.odd_inputs.get(row, paths[i])
        return paths

    def input_path_hashes(self, rows: np.ndarray) -> np.ndarray:
        """The 64-bit hash of each row's ``input_path`` (:func:`string_hashes`), vectorised: the
        folder's absolute prefix joined to the name in Arrow, no string per row in Python."""
        rows = np.asarray(rows, dtype=np.int64)
        prefixes = pa.array(self.prefixes, pa.string()).take(pa.array(self.folder_codes[rows]))
        paths = pc.binary_join_element_wise(prefixes, self.names.take(pa.array(rows)).cast(pa.string()), "")
        out = string_hashes(paths)
        for i, row in enumerate(rows.tolist()) if self.odd_inputs else ():
            if row in self.odd_inputs:
                out[i] = string_hashes(pa.array([self.odd_inputs[row]], pa.string()))[0]
        return out

    def longest_chunk_id(self) -> int | None:
        """The row whose chunk id is longest in UTF-8 (first of equals), or None when empty."""
        if not len(self):
            return None
        return int(np.argmax(pc.binary_length(self.chunk_ids).to_numpy()))

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (for benchmarks)."""
        arrays = [self.recording.codes, self.folder_codes, *self.ints.values()]
        arrays += [a for a in (self.digests, self.has_digest) if a is not None]
        arrays += [c.codes for c in (self.notes, *(c for _, c in self.extra)) if c is not None]
        lines = self.lines.nbytes if isinstance(self.lines, np.ndarray) else 0
        return sum(a.nbytes for a in arrays) + self.chunk_ids.nbytes + self.names.nbytes + lines


def _builder() -> type | None:
    """A mutable twin of Chunk with the same slots: building twins and switching ``__class__``
    to Chunk is about four times faster than the frozen ``__init__``, which sets every field
    through ``object.__setattr__``. None where the interpreter refuses the switch."""
    twin = dataclasses.make_dataclass("_ChunkBuilder", [(f.name, f.type) for f in dataclasses.fields(Chunk)], slots=True)
    try:
        twin(*range(len(dataclasses.fields(Chunk)))).__class__ = Chunk
    except TypeError:  # pragma: no cover - layouts differ on this interpreter
        return None
    return twin


_BUILDER = _builder()


def build_chunks(fields: tuple[Sequence[Any], ...]) -> list[Chunk]:
    """Chunks from one sequence per :class:`Chunk` field, in field order."""
    chunks = list(map(_BUILDER or Chunk, *fields))
    for chunk in chunks if _BUILDER else ():
        chunk.__class__ = Chunk
    return chunks


class ChunkSet(_Chunks):
    """The chunks of one queue (one or more manifests), by position, in a chosen order.

    Global row ``g`` of the set's tables is row ``g - offset[t]`` of table ``t``; ``positions``
    (``int32`` while it fits) lists the global rows in dispatch order (None: all, in table order).
    """

    def __init__(self, tables: Sequence[ChunkTable], positions: np.ndarray | None = None) -> None:
        self.tables = list(tables)
        self.offsets = np.cumsum([0] + [len(t) for t in self.tables]).tolist()
        if positions is not None:
            positions = np.asarray(positions)
            positions = positions.astype(np.int32 if self.offsets[-1] < 2**31 else np.int64, copy=False)
        self.positions = positions

    @property
    def size(self) -> int:
        """Rows of all tables (the positions are taken from these)."""
        return self.offsets[-1]

    def __len__(self) -> int:
        return self.size if self.positions is None else len(self.positions)

    def global_rows(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Global rows of the set's ``indices`` (all when None)."""
        if indices is None:
            return np.arange(self.size) if self.positions is None else self.positions
        indices = np.asarray(indices, dtype=np.int64)
        return indices if self.positions is None else self.positions[indices].astype(np.int64)

    def chunks_at(self, indices: Sequence[int] | np.ndarray) -> list[Chunk]:
        rows = self.global_rows(np.asarray(indices, dtype=np.int64))
        if len(self.tables) == 1:
            return self.tables[0].chunks_at(rows)
        table_of = np.searchsorted(self.offsets, rows, side="right") - 1
        out: list[Any] = [None] * len(rows)
        for t in np.unique(table_of).tolist():
            where = np.flatnonzero(table_of == t)
            for i, chunk in zip(where.tolist(), self.tables[t].chunks_at(rows[where] - self.offsets[t])):
                out[i] = chunk
        return out

    def subset(self, positions: np.ndarray) -> ChunkSet:
        """The set of these global rows, in this order."""
        return ChunkSet(self.tables, positions)

    def column(self, part: str) -> Any:
        """A per-row column over the set, in its order: ``keys`` (Arrow), ``durations_s``, ``digests``."""
        if part == "keys":
            whole = pa.concat_arrays([t.keys().cast(pa.large_string()) for t in self.tables])
            return whole if self.positions is None else whole.take(pa.array(self.positions))
        if part == "durations_s":
            whole = np.concatenate([t.durations_s() for t in self.tables]) if self.tables else np.zeros(0)
        elif part == "digests":
            digests = [t.digests if t.digests is not None else np.zeros((len(t), 32), np.uint8) for t in self.tables]
            has = [t.has_digest if t.has_digest is not None else np.zeros(len(t), bool) for t in self.tables]
            whole = (np.concatenate(digests), np.concatenate(has))
            return whole if self.positions is None else (whole[0][self.positions], whole[1][self.positions])
        else:
            raise KeyError(part)
        return whole if self.positions is None else whole[self.positions]

    def locate(self, global_row: int) -> tuple[ChunkTable, int]:
        t = bisect.bisect_right(self.offsets, global_row) - 1
        return self.tables[t], global_row - self.offsets[t]

    def manifest_of(self, global_row: int) -> str:
        return self.locate(global_row)[0].manifest


def normalised_prefix(base: str, folder: str | None) -> str:
    joined = os.path.normpath(os.path.join(base, "" if folder is None else folder + "/"))
    return joined if joined.endswith("/") else joined + "/"
