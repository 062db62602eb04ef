"""Chunk manifests: the input contract.

A manifest is a UTF-8, comma-separated CSV with a header. Required columns: ``recording_id``,
``chunk_id``, ``source_path``; optional: ``start_ms``, ``end_ms``, ``overlap_ms``, ``sha256``,
``notes``; any other column is kept, in header order, as per-chunk metadata (``Chunk.extra``).

A thin I/O shell around vectorised checks, block by block: :mod:`badc_mpi.inputs.manifest_csv`
parses one block of rows at a time (every column a string), pyarrow.compute finds the block's bad
rows in a few passes, and :class:`~badc_mpi.inputs.table_builder.TableBuilder` compacts the block
into the columnar :class:`~badc_mpi.inputs.chunk_table.ChunkTable` before the next is read (no
Python object per row; a :class:`Chunk` is built when used). After a bad row the rest is only
checked, to count the bad rows; physical lines are resolved at the end. Duplicate keys are found
by sorting 64-bit key hashes and comparing the strings of the rows whose hash repeats. Every
problem raises :class:`~badc_mpi.errors.ManifestError` naming the file, the physical line
(header = line 1), the column and the fix; nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from badc_mpi.errors import ManifestError
from badc_mpi.inputs.chunk_table import BLOCK_ROWS, ChunkTable
from badc_mpi.inputs.manifest_csv import inner_breaks, open_manifest, read_batches, row_lines
from badc_mpi.inputs.sources import input_problem
from badc_mpi.inputs.table_builder import INT_COLUMNS, TableBuilder, as_int, bad_int
from badc_mpi.logs import get_logger
from badc_mpi.records import MAX_ID_BYTES, Chunk, metadata_columns, validate_id

log = get_logger(__name__)

NO_HASH = ("", "TODO_HASH", "DRY_RUN")  #: sha256 values that mean "no hash"
MAX_LISTED = 20  #: how many missing sources one error lists

_ID_BAD_RE2 = r"[/\\\x00-\x1f\x7f-\x{9f}]"  # _CONTROL plus the separators, in RE2 syntax
_SHA_RE2 = r"^[0-9A-Fa-f]{64}$"
_Problem = tuple[int, str, str, str]  #: (row index, column, message, fix)
_PROBLEMS = {  # kind of bad row: (message, fix)
    "id": (
        "{column} {value!r} is not a usable name",  # validate_id's own message comes first
        "use a non-empty name without path separators, control characters, a leading '-' "
        f"or surrounding spaces, at most {MAX_ID_BYTES} UTF-8 bytes",
    ),
    "source": (
        "source_path {value!r} is empty or contains a NUL or line break",
        "give the audio file's path, absolute or relative to the manifest's folder",
    ),
    "int": (
        "{column} {value!r} is not a non-negative whole number",
        "write whole milliseconds (e.g. 60000) or leave the field empty",
    ),
    "order": ("end_ms {value} is not after start_ms {start}", "end_ms must exceed start_ms"),
    "sha": (
        "sha256 {value!r} is not 64 hexadecimal digits",
        "write the chunk file's SHA-256 as 64 hex digits, or leave it empty (TODO_HASH and DRY_RUN also mean no hash)",
    ),
}


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its chunks as a columnar :class:`ChunkTable` (a read-only sequence of
    :class:`Chunk`). ``missing_rows``: rows whose source is absent (``allow_missing=True``)."""

    path: str
    columns: tuple[str, ...]
    extra_columns: tuple[str, ...]
    chunks: ChunkTable
    missing_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.chunks)

    @property
    def missing(self) -> list[Chunk]:
        """The chunks whose source is absent (built on each call)."""
        return self.chunks.chunks_at(self.missing_rows)

    @property
    def recording_ids(self) -> list[str]:
        """Distinct recording ids, in order of first appearance."""
        return list(self.chunks.recording.values)


def id_problems(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Vectorised :func:`validate_id`: a boolean mask, true where the id is invalid."""
    size = pc.binary_length(values)
    return _any_of(
        [
            pc.equal(size, 0),
            pc.greater(size, MAX_ID_BYTES),
            pc.is_in(values, value_set=pa.array([".", ".."])),
            pc.match_substring_regex(values, _ID_BAD_RE2),
            pc.starts_with(values, "-"),
            pc.starts_with(values, " "),
            pc.ends_with(values, " "),
        ]
    )


def load_manifest(path: str | os.PathLike[str], *, check_sources: bool = True, allow_missing: bool = False) -> Manifest:
    """Read and validate one manifest (rules: module docstring and docs/architecture.md).

    ``check_sources``: every ``input_path`` must exist; missing ones are one error (the first 20
    and a count) unless ``allow_missing``, which lists them in ``Manifest.missing`` instead.
    """
    mpath = os.path.abspath(os.fspath(path))
    header, layout = open_manifest(mpath)
    builder = TableBuilder(mpath, header, layout.breaks + 1, layout.end - layout.body)
    problem: _Problem | None = None
    bad = rows = 0
    inner: list[tuple[int, np.ndarray]] = []
    for first, columns in read_batches(mpath, header, layout):
        found = _row_problem(columns)
        if found is not None:
            bad += found[0]
            problem = problem or (first + found[1], *found[2:])
        if problem is None:  # after a bad row, the rest is only checked (parse errors, the count)
            builder.add(columns)
        if layout.quotes:
            counts = inner_breaks(columns)
            if counts is not None:
                inner.append((first, counts))
        rows = first + len(columns["chunk_id"])
        del columns
        _release()
    lines = row_lines(mpath, layout, rows, inner)
    if problem is not None:
        index, column, message, fix = problem
        if bad > 1:
            message += f" ({bad} rows have problems; this is the first)"
        raise ManifestError(mpath, message, line=int(lines[index]), column=column, fix=fix)
    table = builder.finish(lines)
    del builder
    _release()
    _check_duplicates(table)
    missing = _missing_sources(table) if check_sources else np.zeros(0, dtype=np.int64)
    if len(missing) and not allow_missing:
        raise _missing_error(mpath, table, missing)
    extra = tuple(metadata_columns(header))
    log.debug("%s: %d chunks, %d missing sources", mpath, len(table), len(missing))
    return Manifest(mpath, tuple(header), extra, table, missing)


def load_manifests(paths: Iterable[str | os.PathLike[str]], **kwargs: bool) -> list[Manifest]:
    """Load manifests that form one queue: a chunk key may appear in only one of them."""
    manifests = [load_manifest(path, **kwargs) for path in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    for number, manifest in enumerate(manifests):
        if any(other.path == manifest.path for other in manifests[:number]):
            raise ManifestError(manifest.path, "this manifest is given twice", fix="give each manifest once")
    if len(manifests) > 1:
        _check_clashes(manifests)
    return manifests


def _check_clashes(manifests: list[Manifest]) -> None:
    """A chunk key in two manifests of one queue: the error names the later row and the first."""
    keys = [m.chunks.keys() for m in manifests]
    for number in range(1, len(manifests)):
        earlier = pa.chunked_array(keys[:number])
        clash = pc.is_in(keys[number], value_set=earlier)
        count = pc.sum(pc.cast(clash, pa.int64())).as_py() or 0
        if not count:
            continue
        row = pc.index(clash, True).as_py()
        chunk = manifests[number].chunks[row]
        where = pc.index(earlier, chunk.key).as_py()
        first_m = next(i for i in range(number) if where < sum(len(k) for k in keys[: i + 1]))
        first = manifests[first_m].chunks[where - sum(len(k) for k in keys[:first_m])]
        raise ManifestError(
            chunk.manifest,
            f"chunk {chunk.key!r} is also in {first.manifest}, line {first.line} ({count} chunk(s) are in both)",
            line=chunk.line,
            column="chunk_id",
            fix="manifests given together form one queue: remove the repeated rows or give those chunks distinct ids",
        )


# ---------------------------------------------------------------------------- validation


def _any_of(masks: list) -> pa.ChunkedArray:
    result = masks[0]
    for mask in masks[1:]:
        result = pc.or_(result, mask)
    return result


def _by_distinct(values: pa.ChunkedArray, predicate: Callable) -> pa.ChunkedArray:
    """``predicate(values)``, computed on the distinct values when they repeat."""
    distinct = pc.unique(values)
    if 2 * len(distinct) > len(values):
        return predicate(values)
    return pc.is_in(values, value_set=pc.filter(distinct, predicate(distinct)))


def _row_problem(columns: dict[str, pa.Array]) -> tuple[int, int, str, str, str] | None:
    """(rows with problems, the first one's index, column, message and fix) of one block, all
    rules considered; None when every row is good."""
    source = columns["source_path"]
    rules = [
        ("recording_id", "id", _by_distinct(columns["recording_id"], id_problems)),
        ("chunk_id", "id", id_problems(columns["chunk_id"])),
        (
            "source_path",
            "source",
            pc.or_(
                pc.equal(source, ""),
                pc.and_(pc.invert(pc.ascii_is_printable(source)), pc.match_substring_regex(source, "[\x00\r\n]")),
            ),
        ),
    ]
    rules += [(name, "int", _by_distinct(columns[name], bad_int)) for name in INT_COLUMNS if name in columns]
    if "start_ms" in columns and "end_ms" in columns:
        ends_first = pc.less_equal(as_int(columns["end_ms"]), as_int(columns["start_ms"]))
        rules.append(("end_ms", "order", pc.fill_null(ends_first, False)))
    if "sha256" in columns:
        sha = columns["sha256"]
        rules.append(
            (
                "sha256",
                "sha",
                pc.invert(pc.or_(pc.is_in(sha, value_set=pa.array(NO_HASH)), pc.match_substring_regex(sha, _SHA_RE2))),
            )
        )
    bad = _any_of([mask for _, _, mask in rules])
    count = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
    if not count:
        return None
    index, order = min((pc.index(mask, True).as_py(), order) for order, (_, _, mask) in enumerate(rules) if pc.any(mask).as_py())
    column, kind, _ = rules[order]
    value = columns[column][index].as_py()
    template, fix = _PROBLEMS[kind]
    start = columns["start_ms"][index].as_py() if kind == "order" else None
    named = validate_id(value, column) if kind == "id" else None
    message = named or template.format(column=column, value=value, start=start)
    return count, index, column, message, fix


def _check_duplicates(table: ChunkTable) -> None:
    """(recording_id, chunk_id) must be unique; a repeat names both lines.

    Each key is hashed to 64 bits (:mod:`badc_mpi.inputs.hashing`), the hashes sorted; only the
    rows whose hash repeats are compared as strings, in row order, so a collision is no error."""
    hashes = table.key_hashes()
    hashes.sort()
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if not len(repeated):
        return
    rows = np.flatnonzero(np.isin(table.key_hashes(), repeated))
    seen: dict[str, int] = {}
    for row, key in zip(rows.tolist(), table.keys_at(rows).to_pylist()):
        first = seen.setdefault(key, row)
        if first != row:
            lines = table.lines
            raise ManifestError(
                table.manifest,
                f"chunk {key!r} is repeated: lines {lines[first]} and {lines[row]}",
                line=int(lines[row]),
                column="chunk_id",
                fix="(recording_id, chunk_id) must be unique: remove the repeated row or give it another chunk_id",
            )


def _release() -> None:  # give freed Arrow memory back to the system
    pa.default_memory_pool().release_unused()


# ---------------------------------------------------------------------------------- sources


def _missing_sources(table: ChunkTable) -> np.ndarray:
    """Rows whose input_path is not a readable regular file (or a symlink to one): absent, a
    broken symlink (annexed content not present), a folder, or unreadable.

    Lists each folder once (cheap on parallel file systems, where a stat per file is not): a name
    the listing shows as a plain file is a regular file; readability is checked on the first file
    of each folder (permissions go by tree), and on every file of a folder where that one fails.
    Symlinks (git-annex) and anything else are checked one by one. A single unreadable file in a
    readable folder is caught when its chunk runs (an ``input`` failure, not a crash).
    """
    listings: dict[str, tuple[frozenset[str], bool]] = {}
    missing: list[int] = []
    for start in range(0, len(table), BLOCK_ROWS):
        rows = np.arange(start, min(len(table), start + BLOCK_ROWS))
        for row, path in zip(rows.tolist(), table.input_paths(rows)):
            folder, _, name = path.rpartition("/")
            listed = listings.get(folder)
            if listed is None:
                listed = listings[folder] = (_plain_files(folder or "/"), os.access(path, os.R_OK))
            files, readable = listed
            if name in files:
                usable = readable or os.access(path, os.R_OK)
            else:
                usable = os.path.isfile(path) and os.access(path, os.R_OK)
            if not usable:
                missing.append(row)
    return np.array(missing, dtype=np.int64)


def _plain_files(folder: str) -> frozenset[str]:
    """Names of the regular files in ``folder`` (from the listing: no stat per file)."""
    try:
        with os.scandir(folder) as entries:
            return frozenset([entry.name for entry in entries if entry.is_file(follow_symlinks=False)])
    except OSError:
        return frozenset()


def _missing_error(mpath: str, table: ChunkTable, missing: np.ndarray) -> ManifestError:
    """One error for all missing sources: the first MAX_LISTED, a count, and how to fix them."""
    paths = table.input_paths(missing)
    annexed = sum(1 for path in paths if os.path.islink(path) and not os.path.exists(path))
    shown = [f"line {table.lines[r]}: {input_problem(p) or p}" for r, p in zip(missing[:MAX_LISTED].tolist(), paths)]
    more = f"; and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    fixes = []
    if annexed:
        fixes.append(f"run `datalad get` on the {annexed} annexed file(s) to fetch their content")
    if annexed < len(missing):
        fixes.append(f"correct source_path (relative paths resolve against {os.path.dirname(mpath)}, not the current directory)")
    fixes.append("or pass --allow-missing to record those chunks as failed `input` chunks")
    return ManifestError(
        mpath,
        f"{len(missing)} of {len(table)} source files are missing or unusable: " + "; ".join(shown) + more,
        line=int(table.lines[int(missing[0])]),
        column="source_path",
        fix=", ".join(fixes),
    )
