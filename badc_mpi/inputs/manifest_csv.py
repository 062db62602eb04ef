"""Reading a manifest's bytes: the header, the rows as string columns block by block, physical line numbers.

The CSV half of :mod:`badc_mpi.inputs.manifest`, which validates the columns and builds the records.
One pass over the bytes finds the header, the rows' extent and counts line breaks and quotes
(nothing kept); pyarrow's streaming reader then parses every column as a string, one block of
about :data:`BLOCK_BYTES` at a time, so that a 10,000,000-row manifest never exists as strings
at once. The csv module is used only to find the line of a problem pyarrow reports without one,
and to count lines when blank lines sit between rows.
Every problem raises :class:`~badc_mpi.errors.ManifestError` with the file, line and fix.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from badc_mpi.errors import ManifestError
from badc_mpi.logs import get_logger
from badc_mpi.records import STANDARD_COLUMNS

log = get_logger(__name__)

REQUIRED_COLUMNS = STANDARD_COLUMNS[:3]
_BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 1 << 19  #: CSV bytes parsed at a time: one block's strings exist at once
SCAN_BYTES = 1 << 20  #: bytes read at a time to count lines and quotes


@dataclass(frozen=True)
class Layout:
    """Where a manifest's parts lie, from one pass over its bytes (nothing kept)."""

    start: int  #: the first byte after a UTF-8 BOM
    body: int  #: the first byte of the rows
    end: int  #: the end of the rows: trailing line breaks are excluded
    breaks: int  #: line breaks (LF, CRLF or a lone CR) in ``[body, end)``
    quotes: int  #: double quotes in ``[body, end)``


def open_manifest(mpath: str) -> tuple[list[str], Layout]:
    """The header and the :class:`Layout` of the rows, reading the file in blocks.

    A UTF-8 BOM is skipped and trailing line breaks ignored; the header must name the
    required columns, and at least one row must follow it.
    """
    try:
        with open(mpath, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(min(size, 1 << 16))
            start = len(_BOM) if head.startswith(_BOM) else 0
            end = _content_end(handle, size)
            while len(head) < size and not _has_break(head, start):  # a header longer than one read
                head += handle.read(SCAN_BYTES)
            header, body = _parse_header(mpath, head, start, min(end, len(head)))
            if body >= end:
                raise ManifestError(
                    mpath,
                    "the manifest has a header but no chunk rows",
                    line=2,
                    fix="add one row per chunk (the chunker writes them)",
                )
            breaks, quotes = _count(handle, body, end)
            quotes += head.count(b'"', start, body)
    except OSError as exc:
        raise ManifestError(
            mpath, f"cannot read the manifest ({exc.strerror or exc})", fix="check the path and its permissions"
        ) from None
    return header, Layout(start, body, end, breaks, quotes)


def read_batches(mpath: str, header: list[str], layout: Layout) -> Iterator[tuple[int, dict[str, pa.Array]]]:
    """(index of the first row, the columns as strings) of each block of about BLOCK_BYTES:
    pyarrow's streaming CSV reader, so only one block's strings exist at a time. A parse error
    is located (line, column) over the whole file, as is an unclosed quote after the last block."""
    read = pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=BLOCK_BYTES)
    parse = pacsv.ParseOptions(newlines_in_values=layout.quotes > 0)
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in header}, strings_can_be_null=False)
    first = 0
    try:
        for batch in pacsv.open_csv(mpath, read_options=read, parse_options=parse, convert_options=convert):
            if batch.num_rows:
                yield first, dict(zip(batch.schema.names, batch.columns))
                first += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        _diagnose(mpath, _body(mpath, layout), header)
        raise ManifestError(
            mpath,
            f"cannot parse the CSV ({exc})",
            fix="a value with commas, quotes or line breaks must be in double quotes, with inner quotes doubled",
        ) from None
    if layout.quotes % 2:  # an unclosed quote swallows the rest of the file without a parse error
        _diagnose(mpath, _body(mpath, layout), header)


def _body(mpath: str, layout: Layout) -> bytes:
    """The rows' bytes (only to locate a problem)."""
    with open(mpath, "rb") as handle:
        handle.seek(layout.start)
        return handle.read(layout.end - layout.start)


def _has_break(data: bytes, start: int) -> bool:
    return data.find(b"\n", start) >= 0 or data.find(b"\r", start, len(data) - 1) >= 0


def _content_end(handle: Any, size: int) -> int:
    """The offset after the last byte that is not a line break (trailing blank lines are harmless)."""
    end = size
    while end > 0:
        begin = max(0, end - (1 << 16))
        handle.seek(begin)
        tail = handle.read(end - begin).rstrip(b"\r\n")
        if tail:
            return begin + len(tail)
        end = begin
    return 0


def _count(handle: Any, body: int, end: int) -> tuple[int, int]:
    """(line breaks, double quotes) in ``[body, end)``, read in blocks of SCAN_BYTES."""
    handle.seek(body)
    breaks = quotes = 0
    previous = 0
    buffer = bytearray(SCAN_BYTES)
    left = end - body
    while left > 0:
        got = handle.readinto(memoryview(buffer)[: min(SCAN_BYTES, left)])
        if not got:  # pragma: no cover - the file shrank while read
            break
        left -= got
        breaks += _count_breaks(buffer, 0, got) - (previous == 13 and buffer[0] == 10)
        quotes += buffer.count(b'"', 0, got)
        previous = buffer[got - 1]
    return breaks, quotes


def _parse_header(mpath: str, data: bytes, start: int, end: int) -> tuple[list[str], int]:
    """The header's column names and the offset where the rows start."""
    if start >= end:
        raise ManifestError(mpath, "the manifest is empty", line=1, fix="write a header line: " + ",".join(STANDARD_COLUMNS))
    cut = min((i for i in (data.find(b"\n", start, end), data.find(b"\r", start, end)) if i >= 0), default=end)
    try:
        text = data[start:cut].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            mpath,
            f"the header is not UTF-8 (byte {data[start + exc.start]:#04x})",
            line=1,
            fix="save the file as UTF-8",
        ) from None
    if not text.strip():
        raise ManifestError(
            mpath,
            "the first line is empty; it must be the header",
            line=1,
            fix="remove the blank line(s) before the header",
        )
    names = next(csv.reader([text]))
    delimiter = next((d for d in (";", "\t", "|") if d in text), None)
    if len(names) == 1 and delimiter:
        raise ManifestError(
            mpath,
            f"the header is separated by {delimiter!r}, not commas",
            line=1,
            fix="use commas as the delimiter (save as comma-separated CSV)",
        )
    for index, name in enumerate(names):
        if name == "" or names.index(name) != index:
            problem = f"column {name!r} appears twice" if name else f"field {index + 1} is empty"
            raise ManifestError(
                mpath,
                f"header {problem}",
                line=1,
                column=name or None,
                fix="name every column once (no stray commas, no repeats)",
            )
    absent = [name for name in REQUIRED_COLUMNS if name not in names]
    if absent:
        raise ManifestError(
            mpath,
            f"missing required column(s) {', '.join(absent)}; found: {', '.join(names)}",
            line=1,
            column=absent[0],
            fix="the header needs recording_id, chunk_id and source_path (exact, lower-case, no spaces)",
        )
    return names, cut + (2 if data[cut : cut + 2] == b"\r\n" else 1)


def _diagnose(mpath: str, body: bytes, header: list[str]) -> None:
    """Find the line of a problem that pyarrow reported without one, and raise it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = max(body.rfind(b"\n", 0, exc.start), body.rfind(b"\r", 0, exc.start)) + 1
        prefix = body[line_start : exc.start].decode("utf-8", "replace")
        index = len(next(csv.reader([prefix]), [""])) - 1
        raise ManifestError(
            mpath,
            f"not UTF-8 text (byte {body[exc.start]:#04x})",
            line=_count_breaks(body, 0, exc.start) + 1,
            column=header[index] if 0 <= index < len(header) else None,
            fix="save the file as UTF-8",
        ) from None
    for line, record in _records(mpath, text, strict=True):
        if line > 1 and len(record) != len(header):
            fix = "quote values that contain commas, or fix the number of fields"
            if len(record) == 1 and any(d in record[0] for d in ";\t|"):
                fix = "use commas as the delimiter"
            raise ManifestError(
                mpath,
                f"the row has {len(record)} field(s) but the header has {len(header)} columns",
                line=line,
                fix=fix,
            )


def _records(mpath: str, text: str | io.TextIOBase, strict: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of each non-blank CSV record in ``text``."""
    stream = io.StringIO(text, newline="") if isinstance(text, str) else text
    reader = csv.reader(stream, strict=strict)
    previous = 0
    try:
        for record in reader:
            if record:
                yield previous + 1, record
            previous = reader.line_num
    except csv.Error as exc:
        raise ManifestError(
            mpath,
            f"malformed CSV ({exc})",
            line=previous + 1,
            fix="close the quoted value; quotes inside a value are doubled",
        ) from None


def _count_breaks(data: bytes | bytearray, start: int, end: int) -> int:
    """Line breaks (LF, CRLF or a lone CR) in ``data[start:end]``."""
    return data.count(b"\n", start, end) + data.count(b"\r", start, end) - data.count(b"\r\n", start, end)


def inner_breaks(columns: dict[str, pa.Array]) -> np.ndarray | None:
    """Line breaks inside each row's quoted values (None when the block has none)."""
    inner = None
    for values in columns.values():
        if pc.any(pc.match_substring_regex(values, "[\r\n]")).as_py():
            if inner is None:
                inner = np.zeros(len(values), dtype=np.int64)
            for term, sign in (("\n", 1), ("\r", 1), ("\r\n", -1)):
                inner += sign * pc.count_substring(values, term).to_numpy(zero_copy_only=False)
    return inner


def row_lines(mpath: str, layout: Layout, rows: int, inner: list[tuple[int, np.ndarray]]) -> range | np.ndarray:
    """The physical line where each row starts: quoted line breaks and blank lines count.

    ``inner``: (first row, :func:`inner_breaks`) of the blocks whose values hold line breaks."""
    if layout.breaks == rows - 1:  # one line per row: the usual case
        return range(2, rows + 2)
    if inner and layout.breaks == rows - 1 + sum(int(counts.sum()) for _, counts in inner):
        extra = np.zeros(rows, dtype=np.int64)  # line breaks inside values: count them per row
        for first, counts in inner:
            extra[first + 1 : first + 1 + len(counts)] = counts[: rows - first - 1]
        np.cumsum(extra, out=extra)
        extra += np.arange(2, rows + 2)
        return extra
    with open(mpath, "rb") as handle:  # blank lines (rare): let the csv module count, streaming
        handle.seek(layout.body)
        text = io.TextIOWrapper(handle, "utf-8", newline="")
        starts = np.fromiter((line + 1 for line, _ in _records("", text)), dtype=np.int64)
    if len(starts) != rows:  # pragma: no cover - csv and pyarrow disagree; keep going
        log.warning("line numbers may be off (csv: %d rows, pyarrow: %d)", len(starts), rows)
        starts = np.concatenate([starts, np.arange(rows, dtype=np.int64)])[:rows]
    return starts
