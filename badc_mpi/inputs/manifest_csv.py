"""Reading a manifest's bytes: the header, the rows as string columns, physical line numbers.

The CSV half of :mod:`badc_mpi.inputs.manifest`, which validates the columns and builds the records.
pyarrow parses every column as a string; the csv module is used only to find the line of a
problem pyarrow reports without one, and to count lines when blank lines sit between rows.
Every problem raises :class:`~badc_mpi.errors.ManifestError` with the file, line and fix.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

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


def read_columns(mpath: str) -> tuple[list[str], dict[str, pa.ChunkedArray], Sequence[int]]:
    """The header, every column as strings (header order) and each row's first physical line.

    A UTF-8 BOM is skipped and trailing line breaks ignored; the header must name the
    required columns, and at least one row must follow it.
    """
    try:
        with open(mpath, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ManifestError(
            mpath, f"cannot read the manifest ({exc.strerror or exc})", fix="check the path and its permissions"
        ) from None
    start = len(_BOM) if data.startswith(_BOM) else 0
    end = len(data)
    while end > start and data[end - 1] in b"\r\n":  # trailing blank lines are harmless
        end -= 1
    header, body = _parse_header(mpath, data, start, end)
    if body >= end:
        raise ManifestError(
            mpath,
            "the manifest has a header but no chunk rows",
            line=2,
            fix="add one row per chunk (the chunker writes them)",
        )
    table = _read_table(mpath, data, start, end, header)
    columns = dict(zip(table.column_names, table.columns))
    return header, columns, _row_lines(data, body, end, columns, table.num_rows)


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


def _read_table(mpath: str, data: bytes, start: int, end: int, header: list[str]) -> pa.Table:
    quotes = data.count(b'"', start, end)
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(data).slice(start, end - start)),
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=quotes > 0),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header}, strings_can_be_null=False),
        )
    except pa.ArrowException as exc:
        _diagnose(mpath, data[start:end], header)
        raise ManifestError(
            mpath,
            f"cannot parse the CSV ({exc})",
            fix="a value with commas, quotes or line breaks must be in double quotes, with inner quotes doubled",
        ) from None
    if quotes % 2:  # an unclosed quote swallows the rest of the file without a parse error
        _diagnose(mpath, data[start:end], header)
    return table


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


def _count_breaks(data: bytes, start: int, end: int) -> int:
    """Line breaks (LF, CRLF or a lone CR) in ``data[start:end]``."""
    return data.count(b"\n", start, end) + data.count(b"\r", start, end) - data.count(b"\r\n", start, end)


def _row_lines(data: bytes, body: int, end: int, columns: dict, rows: int) -> Sequence[int]:
    """The physical line where each row starts: quoted line breaks and blank lines count."""
    total = data.count(b"\n", body, end)
    if data.find(b"\r", body, end) >= 0:
        total = _count_breaks(data, body, end)
    if total == rows - 1:  # one line per row: the usual case
        return range(2, rows + 2)
    if data.find(b'"', body, end) >= 0:  # line breaks inside quoted values: count them per row
        inner = np.zeros(rows, dtype=np.int64)
        for values in columns.values():
            if pc.any(pc.match_substring_regex(values, "[\r\n]")).as_py():
                for term, sign in (("\n", 1), ("\r", 1), ("\r\n", -1)):
                    inner += sign * pc.count_substring(values, term).to_numpy()
        if total == rows - 1 + int(inner.sum()):
            return (np.arange(2, rows + 2) + np.concatenate(([0], np.cumsum(inner)[:-1]))).tolist()
    stream = io.BytesIO(data)  # blank lines (rare): let the csv module count, streaming
    stream.seek(body)
    starts = [line + 1 for line, _ in _records("", io.TextIOWrapper(stream, "utf-8", newline=""))]
    if len(starts) != rows:  # pragma: no cover - csv and pyarrow disagree; keep going
        log.warning("line numbers may be off (csv: %d rows, pyarrow: %d)", len(starts), rows)
        starts = (starts + list(range(rows)))[:rows]
    return starts
