"""HawkEars output parsers and canonical detection records.

Pure functions: parse HawkEars' raw CSV into :class:`RawDetection` values, then turn them into
canonical per-detection dicts (:func:`canonical_records`) with recording-relative times and the
chunk's provenance. Formats (see ``docs/architecture.md``):

- ``scores2``: HawkEars 2.x ``scores.csv``: ``recording,name,start_time,end_time,score``
  (recording = file stem; ``name`` is the label form chosen with ``--label``).
- ``labels1``: HawkEars 1.x ``HawkEars_labels.csv``:
  ``filename,start_time,end_time,class_name,class_code,score``.

Any file that is not a valid output (missing, 0 bytes, wrong header, bad values, undecodable)
raises :class:`OutputFormatError`; a header-only file is valid and means "nothing found".
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from badc_mpi.errors import BadcError
from badc_mpi.records import Chunk

SCORES2 = "scores2"
LABELS1 = "labels1"
RAW_FORMATS = (SCORES2, LABELS1)

SCORES2_COLUMNS = ("recording", "name", "start_time", "end_time", "score")
LABELS1_COLUMNS = ("filename", "start_time", "end_time", "class_name", "class_code", "score")
_EXPECTED = {SCORES2: SCORES2_COLUMNS, LABELS1: LABELS1_COLUMNS}
_AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff"})

#: canonical keys, in output order (extra manifest columns follow)
CANONICAL_KEYS = (
    "recording_id",
    "chunk_id",
    "label",
    "label_code",
    "label_name",
    "confidence",
    "start_s",
    "end_s",
    "start_ms",
    "end_ms",
    "chunk_start_ms",
    "chunk_end_ms",
    "source_path",
    "chunk_sha256",
    "hawkears_version",
    "model_version",
    "run_id",
)
_CANONICAL_SET = frozenset(CANONICAL_KEYS)


class OutputFormatError(BadcError):
    """A HawkEars output file that cannot be trusted; names the file and line."""

    def __init__(self, path: object, line: int | None, reason: str, *, fix: str | None = None) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(
            f"{where}: {reason}",
            fix=fix
            or (
                "the runner must leave a complete HawkEars CSV (2.x scores.csv: "
                f"{','.join(SCORES2_COLUMNS)}; 1.x HawkEars_labels.csv: "
                f"{','.join(LABELS1_COLUMNS)}) matching its raw_format; check the runner's "
                "stderr and the input audio, then retry the chunk"
            ),
        )


@dataclass(frozen=True, slots=True)
class RawDetection:
    """One row of a HawkEars output CSV; times are chunk-relative seconds."""

    label: str
    label_code: str | None
    label_name: str | None
    start_s: float
    end_s: float
    confidence: float
    recording: str


# -- parsing -----------------------------------------------------------------------------------


def _rows(path: str, fmt: str) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, row)`` of a HawkEars CSV after checking its header."""
    expected = _EXPECTED[fmt]
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise OutputFormatError(path, None, f"cannot read output file ({exc.strerror or exc})") from exc
    if size == 0:
        raise OutputFormatError(path, None, "empty file (0 bytes, not even a header): HawkEars did not finish writing it")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            header: list[str] | None = None
            for fields in reader:
                if not fields or all(not f.strip() for f in fields):
                    continue  # blank line
                if header is None:
                    header = [f.strip() for f in fields]
                    missing = [c for c in expected if c not in header]
                    if missing:
                        raise OutputFormatError(
                            path,
                            reader.line_num,
                            f"unexpected header {','.join(header)!r}: missing column(s) "
                            f"{', '.join(missing)} (expected {','.join(expected)!r}, format {fmt})",
                        )
                    if len(set(header)) != len(header):
                        raise OutputFormatError(path, reader.line_num, f"duplicate column names in header {header!r}")
                    continue
                if len(fields) != len(header):
                    raise OutputFormatError(
                        path,
                        reader.line_num,
                        f"{len(fields)} fields where the header has {len(header)} (truncated or unquoted line)",
                    )
                yield reader.line_num, dict(zip(header, fields))
            if header is None:
                raise OutputFormatError(path, None, "no header line (file holds only blank lines)")
    except UnicodeDecodeError as exc:
        raise OutputFormatError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise OutputFormatError(path, None, f"malformed CSV ({exc})") from exc
    except OSError as exc:
        raise OutputFormatError(path, None, f"cannot read output file ({exc.strerror or exc})") from exc


def _number(path: str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OutputFormatError(path, line, f"column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise OutputFormatError(path, line, f"column {column!r}: {text!r} is not a finite number")
    return value


def _check_span(path: str, line: int, start_s: float, end_s: float, score: float) -> None:
    if start_s < 0 or end_s < start_s:
        raise OutputFormatError(path, line, f"bad time span start_time={start_s} end_time={end_s} (need 0 <= start <= end)")
    if not 0.0 <= score <= 1.0:
        raise OutputFormatError(path, line, f"score {score} outside [0, 1]")


def _span(path: str, line: int, row: dict[str, str]) -> tuple[float, float, float]:
    """(start_s, end_s, score) of a row, checked."""
    start_s = _number(path, line, "start_time", row["start_time"])
    end_s = _number(path, line, "end_time", row["end_time"])
    score = _number(path, line, "score", row["score"])
    _check_span(path, line, start_s, end_s, score)
    return start_s, end_s, score


def _text(path: str, line: int, column: str, text: str) -> str:
    value = text.strip()
    if not value:
        raise OutputFormatError(path, line, f"column {column!r} is empty")
    return value


def parse_scores_csv(
    path: str | os.PathLike[str],
    class_map: Mapping[str, str] | None = None,
    class_names: Mapping[str, str] | None = None,
) -> list[RawDetection]:
    """Parse a HawkEars 2.x ``scores.csv``.

    ``label`` and ``label_name`` are the ``name`` column as written (whatever ``--label`` form
    HawkEars used); ``label_code`` is ``class_map[name]`` when a map is given, else ``None``;
    ``label_name`` is ``class_names[label_code]`` (the common name) when known, else ``name``.
    """
    path = os.fspath(path)
    out: list[RawDetection] = []
    for line, row in _rows(path, SCORES2):
        name = _text(path, line, "name", row["name"])
        start_s, end_s, score = _span(path, line, row)
        out.append(
            RawDetection(
                label=name,
                label_code=(code := class_map.get(name) if class_map is not None else None),
                label_name=class_names.get(code, name) if class_names is not None and code else name,
                start_s=start_s,
                end_s=end_s,
                confidence=score,
                recording=row["recording"].strip(),
            )
        )
    return out


def _stem(filename: str) -> str:
    base = os.path.basename(filename.strip().replace("\\", "/"))
    root, ext = os.path.splitext(base)
    return root if ext.lower() in _AUDIO_EXTENSIONS else base


def parse_labels_csv(path: str | os.PathLike[str]) -> list[RawDetection]:
    """Parse a HawkEars 1.x ``HawkEars_labels.csv``: label = class_code (class_name if empty).

    ``recording`` is the file name without folder and audio extension, as in 2.x.
    """
    path = os.fspath(path)
    out: list[RawDetection] = []
    for line, row in _rows(path, LABELS1):
        code = row["class_code"].strip() or None
        name = row["class_name"].strip() or None
        if code is None and name is None:
            raise OutputFormatError(path, line, "both 'class_code' and 'class_name' are empty")
        start_s, end_s, score = _span(path, line, row)
        out.append(
            RawDetection(
                label=code or name or "",
                label_code=code,
                label_name=name,
                start_s=start_s,
                end_s=end_s,
                confidence=score,
                recording=_stem(row["filename"]),
            )
        )
    return out


def parse_raw(
    path: str | os.PathLike[str],
    fmt: str,
    class_map: Mapping[str, str] | None = None,
    class_names: Mapping[str, str] | None = None,
) -> list[RawDetection]:
    """Parse a raw output in format ``fmt`` (``scores2`` or ``labels1``)."""
    if fmt == SCORES2:
        return parse_scores_csv(path, class_map=class_map, class_names=class_names)
    if fmt == LABELS1:
        return parse_labels_csv(path)
    raise ValueError(f"unknown raw output format {fmt!r}; valid: {', '.join(RAW_FORMATS)}")


def load_class_map(classes_csv: str | os.PathLike[str]) -> dict[str, str]:
    """Read HawkEars' ``classes.csv`` (Name, Code, AltName, AltCode) into a label -> Code map.

    Keys: Name and Code first, then AltName and AltCode where not already taken, so a ``name``
    column written with any ``--label`` form maps to the class's Code.
    """
    path = os.fspath(classes_csv)
    result: dict[str, str] = {}
    alternates: list[tuple[str, str]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            fields = [f.strip() for f in reader.fieldnames or []]
            if "Name" not in fields or "Code" not in fields:
                raise OutputFormatError(
                    path,
                    1,
                    f"classes.csv header {fields!r} lacks 'Name' and 'Code'",
                    fix="point to HawkEars' data/classes.csv (columns Name, Code, AltName, AltCode)",
                )
            reader.fieldnames = fields
            for row in reader:
                code = (row.get("Code") or "").strip()
                if not code:
                    continue
                name = (row.get("Name") or "").strip()
                if name:
                    result[name] = code
                result.setdefault(code, code)
                for alt in ("AltName", "AltCode"):
                    value = (row.get(alt) or "").strip()
                    if value:
                        alternates.append((value, code))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise OutputFormatError(
            path,
            None,
            f"cannot read classes.csv ({exc})",
            fix="point to HawkEars' data/classes.csv (columns Name, Code, AltName, AltCode)",
        ) from exc
    for key, code in alternates:
        result.setdefault(key, code)
    return result


_TAXONOMY_COLUMNS = {
    "name": "name",
    "code": "code",
    "alt_name": "alt_name",
    "alt_code": "alt_code",
    "altname": "alt_name",
    "altcode": "alt_code",
}


def load_class_labels(data_dir: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, str]] | None:
    """(label -> code, code -> common name) from a HawkEars data folder.

    HawkEars writes the ``name`` column through ``taxonomy.csv`` (``model_code, name, code,
    alt_name, alt_code``: the label forms of ``--label names|codes|alt-names|alt-codes``), so that
    file decides; ``classes.csv`` (``Name, Code, AltName, AltCode``) fills in what it lacks.
    None when neither file is there.
    """
    class_map: dict[str, str] = {}
    names: dict[str, str] = {}
    found = False
    for filename in ("taxonomy.csv", "classes.csv"):
        path = os.path.join(os.fspath(data_dir), filename)
        if not os.path.exists(path):
            continue
        found = True
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle)
                for row in reader:
                    fields = {
                        _TAXONOMY_COLUMNS.get(k.strip().lower()): (v or "").strip() for k, v in row.items() if k is not None
                    }
                    code, name = fields.get("code"), fields.get("name")
                    if not code:
                        continue
                    if name:
                        names.setdefault(code, name)
                    for form in ("code", "name", "alt_code", "alt_name"):
                        if fields.get(form):
                            class_map.setdefault(fields[form], code)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise OutputFormatError(
                path,
                None,
                f"cannot read {filename} ({exc})",
                fix="point --hawkears-data-root at a data root laid out by `hawkears init`",
            ) from exc
    return (class_map, names) if found else None


# -- canonical records -------------------------------------------------------------------------


def canonical_records(
    raw: list[RawDetection],
    chunk: Chunk,
    *,
    run_id: str,
    hawkears_version: str | None,
    model_version: str | None,
) -> list[dict[str, Any]]:
    """One canonical dict per detection (keys in :data:`CANONICAL_KEYS` order, then extras).

    ``start_s``/``end_s`` stay chunk-relative; ``start_ms``/``end_ms`` are recording-relative
    (``chunk.start_ms`` or 0, plus the rounded chunk-relative milliseconds). Extra manifest
    columns (``chunk.extra``) follow; one whose name clashes with a key gets a ``meta_`` prefix.
    """
    chunk_start_ms = getattr(chunk, "start_ms", None)
    base_ms = chunk_start_ms or 0
    extras: list[tuple[str, Any]] = []
    taken = set(_CANONICAL_SET)
    for name, value in getattr(chunk, "extra", ()) or ():
        key = str(name)
        while key in taken:
            key = f"meta_{key}"
        taken.add(key)
        extras.append((key, value))
    out: list[dict[str, Any]] = []
    for det in raw:
        record: dict[str, Any] = {
            "recording_id": chunk.recording_id,
            "chunk_id": chunk.chunk_id,
            "label": det.label,
            "label_code": det.label_code,
            "label_name": det.label_name,
            "confidence": det.confidence,
            "start_s": det.start_s,
            "end_s": det.end_s,
            "start_ms": base_ms + round(det.start_s * 1000),
            "end_ms": base_ms + round(det.end_s * 1000),
            "chunk_start_ms": chunk_start_ms,
            "chunk_end_ms": getattr(chunk, "end_ms", None),
            "source_path": getattr(chunk, "source_path", None),
            "chunk_sha256": getattr(chunk, "sha256", None),
            "hawkears_version": hawkears_version,
            "model_version": model_version,
            "run_id": run_id,
        }
        record.update(extras)
        out.append(record)
    return out
