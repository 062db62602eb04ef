"""``badc-mpi calibrate BUNDLE --verdicts FILE...``: plan (read, check, fit: nothing written), then
write (docs/results.md, "Calibration").

:func:`plan_calibration` reads the bundle's stored verdicts and the new files, checks every row
against the bundle's detections (any problem: :class:`VerdictsError`, nothing written) and fits
every species. :func:`write_calibration` then writes, each file atomically: the new verdict
files' copies into ``<bundle>/verdicts/``, ``thresholds.csv``, ``calibration.json``, and the
calibration tables and views into ``bundle.duckdb`` in one transaction. The bundle's command
re-renders ``report.html`` afterwards. A rebuilt bundle installs the kept calibration again
(:func:`reinstall`): the verdicts kept and ``thresholds.csv`` as they are, nothing refitted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from badc_mpi.errors import UsageError
from badc_mpi.results.calibrate import tables
from badc_mpi.results.calibrate.fit import FitOptions, SpeciesFit, fit_species
from badc_mpi.results.calibrate.verdicts import (
    CORRECT,
    MAX_LINES,
    UNSURE,
    VERDICTS_DIR,
    Detection,
    Verdict,
    VerdictFile,
    VerdictsError,
    check_verdicts,
    disagreement_fix,
    read_verdict_files,
    stored_paths,
)
from badc_mpi.results.export.thresholds import COLUMNS, thresholds_text
from badc_mpi.storage.atomic import atomic_write_bytes, atomic_write_text

SCHEMA = "badc-mpi.calibration/1"
THRESHOLDS_CSV = "thresholds.csv"
CALIBRATION_JSON = "calibration.json"


@dataclass
class Calibration:
    """What :func:`plan_calibration` found: nothing written yet."""

    folder: str
    fits: list[SpeciesFit]
    verdicts: list[Verdict]
    known: dict[str, Detection]
    new_files: list[VerdictFile]  #: to copy into <bundle>/verdicts/
    names: dict[str, str]  #: every file read -> its stored name
    blank: int  #: rows with an empty verdict (not reviewed), skipped
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def with_threshold(self) -> int:
        return sum(f.threshold is not None for f in self.fits)


def fit_all(verdicts: Sequence[Verdict], known: dict[str, Detection], options: FitOptions) -> list[SpeciesFit]:
    """Every species named by a verdict, by code (pure but for the fit's library)."""
    scores: dict[str, list[float]] = defaultdict(list)
    outcomes: dict[str, list[bool]] = defaultdict(list)
    unsure: dict[str, int] = defaultdict(int)
    for v in verdicts:
        det = known[v.detection_id]
        if v.verdict == UNSURE:
            unsure[det.species_code] += 1
            continue
        scores[det.species_code].append(det.score)
        outcomes[det.species_code].append(v.verdict == CORRECT)
    codes = sorted(set(scores) | set(unsure))
    return [fit_species(c, scores.get(c, []), outcomes.get(c, []), unsure.get(c, 0), options) for c in codes]


def plan_calibration(folder: str, con: Any, paths: Sequence[str], options: FitOptions, note: str = "") -> Calibration:
    """Read and check every verdict (stored and new) against the bundle on ``con``, then fit;
    raises :class:`VerdictsError` (one line per problem) before anything is written."""
    if not 0.5 <= options.target_precision < 1.0:
        raise UsageError(f"--target-precision {options.target_precision} is outside [0.5, 1)", fix="give e.g. 0.9")
    if options.min_verdicts < 2 or options.bootstrap < 0 or not 0 < options.interval < 1:
        raise UsageError(
            "--min-verdicts must be >= 2, --bootstrap >= 0, --interval in (0, 1)",
            fix="e.g. --min-verdicts 20 --bootstrap 1000 --interval 0.95",
        )
    problems: list[str] = []
    stored = read_verdict_files(stored_paths(folder), problems)
    given = read_verdict_files(paths, problems)
    kept = {hashlib.sha256(f.data).hexdigest() for f in stored}
    new = list({f.stored_name: f for f in given if hashlib.sha256(f.data).hexdigest() not in kept}.values())
    every = [v for f in stored + new for v in f.verdicts]
    if not every and not problems:
        problems.append(f"no verdicts: none given and none kept in {os.path.join(folder, VERDICTS_DIR)}/")
    known = tables.lookup(con, (v.detection_id for v in every))
    verdicts, found = check_verdicts(every, known)
    problems += found
    if problems:
        raise VerdictsError(problems[:MAX_LINES] + ([f"... and {len(problems) - MAX_LINES} more"] if len(problems) > MAX_LINES else []),
                            disagreement_fix(os.path.join(folder, VERDICTS_DIR)))  # fmt: skip
    names = {f.path: os.path.basename(f.path) for f in stored} | {f.path: f.stored_name for f in given}
    settings = {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **asdict(options),
        "predictor": "logit(score)",
        "note": note,
        "files": sorted({names[f.path] for f in stored + new}),
        "verdicts": len(verdicts),
    }
    fits = fit_all(verdicts, known, options)
    settings["species"] = len(fits)
    settings["species_with_threshold"] = sum(f.threshold is not None for f in fits)
    blank = sum(f.blank for f in stored + new)
    return Calibration(folder, fits, verdicts, known, new, names, blank, settings)


def write_calibration(cal: Calibration, con: Any) -> list[str]:
    """Write the calibration (see the module doc) with ``con`` open read-write on ``bundle.duckdb``;
    returns the paths written."""
    written = [atomic_write_bytes(os.path.join(cal.folder, VERDICTS_DIR, f.stored_name), f.data) for f in cal.new_files]
    rows = tables.threshold_rows(cal.fits)
    written.append(atomic_write_text(os.path.join(cal.folder, THRESHOLDS_CSV), thresholds_text(rows)))
    written.append(atomic_write_text(os.path.join(cal.folder, CALIBRATION_JSON), json.dumps(cal.settings, indent=1) + "\n"))
    _install(con, tables.verdict_table(cal.verdicts, cal.known, cal.names), rows, cal.settings)
    return written


def _install(con: Any, verdicts: pa.Table, rows: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    db_settings = {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in settings.items()}
    con.execute("BEGIN TRANSACTION")
    try:
        tables.install(con, verdicts, rows, db_settings)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("CHECKPOINT")


def _typed(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in COLUMNS:
        text = (row.get(c) or "").strip()
        kind = tables.THRESHOLD_TYPES.get(c, pa.float64())
        out[c] = text if kind == pa.string() else (None if not text else int(text) if kind == pa.int64() else float(text))
    return out


def reinstall(folder: str, con: Any) -> str | None:
    """A rebuilt ``bundle.duckdb`` gets the kept calibration again (``thresholds.csv`` and the kept
    verdicts, not refitted); returns a note when some kept verdicts name detections it no longer
    has (they are left out of its ``verdicts`` table), None otherwise (also without a calibration)."""
    path = os.path.join(folder, THRESHOLDS_CSV)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [_typed(r) for r in csv.DictReader(io.StringIO(fh.read()))]
    try:
        with open(os.path.join(folder, CALIBRATION_JSON), encoding="utf-8") as fh:
            settings = json.load(fh)
    except (OSError, ValueError):
        settings = {"schema": SCHEMA}
    problems: list[str] = []
    files = read_verdict_files(stored_paths(folder), problems)
    every = [v for f in files for v in f.verdicts]
    known = tables.lookup(con, (v.detection_id for v in every)) if every else {}
    verdicts, found = check_verdicts(every, known)
    names = {f.path: os.path.basename(f.path) for f in files}
    _install(con, tables.verdict_table(verdicts, known, names), rows, settings)
    if found or problems:
        return f"calibration: {len(found) + len(problems)} kept verdict(s) no longer match this bundle's detections (left out)"
    return None
