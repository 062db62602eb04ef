"""Per-species thresholds (``thresholds.csv``, written by ``badc-mpi calibrate``; docs/results.md):
the exports' ``--thresholds FILE``.

The file's columns start with ``species_code, threshold``; the rest (interval, counts, reason)
are for people. A species whose ``threshold`` is empty (no threshold could be estimated: its
``reason`` says why) or that the file does not name falls back to ``--min-confidence``; the
export lists those species in ``export.json`` and a note. A detection is kept when its score,
compared as FLOAT (the ``confidence`` column's type), is at least its species' threshold.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass, field

from badc_mpi.results.export.meta import ExportError

#: thresholds.csv, in order (the exports read the first two)
COLUMNS = (
    "species_code",
    "threshold",
    "threshold_low",
    "threshold_high",
    "target_precision",
    "reviewed",
    "correct",
    "wrong",
    "unsure",
    "intercept",
    "slope",
    "min_score",
    "max_score",
    "reason",
    "note",
)
FIX = "give the thresholds.csv that `badc-mpi calibrate` wrote (species_code,threshold,...; threshold 0..1 or empty)"


@dataclass
class Thresholds:
    """A thresholds file as read: the species with a threshold, and those named without one."""

    path: str
    sha256: str
    by_species: dict[str, float] = field(default_factory=dict)
    without: list[str] = field(default_factory=list)  #: named, no threshold (their reason in the file)


def parse_thresholds(path: str, data: bytes) -> Thresholds:
    """The file's thresholds (pure); a bad row is an :class:`ExportError` naming the file and row."""
    out = Thresholds(path, hashlib.sha256(data).hexdigest())
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ExportError(f"--thresholds {path}: not UTF-8 text", fix=FIX) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    if header[:2] != ["species_code", "threshold"]:
        raise ExportError(f"--thresholds {path}, row 1: the columns must start with species_code,threshold", fix=FIX)
    for row_no, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue
        code, text_value = row[0].strip(), (row[1].strip() if len(row) > 1 else "")
        if not code:
            raise ExportError(f"--thresholds {path}, row {row_no}: empty species_code", fix=FIX)
        if code in out.by_species or code in out.without:
            raise ExportError(f"--thresholds {path}, row {row_no}: species {code} named twice", fix=FIX)
        if not text_value:
            out.without.append(code)
            continue
        try:
            value = float(text_value)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise ExportError(f"--thresholds {path}, row {row_no}: threshold {text_value!r} for {code} is not in 0..1", fix=FIX)
        out.by_species[code] = value
    return out


def read_thresholds(path: str) -> Thresholds:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ExportError(f"--thresholds {path}: cannot be read ({exc.strerror or exc})", fix=FIX) from None
    return parse_thresholds(path, data)


def format_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def thresholds_text(rows: list[dict[str, object]]) -> str:
    """``thresholds.csv``'s text from rows keyed by :data:`COLUMNS` (pure)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([format_value(row.get(c)) for c in COLUMNS])
    return buf.getvalue()
