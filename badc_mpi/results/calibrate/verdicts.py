"""Listeners' verdicts: read, checked against the bundle, kept in it (docs/results.md, "Calibration").

A verdicts file is a CSV with the columns ``detection_id, species_code, verdict`` (others, such as
a filled-in ``review.csv``'s, are ignored); ``verdict`` is ``correct``, ``wrong`` or ``unsure``
(any case); an empty verdict is a detection not reviewed yet, skipped. Rows are numbered as a
spreadsheet does: the header is row 1.

Checked before anything is written (:func:`check_verdicts`, pure): a missing column, an unknown
verdict word, an empty ``detection_id``, a detection the bundle does not have, a species code
other than the detection's, and two verdicts on one detection that disagree (in one file or across
files, the bundle's stored ones included) are each one line naming the file and row.

Verdicts are data: every file used is copied unchanged into ``<bundle>/verdicts/`` as
``<stem>-<sha256 12 hex>.csv`` (the same file given twice is one copy), and every later
``calibrate`` reads all of them again with the new files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from badc_mpi.errors import BadcError

VERDICTS_DIR = "verdicts"
COLUMNS = ("detection_id", "species_code", "verdict")
CORRECT, WRONG, UNSURE = "correct", "wrong", "unsure"
WORDS = (CORRECT, WRONG, UNSURE)
MAX_LINES = 200  #: problem lines shown; the rest are counted


class VerdictsError(BadcError):
    """Verdicts that cannot be used: one line per problem (file and row) in ``problems``."""

    def __init__(self, problems: Sequence[str], fix: str) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the verdicts; nothing was written", fix=fix)


@dataclass(frozen=True, slots=True)
class Verdict:
    detection_id: str
    species_code: str
    verdict: str  #: correct | wrong | unsure
    file: str  #: as given (or the stored copy's path)
    row: int  #: spreadsheet row: the header is row 1


@dataclass(frozen=True, slots=True)
class Detection:
    """What the bundle says of a detection a verdict names."""

    species_code: str
    score: float


@dataclass
class VerdictFile:
    path: str
    data: bytes
    verdicts: list[Verdict]
    blank: int  #: rows with an empty verdict (not reviewed)

    @property
    def stored_name(self) -> str:
        stem = os.path.splitext(os.path.basename(self.path))[0]
        return f"{stem}-{hashlib.sha256(self.data).hexdigest()[:12]}.csv"


def parse_verdicts(path: str, data: bytes, problems: list[str]) -> VerdictFile:
    """One file's rows (pure); its problems are appended to ``problems``."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
        return VerdictFile(path, data, [], 0)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        problems.append(f"{path}, row 1: no {', '.join(missing)} column (the header needs {', '.join(COLUMNS)})")
        return VerdictFile(path, data, [], 0)
    at = {c: header.index(c) for c in COLUMNS}
    out, blank = [], 0
    for row_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {c: (row[i].strip() if i < len(row) else "") for c, i in at.items()}
        word = cells["verdict"].lower()
        if not word:
            blank += 1
            continue
        if word not in WORDS:
            problems.append(f"{path}, row {row_no}: verdict {cells['verdict']!r} is not one of {', '.join(WORDS)}")
            continue
        if not cells["detection_id"]:
            problems.append(f"{path}, row {row_no}: empty detection_id")
            continue
        out.append(Verdict(cells["detection_id"], cells["species_code"], word, path, row_no))
    return VerdictFile(path, data, out, blank)


def read_verdict_files(paths: Iterable[str], problems: list[str]) -> list[VerdictFile]:
    files = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            problems.append(f"{path}: cannot be read ({exc.strerror or exc})")
            continue
        files.append(parse_verdicts(path, data, problems))
    return files


def stored_paths(bundle: str) -> list[str]:
    """The verdict files kept in the bundle, by name."""
    folder = os.path.join(bundle, VERDICTS_DIR)
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".csv") and not n.startswith(".")]


def check_verdicts(verdicts: Iterable[Verdict], known: Mapping[str, Detection]) -> tuple[list[Verdict], list[str]]:
    """(the verdicts, one per detection; the problem lines) against the bundle's detections ``known``
    (pure). Agreeing duplicates count once; the first one is kept."""
    first: dict[str, Verdict] = {}
    problems = []
    for v in verdicts:
        det = known.get(v.detection_id)
        if det is None:
            problems.append(f"{v.file}, row {v.row}: detection_id {v.detection_id!r} is not in the bundle")
            continue
        if v.species_code and v.species_code != det.species_code:
            problems.append(
                f"{v.file}, row {v.row}: detection_id {v.detection_id!r} is a {det.species_code} detection in the bundle, "
                f"not {v.species_code}"
            )
            continue
        seen = first.setdefault(v.detection_id, v)
        if seen.verdict != v.verdict:
            problems.append(
                f"{v.file}, row {v.row}: detection_id {v.detection_id!r} is {v.verdict!r} here but {seen.verdict!r} in "
                f"{seen.file}, row {seen.row}"
            )
    return list(first.values()), problems


def disagreement_fix(stored_dir: str) -> str:
    return (
        "correct those rows (verdict: correct, wrong or unsure; ids and species codes as in the bundle's review.csv); "
        f"a verdict kept from an earlier calibration is in {stored_dir}/: remove that file to replace it"
    )
