"""A :class:`~badc_mpi.inputs.chunk_table.ChunkTable` built block by block from validated strings.

:func:`badc_mpi.inputs.manifest.load_manifest` hands each block of a manifest's rows (string
columns, already checked) to :meth:`TableBuilder.add`, which turns it into the table's compact
columns at once, so that only one block's strings exist at a time. The per-row columns are
allocated once for an upper bound on the rows (the line count) and filled in place; an integer
column starts at the narrowest type and widens only when a value needs it (``int8`` codes while
a column has at most 127 distinct values, ``int32`` milliseconds while they fit).
"""

from __future__ import annotations

import os
from typing import Generic

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.inputs.chunk_table import NONE_INT, ChunkTable, Codes, V, hex_digests, normalised_prefix
from badc_mpi.records import metadata_columns

INT_COLUMNS = ("start_ms", "end_ms", "overlap_ms")
_NULL = pa.scalar(None, pa.string())
_WIDER = (np.int8, np.int16, np.int32, np.int64)


class Growing:
    """A preallocated integer column filled block by block; its type widens when a value needs it."""

    def __init__(self, capacity: int, dtype: type = np.int8) -> None:
        self.array: np.ndarray = np.zeros(capacity, dtype=dtype)  # pages are committed when written

    def put(self, start: int, values: np.ndarray) -> None:
        if len(values):
            low, high = int(values.min()), int(values.max())
            info = np.iinfo(self.array.dtype)
            if low < info.min or high > info.max:
                wide = next(t for t in _WIDER if np.iinfo(t).min <= low and high <= np.iinfo(t).max)
                self.array = self.array.astype(wide)
        self.array[start : start + len(values)] = values

    def finish(self, rows: int) -> np.ndarray:
        return _shrunk(self.array, rows)


def _shrunk(array: np.ndarray, size: int) -> np.ndarray:
    """``array[:size]`` without a copy where possible (realloc shrinks a large block in place)."""
    if len(array) != size:
        try:
            array.resize((size, *array.shape[1:]), refcheck=False)
        except ValueError:  # pragma: no cover - a view: copy
            array = array[:size].copy()
    return array


class StringColumn:
    """A string column appended block by block into one buffer: no concatenation at the end.

    The data buffer is allocated for ``capacity_bytes`` (the manifest's size), of which only the
    pages written become resident, and shrunk in place when finished."""

    def __init__(self, capacity_rows: int, capacity_bytes: int) -> None:
        self.wide = capacity_bytes >= 2**31
        self.offsets = np.zeros(capacity_rows + 1, dtype=np.int64 if self.wide else np.int32)
        self.data = np.empty(max(1, capacity_bytes), dtype=np.uint8)
        self.rows = self.size = 0

    def put(self, values: pa.Array) -> None:
        n = len(values)
        wide = pa.types.is_large_string(values.type)
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if wide else np.int32)[values.offset : values.offset + n + 1]
        first, last = int(offsets[0]), int(offsets[-1])
        if last > first:
            self.data[self.size : self.size + last - first] = np.frombuffer(values.buffers()[2], dtype=np.uint8)[first:last]
        self.offsets[self.rows + 1 : self.rows + n + 1] = offsets[1:] - (first - self.size)
        self.rows += n
        self.size += last - first

    def finish(self) -> pa.Array:
        offsets, data = _shrunk(self.offsets, self.rows + 1), _shrunk(self.data, max(1, self.size))
        kind = pa.large_string() if self.wide else pa.string()
        return pa.Array.from_buffers(kind, self.rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


class CodesBuilder(Generic[V]):
    """A dictionary-encoded column built block by block (values in order of first appearance)."""

    def __init__(self, capacity: int) -> None:
        self.index: dict[V, int] = {}
        self.codes = Growing(capacity)

    def put(self, start: int, column: pa.Array) -> None:
        distinct = pc.unique(column)  # in order of first appearance
        local = pc.index_in(column, value_set=distinct).to_numpy(zero_copy_only=False)
        index = self.index
        table = np.fromiter((index.setdefault(v, len(index)) for v in distinct.to_pylist()), np.int64, len(distinct))
        self.codes.put(start, table[local])

    def finish(self, rows: int) -> Codes[V]:
        return Codes(self.codes.finish(rows), list(self.index))


def bad_int(values: pa.Array) -> pa.Array:
    digits = pc.and_(pc.ascii_is_decimal(values), pc.less_equal(pc.binary_length(values), 18))
    return pc.invert(pc.or_(pc.equal(values, ""), digits))


def as_int(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Integers, null where empty or not an integer."""
    return pc.cast(pc.if_else(pc.or_(bad_int(values), pc.equal(values, "")), _NULL, values), pa.int64())


def _ints(values: pa.Array) -> np.ndarray:
    """Validated integer strings as int64, NONE_INT where empty (computed per distinct value)."""
    distinct = pc.unique(values)
    table = pc.fill_null(as_int(distinct), NONE_INT).to_numpy()
    return table[pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False)]


def _split_sources(sources: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(the folder part, null where none; the last component) of each source path."""
    part = pc.split_pattern(sources, "/", max_splits=1, reverse=True)
    offsets = part.offsets.to_numpy()
    has_folder = pa.array(np.diff(offsets) == 2)
    names = part.values.take(pa.array(offsets[1:] - 1))
    return pc.if_else(has_folder, part.values.take(pa.array(offsets[:-1])), _NULL), names


class TableBuilder:
    """One manifest's :class:`ChunkTable`, from blocks of validated string columns."""

    def __init__(self, mpath: str, header: list[str], capacity: int, capacity_bytes: int) -> None:
        self.mpath, self.base, self.header = mpath, os.path.dirname(mpath), header
        self.rows = 0
        self.recording: CodesBuilder[str] = CodesBuilder(capacity)
        self.folder: CodesBuilder[str | None] = CodesBuilder(capacity)  # None: a source with no folder
        self.chunk_ids = StringColumn(capacity, capacity_bytes)
        self.names = StringColumn(capacity, capacity_bytes)
        self.ints = {name: Growing(capacity, np.int32) for name in INT_COLUMNS if name in header}
        self.digests = np.zeros((capacity, 32), dtype=np.uint8) if "sha256" in header else None
        self.has_digest = np.zeros(capacity, dtype=bool) if "sha256" in header else None
        self.notes: CodesBuilder[str] | None = CodesBuilder(capacity) if "notes" in header else None
        self.extra: list[tuple[str, CodesBuilder[str]]] = [(name, CodesBuilder(capacity)) for name in metadata_columns(header)]
        self.odd: dict[int, str] = {}

    def add(self, columns: dict[str, pa.Array]) -> None:
        """Compact one block (its rows follow the rows added before)."""
        start = self.rows
        sources = columns["source_path"]
        self.recording.put(start, columns["recording_id"])
        self.chunk_ids.put(columns["chunk_id"])
        folders, names = _split_sources(sources)
        self.folder.put(start, folders)
        self.names.put(names)
        odd = pc.is_in(names, value_set=pa.array(["", ".", ".."])).to_numpy(zero_copy_only=False)
        for i in np.flatnonzero(odd).tolist():
            self.odd[start + i] = os.path.normpath(os.path.join(self.base, sources[i].as_py()))
        for name, column in self.ints.items():
            column.put(start, _ints(columns[name]))
        if self.digests is not None and self.has_digest is not None:
            digests, has = hex_digests(columns["sha256"])
            self.digests[start : start + len(has)] = digests
            self.has_digest[start : start + len(has)] = has
        if self.notes is not None:
            self.notes.put(start, columns["notes"])
        for name, codes in self.extra:
            codes.put(start, columns[name])
        self.rows += len(sources)

    def finish(self, lines: range | np.ndarray) -> ChunkTable:
        rows = self.rows
        folder = self.folder.finish(rows)
        chunk_ids, names = self.chunk_ids.finish(), self.names.finish()
        digests, has = self.digests, self.has_digest
        if has is not None and not has[:rows].any():
            digests = has = None
        elif digests is not None and has is not None:
            digests, has = _shrunk(digests, rows), _shrunk(has, rows)
        return ChunkTable(
            self.mpath,
            self.recording.finish(rows),
            chunk_ids,
            folder.codes,
            folder.values,
            [normalised_prefix(self.base, f) for f in folder.values],  # None: no folder; "" (from "/x"): the root
            names,
            {name: column.finish(rows) for name, column in self.ints.items()},
            digests,
            has,
            self.notes.finish(rows) if self.notes is not None else None,
            tuple((name, codes.finish(rows)) for name, codes in self.extra),
            lines,
            self.odd,
        )
